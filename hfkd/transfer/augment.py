"""Task-data augmentation for distillation (TinyBERT, Jiao et al. 2020, section 3.1).

Distilling on the small labelled set of a task leaves the student few chances to see the teacher's
behaviour; TinyBERT adds N copies of each training example in which words are replaced by a
masked LM's guesses, and the teacher labels them through the KD term. For each word of the text:
if it is a single word-piece of the MLM's vocabulary, it is masked in the original sentence, the
MLM predicts it and its top-k candidates are kept; each copy then replaces every such word with
probability p by one candidate drawn at random.

Differences from TinyBERT, on purpose: words of several word-pieces are left as they are
(TinyBERT swaps them for GloVe neighbours; hfkd ships no word vectors), and so are words that are
not alphabetic (punctuation, numbers); only the first text column of a pair is augmented, as
TinyBERT's script does. Words are runs of letters and digits, punctuation apart (as BERT's basic
tokenizer splits them); a copy changes only the replaced words, and a capitalised word's
replacement is capitalised.

`augment_dataset` is a batched `datasets.map`, deterministic for a seed (each row draws from its
own generator, seeded by (seed, row index), whatever the batch size), cached by `datasets` under a
fingerprint of the input rows, the MLM's weights and tokenizer and the settings. Output rows are
each original (`hfkd_augmented` = 0) followed by its copies (`hfkd_augmented` = 1..N).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

import datasets
import numpy as np
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from hfkd.models import resolve_model_path

logger = logging.getLogger(__name__)

_WORD = re.compile(r"\w+|[^\w\s]")
AUGMENTED_COLUMN = "hfkd_augmented"
"""0 for an original row, k for its k-th augmented copy."""


@dataclass(frozen=True)
class AugmentationSettings:
    """What the augmented data depends on, besides the input rows and the MLM."""

    copies: int
    probability: float = 0.4
    top_k: int = 15
    seed: int = 42
    max_length: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.copies, int) or self.copies < 1:
            raise ValueError(f"augment_copies must be an integer >= 1, got {self.copies!r}.")
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(f"augment_prob must be in (0, 1], got {self.probability}.")
        if self.top_k < 1:
            raise ValueError(f"augment_top_k must be >= 1, got {self.top_k}.")


def load_masked_lm(path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A masked LM and its (fast) tokenizer; a checkpoint without a trained MLM head is refused."""

    resolved = resolve_model_path(path)
    model, info = AutoModelForMaskedLM.from_pretrained(resolved, output_loading_info=True)
    fresh_head = [name for name in info.get("missing_keys", ()) if "predictions" in name or "lm_head" in name
                  or "decoder" in name]
    if fresh_head:
        raise ValueError(
            f"{path} has no trained masked-LM head (missing {fresh_head[0]}): its guesses would be random; "
            "give augment_mlm a checkpoint trained for masked language modelling (e.g. bert-base-uncased)."
        )
    tokenizer = AutoTokenizer.from_pretrained(resolved)
    if not tokenizer.is_fast or tokenizer.mask_token_id is None:
        raise ValueError(f"{path}: augmentation needs a fast tokenizer with a mask token.")
    return model, tokenizer


def augment_dataset(
    dataset: datasets.Dataset,
    text_column: str,
    mlm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    settings: AugmentationSettings,
    batch_size: int = 64,
) -> datasets.Dataset:
    """Each row followed by `settings.copies` augmented copies of its `text_column` (other columns copied)."""
    if text_column not in dataset.column_names:
        raise ValueError(f"augmentation: column {text_column!r} is not in the data ({dataset.column_names}).")
    if AUGMENTED_COLUMN in dataset.column_names:
        raise ValueError(f"the dataset is already augmented (it has a {AUGMENTED_COLUMN} column).")
    augmenter = _Augmenter(mlm, tokenizer, settings, batch_size)
    fingerprint = augmentation_fingerprint(dataset._fingerprint, mlm, tokenizer, settings, text_column)
    return dataset.map(
        augmenter,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        fn_kwargs={"text_column": text_column},
        new_fingerprint=fingerprint,
        desc=f"Augmenting ({settings.copies} copies per example)",
    )


def augmentation_fingerprint(
    data_fingerprint: str,
    mlm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    settings: AugmentationSettings,
    text_column: str,
) -> str:
    """Hash of everything the augmented rows depend on: `datasets` reuses its cache file under it."""
    from hfkd.teacher.cache import state_dict_sha256, tokenizer_sha256

    parts = [data_fingerprint, state_dict_sha256(mlm), tokenizer_sha256(tokenizer), text_column,
             json.dumps(asdict(settings), sort_keys=True), "hfkd-augment-v1"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


class _Augmenter:
    """The `datasets.map` function (a picklable object, so `datasets` can hash it if asked)."""

    def __init__(self, mlm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: AugmentationSettings,
                 batch_size: int) -> None:
        self.mlm, self.tokenizer, self.settings, self.batch_size = mlm, tokenizer, settings, batch_size
        vocab = tokenizer.get_vocab()
        specials = set(tokenizer.all_special_ids)
        # Candidate replacements: whole alphabetic word-pieces, never special tokens or "##" suffixes.
        allowed = torch.zeros(len(tokenizer), dtype=torch.bool)
        for token, index in vocab.items():
            if index < len(allowed) and token.isalpha() and index not in specials:
                allowed[index] = True
        self.allowed = allowed
        self._single_piece: dict[str, bool] = {}

    def __call__(self, batch: dict[str, list], indices: list[int], text_column: str) -> dict[str, list]:
        settings = self.settings
        rows = len(indices)
        texts = [str(text) for text in batch[text_column]]
        spans = [[match.span() for match in _WORD.finditer(text)] for text in texts]
        words = [[text[start:end] for start, end in row] for text, row in zip(texts, spans)]
        generators = [np.random.default_rng([settings.seed, index]) for index in indices]
        # Decide first which words each copy replaces, then ask the MLM only about those.
        replace = [(rng.random((settings.copies, len(row))) < settings.probability) & self._eligible(row)
                   for rng, row in zip(generators, words)]
        wanted = [(r, i) for r in range(rows) for i in np.flatnonzero(replace[r].any(0))]
        candidates = self._candidates(words, wanted)
        out: dict[str, list] = {name: [] for name in [*batch, AUGMENTED_COLUMN]}
        for r in range(rows):
            for copy_index in range(settings.copies + 1):
                for name, values in batch.items():
                    out[name].append(values[r])
                out[AUGMENTED_COLUMN].append(copy_index)
                if copy_index == 0:
                    continue
                text = texts[r]
                for i in np.flatnonzero(replace[r][copy_index - 1])[::-1]:  # right to left: spans stay valid
                    options = candidates.get((r, int(i)))
                    if options:
                        word = options[int(generators[r].integers(len(options)))]
                        start, end = spans[r][i]
                        if words[r][i][:1].isupper():
                            word = word.capitalize()
                        text = text[:start] + word + text[end:]
                out[text_column][-1] = text
        return out

    def _eligible(self, words: list[str]) -> np.ndarray:
        """Words that are one alphabetic word-piece of the MLM's vocabulary (others stay as they are)."""
        eligible = np.zeros(len(words), dtype=bool)
        for i, word in enumerate(words):
            if word.isalpha():
                if word not in self._single_piece:
                    pieces = self.tokenizer.tokenize(word)
                    self._single_piece[word] = len(pieces) == 1 and pieces[0] != self.tokenizer.unk_token
                eligible[i] = self._single_piece[word]
        return eligible

    def _candidates(self, words: list[list[str]], wanted: list[tuple[int, int]]) -> dict[tuple[int, int], list[str]]:
        """Top-k MLM guesses for each (row, word) in `wanted`, the word masked in its original sentence."""
        if not wanted:
            return {}
        encoded = self.tokenizer(words, is_split_into_words=True, truncation=True,
                                 max_length=self.settings.max_length)
        masked, positions, keys = [], [], []
        for r, i in wanted:
            word_ids = encoded.word_ids(r)
            if i not in word_ids:  # cut off by truncation
                continue
            position = word_ids.index(i)
            ids = list(encoded["input_ids"][r])
            ids[position] = self.tokenizer.mask_token_id
            masked.append(ids)
            positions.append(position)
            keys.append((r, i))
        result: dict[tuple[int, int], list[str]] = {}
        device = next(self.mlm.parameters()).device
        was_training = self.mlm.training
        self.mlm.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(masked), self.batch_size):
                    chunk = self.tokenizer.pad({"input_ids": masked[start : start + self.batch_size]},
                                               return_tensors="pt")
                    where = torch.tensor(positions[start : start + self.batch_size], device=device)
                    at_mask = _logits_at(self.mlm, {k: v.to(device) for k, v in chunk.items()}, where)
                    at_mask = at_mask.float().cpu()[:, : len(self.allowed)]
                    at_mask[:, ~self.allowed[: at_mask.shape[1]]] = float("-inf")
                    top = at_mask.topk(self.settings.top_k, dim=-1)
                    for key, values, ids in zip(keys[start : start + self.batch_size], top.values, top.indices):
                        result[key] = self.tokenizer.convert_ids_to_tokens(ids[torch.isfinite(values)].tolist())
        finally:
            self.mlm.train(was_training)
        return result


def _logits_at(mlm: PreTrainedModel, inputs: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """MLM logits at one position per row. For BERT/RoBERTa-style heads (`cls`, `lm_head`) the
    vocabulary projection runs at those positions only, not over every token of the batch."""
    rows = torch.arange(len(positions), device=positions.device)
    head = getattr(mlm, "cls", None) or getattr(mlm, "lm_head", None)
    if head is not None and mlm.base_model is not mlm:
        hidden = mlm.base_model(**inputs).last_hidden_state
        return head(hidden[rows, positions])
    return mlm(**inputs).logits[rows, positions]


def augment_train_split(
    train: datasets.Dataset, text_column: str, mlm_path: str, settings: AugmentationSettings
) -> datasets.Dataset:
    """Load the MLM at `mlm_path` and augment `train` (the data recipes' entry point)."""
    mlm, tokenizer = load_masked_lm(mlm_path)
    if torch.cuda.is_available():
        mlm = mlm.to("cuda")
    augmented = augment_dataset(train, text_column, mlm, tokenizer, settings)
    logger.info("Augmented the train split: %d rows -> %d rows (MLM %s)", len(train), len(augmented),
                os.path.basename(os.path.normpath(mlm_path)))
    return augmented
