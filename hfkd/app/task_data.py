"""Data for distillation runs: load raw splits (Hub or local files) and tokenize them per task.

Every preprocessing step is a `datasets.map(batched=True)`, so results are cached by `datasets`
and a second run with the same data, tokenizer and settings skips the work. Problems with the
data or the settings raise `DataError`, with a one-line message that names the fix.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Optional

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
    default_data_collator,
)

from hfkd.config import option
from hfkd.models import HfkdError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label id that losses skip: special tokens and non-first sub-words."""

SPLITS = ("train", "validation", "test")

# Extension -> `datasets` builder. TSV is the GLUE dialect (see _builder_kwargs); .raw is WikiText's raw text;
# .label is TREC's question-classification format, read by _load_trec.
_BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".raw": "text",
    ".label": "trec",
}
# File stems that a folder given as dataset_name may use for each split.
_SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "dev", "valid", "val"), "test": ("test",)}
# Auto-detected text columns: sentence pairs first (GLUE, MRPC's TSV, QQP, NLI, QNLI), then single texts.
_TEXT_PAIRS = (
    ("sentence1", "sentence2"),
    ("#1 String", "#2 String"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
)
_TEXT_COLUMNS = ("sentence", "text", "content", "review", "question", "document")
_TOKEN_COLUMNS = ("tokens", "words")
_TAG_COLUMNS = ("ner_tags", "tags", "pos_tags", "chunk_tags")
_LM_TASKS = ("masked_lm", "causal_lm")


class DataError(HfkdError, ValueError):
    """Bad data or data settings: the message names the problem and the fix on one line."""


@dataclass
class DataArguments:
    """Where the data comes from and how to preprocess it (parse with `transformers.HfArgumentParser`)."""

    dataset_name: Optional[str] = option(
        None,
        "Hub dataset name (e.g. 'glue'), or a local folder holding train/dev/validation/test "
        "files (.csv, .tsv, .json, .jsonl, .parquet, .txt, .label).",
    )
    dataset_config_name: Optional[str] = option(None, "Hub dataset configuration, e.g. 'sst2' for 'glue'.")
    train_file: Optional[str] = option(
        None,
        "Training file: .csv, .tsv (GLUE dialect), .json/.jsonl, .parquet, .txt or .label (TREC: columns text, "
        "coarse_label, fine_label).",
    )
    validation_file: Optional[str] = option(None, "Evaluation file, same formats.")
    test_file: Optional[str] = option(None, "Test file, same formats; labels optional.")
    text_column: Optional[str] = option(
        None,
        "Text column (tokens column for token classification). Default: auto-detect "
        "sentence1/sentence2, premise/hypothesis, ..., then sentence, text, ...",
    )
    text_pair_column: Optional[str] = option(None, "Second text of a sentence pair; auto-detected with text_column.")
    label_column: str = option(
        "label",
        "Label column (tag column for token classification, where ner_tags/tags are also tried).",
    )
    max_seq_length: int = option(128, "Truncate tokenized inputs to this many tokens (padding is per batch).")
    max_train_samples: Optional[int] = option(
        None,
        "Use N training examples: the first N after a shuffle seeded by subset_seed.",
    )
    max_eval_samples: Optional[int] = option(
        None,
        "Use the first N validation examples (no shuffle: comparable across runs).",
    )
    subset_seed: int = option(42, "Seed of the shuffle behind max_train_samples.")
    block_size: Optional[int] = option(
        None,
        "Language modelling: tokens per training block. Default: max_seq_length.",
    )
    mlm_probability: float = option(0.15, "Masked language modelling: fraction of tokens to mask.")
    prompt_column: Optional[str] = option(
        None,
        "Causal LM on-policy/seq_kd distillation: the column holding prompts ('text' for a .txt file, one "
        "prompt per line). A 'prompt' or chat 'messages' column is found without it (hfkd.app.prompt_data).",
    )
    completion_column: Optional[str] = option(None, "Reference completions of the prompts (default: 'completion').")
    completion_length: Optional[int] = option(
        None,
        "Prompts from plain text without completions (a .txt file): each text's first max_seq_length tokens "
        "are its prompt and the next completion_length tokens its reference completion (what off-policy "
        "steps, reference_ce and evaluation train or measure on); texts too short to have one are dropped.",
    )
    preprocessing_num_workers: Optional[int] = option(None, "Processes for tokenization (datasets.map num_proc).")
    validation_split_name: str = option(
        "validation",
        "Split to evaluate on, e.g. 'test' when a dataset has no validation split.",
    )
    augment_copies: int = option(
        0,
        "TinyBERT data augmentation (sequence classification): add N copies of every training "
        "example with words replaced by a masked LM's guesses (needs augment_mlm); 0 = off.",
    )
    augment_mlm: Optional[str] = option(
        None,
        "Masked LM (path or name) whose top-k guesses replace words in augmented copies.",
    )
    augment_prob: float = option(0.4, "Probability that an augmented copy replaces a given word (TinyBERT: 0.4).")
    augment_top_k: int = option(15, "Replacements are drawn from the MLM's top-k guesses (TinyBERT: 15).")
    augment_seed: int = option(42, "Seed of the augmentation draws.")
    augment_unlabeled: bool = option(
        False,
        "The augmented copies carry no label (-100, as transfer-set rows): the teacher alone labels them "
        "(KD) and CE learns from the original rows only, as in TinyBERT. Default: a copy keeps its "
        "original's label (a word swap can change a sentence's meaning).",
    )
    unlabeled_file: Optional[str] = option(
        None,
        "Transfer set (sequence classification): a file of in-domain texts without labels, same text "
        "columns and formats as train_file; CE skips its rows, KD covers them (docs/transfer-sets.md).",
    )
    unlabeled_dataset_name: Optional[str] = option(
        None, "Transfer set from the train split of a Hub dataset or local folder (as unlabeled_file)."
    )
    unlabeled_rows_in_train: bool = option(
        False, "Train rows with an empty label are unlabeled transfer rows (otherwise refused)."
    )
    max_unlabeled_samples: Optional[int] = option(None, "Use N unlabeled rows (a sample seeded by subset_seed).")
    unlabeled_ratio: Optional[float] = option(
        None,
        "Unlabeled rows per labelled row (e.g. 2.0), sampled from the transfer set; rows are shuffled "
        "together, so each batch holds this ratio on average. Default: every unlabeled row.",
    )
    unlabeled_min_confidence: Optional[float] = option(
        None,
        "Drop unlabeled rows whose teacher max-probability is below this (needs the teacher cache).",
    )
    unlabeled_crops: float = option(
        0.0,
        "Crops of the labelled texts as a transfer set (sequence classification): this many per labelled row, "
        "each a contiguous run of at least half of a text's words (3 or more, fewer than all), drawn with "
        "augment_seed; unlabeled, so the teacher alone labels them (docs/transfer-sets.md). 0 = off.",
    )

    def __post_init__(self) -> None:
        files = (self.train_file, self.validation_file, self.test_file)
        if self.dataset_name is None and self.train_file is None and self.validation_file is None:
            raise DataError("no data given: set dataset_name (Hub name or local folder) or train_file/validation_file")
        if self.dataset_name is not None and any(f is not None for f in files):
            raise DataError(
                f"dataset_name={self.dataset_name!r} and data files are both set: use one source "
                "(put local files in one folder to pass it as dataset_name)"
            )
        for name in (
            "max_seq_length",
            "max_train_samples",
            "max_eval_samples",
            "max_unlabeled_samples",
            "block_size",
            "completion_length",
            "preprocessing_num_workers",
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise DataError(f"{name}={value} must be a positive integer")
        if not 0.0 < self.mlm_probability < 1.0:
            raise DataError(f"mlm_probability={self.mlm_probability} must be between 0 and 1")
        if self.augment_copies < 0:
            raise DataError(f"augment_copies={self.augment_copies} must be >= 0 (0 turns augmentation off)")
        if self.augment_copies and not self.augment_mlm:
            raise DataError("augment_copies > 0 needs augment_mlm: the path of a masked LM with a trained head")
        if self.augment_copies:
            self.augmentation_settings()  # validates prob and top_k
        elif self.augment_unlabeled:
            raise DataError("augment_unlabeled is set but augment_copies is 0: give augment_copies (and augment_mlm), "
                            "or drop augment_unlabeled")
        from hfkd.transfer.unlabeled import check_min_confidence, check_ratio

        check_ratio(self.unlabeled_ratio)
        check_min_confidence(self.unlabeled_min_confidence)
        if not (math.isfinite(self.unlabeled_crops) and self.unlabeled_crops >= 0):
            raise DataError(f"unlabeled_crops={self.unlabeled_crops} must be a finite number >= 0 (crops per "
                            "labelled row; 0 turns them off)")

    def augmentation_settings(self) -> Any:
        """The `hfkd.transfer.augment.AugmentationSettings` of these arguments, or None when augmentation is off."""
        if not self.augment_copies:
            return None
        from hfkd.transfer.augment import AugmentationSettings

        try:
            return AugmentationSettings(copies=self.augment_copies, probability=self.augment_prob,
                                        top_k=self.augment_top_k, seed=self.augment_seed,
                                        max_length=self.max_seq_length)
        except ValueError as error:
            raise DataError(str(error)) from None


def load_raw_datasets(args: DataArguments) -> datasets.DatasetDict:
    """Load the splits "train", "validation" and "test" (those that exist) from the Hub or local files.

    Local TSV files are read in the GLUE dialect: tab-separated with quoting off (MRPC and RTE
    have literal `"` that quote handling would merge across rows), and a UTF-8 BOM is stripped
    from column names. CSV/TSV cells stay text: "NA" or "null" are not turned into missing values.
    Files must be UTF-8; classification refuses empty text or label cells and numeric text columns.
    `validation_split_name` renames that split to "validation"; other split names are dropped.
    """
    if args.dataset_name is not None and Path(args.dataset_name).expanduser().is_dir():
        files = _split_files_in_folder(Path(args.dataset_name).expanduser())
        raw = datasets.DatasetDict({split: _load_file(path, split) for split, path in files.items()})
    elif args.dataset_name is not None:
        raw = _load_hub(args.dataset_name, args.dataset_config_name)
    else:
        given = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
        raw = datasets.DatasetDict({split: _load_file(path, split) for split, path in given.items() if path})

    if args.validation_split_name != "validation":
        if args.validation_split_name not in raw:
            raise DataError(
                f"validation_split_name={args.validation_split_name!r} is not a split of the data "
                f"(splits: {', '.join(raw)}): pick one of those"
            )
        raw["validation"] = raw.pop(args.validation_split_name)
    dropped = [split for split in raw if split not in SPLITS]
    if dropped:
        logger.info("Ignoring splits %s (hfkd uses %s)", dropped, SPLITS)
    raw = datasets.DatasetDict({split: raw[split] for split in SPLITS if split in raw})
    if not raw:
        raise DataError(
            f"no train/validation/test split in the data (splits: {', '.join(dropped)}): set validation_split_name"
        )
    for split, dataset in raw.items():
        if dataset.num_rows == 0:
            raise DataError(f"the {split} split is empty (0 rows): point it at a file with examples")
    return raw


def prepare_classification_datasets(
    raw: datasets.DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    args: DataArguments,
    label2id: Mapping[str, int] | None = None,
    num_classes: int | None = None,
) -> tuple[datasets.DatasetDict, list[str]]:
    """Tokenize text (pairs) for sequence classification; return the datasets and the label names by id.

    Label ids: with `label2id` (the teacher's `config.label2id`), ids follow it and every data
    label must be in it. Otherwise string labels get ids in sorted order (numeric order for
    labels like "2", "10") from the train split; integer labels keep their values (names from a
    `ClassLabel` feature, else "0".."max"). Float labels mean regression: the label list is empty
    (num_labels=1), unless they are all whole numbers (0.0, 1.0) and the model is a classifier
    (`num_classes` > 1, or a label2id with several classes): then they are class ids. A test split without labels (or all -1, as GLUE's on the Hub) gets no "labels".
    Tokenization truncates to max_seq_length without padding: pad per batch with
    `DataCollatorWithPadding` (see `build_data_collator`).
    """
    from hfkd.app.transfer_data import add_transfer_set, load_unlabeled, split_off_unlabeled_rows
    from hfkd.objective.items import UNLABELED
    from hfkd.transfer.augment import AUGMENTED_COLUMN

    raw, unlabeled_train_rows = split_off_unlabeled_rows(raw, args)
    columns = _reference_split(raw).column_names
    text_column, pair_column = _text_columns(columns, args)
    for split, dataset in raw.items():
        for column, option in ((text_column, "text_column"), (pair_column, "text_pair_column")):
            if column is not None:
                _require_column(dataset, split, column, option)
                _require_text_cells(dataset, split, column)
    labeled = [split for split in raw if split != "test" or _has_labels(raw[split], args.label_column)]
    for split in labeled:
        _require_column(raw[split], split, args.label_column, "label_column")
        _require_filled_labels(raw[split], split, args.label_column)
    label_list, encode = _label_encoding({split: raw[split] for split in labeled}, args.label_column, label2id,
                                         num_classes)
    unlabeled = load_unlabeled(args, unlabeled_train_rows, (text_column, pair_column), label_list)

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        pairs = batch[pair_column] if pair_column is not None else None
        encoded = tokenizer(batch[text_column], pairs, truncation=True, max_length=args.max_seq_length)
        if args.label_column in batch:
            encoded["labels"] = [encode(value) for value in batch[args.label_column]]
            if args.augment_unlabeled and AUGMENTED_COLUMN in batch:
                encoded["labels"] = [UNLABELED if copy else label
                                     for label, copy in zip(encoded["labels"], batch[AUGMENTED_COLUMN])]
        return encoded

    processed = datasets.DatasetDict()
    for split, dataset in _subsample(raw, args).items():
        if split not in labeled and args.label_column in dataset.column_names:
            dataset = dataset.remove_columns(args.label_column)
        crops = None
        if split == "train" and args.unlabeled_crops:  # of the labelled rows as given, before augmentation
            from hfkd.transfer.crops import crop_dataset

            crops = crop_dataset(dataset, text_column, pair_column, args.unlabeled_crops, args.augment_seed)
        if split == "train" and args.augment_copies:
            from hfkd.transfer.augment import augment_train_split

            dataset = augment_train_split(dataset, text_column, args.augment_mlm, args.augmentation_settings())
        processed[split] = dataset.map(
            tokenize,
            batched=True,
            remove_columns=dataset.column_names,
            num_proc=args.preprocessing_num_workers,
            desc=f"Tokenizing {split}",
        )
        if split == "train":
            transfer = [part for part in (unlabeled, crops) if part is not None]
            processed[split] = add_transfer_set(
                processed[split], datasets.concatenate_datasets(transfer) if transfer else None, tokenize, tokenizer,
                args)
    return processed, label_list


def texts_of(dataset: datasets.Dataset, split: str, args: DataArguments) -> list[str]:
    """The texts of a split, the text column's then (for sentence pairs) the pair column's, blank cells left out:
    what a tokenizer sees of this data (`hfkd trim-vocab` keeps the tokens they use)."""
    text_column, pair_column = _text_columns(dataset.column_names, args)
    texts = []
    for column, option in ((text_column, "text_column"), (pair_column, "text_pair_column")):
        if column is not None:
            _require_column(dataset, split, column, option)
            values = [value for value in dataset[column] if value is not None]
            if any(not isinstance(value, str) for value in values):
                raise DataError(f"column {column!r} of the {split} split holds values that are not text: set {option}")
            texts.extend(text for text in values if text.strip())
    return texts


def check_label_order(data_labels: Sequence[str], model_id2label: Mapping[int, str]) -> None:
    """Refuse to train when a model's named labels are in another order than the data's.

    A model with default names (LABEL_0, LABEL_1, ...) carries no order to compare, so it passes.
    Mismatches raise instead of remapping: a silently permuted label space ruins distillation.
    """
    model_labels = [model_id2label[key] for key in sorted(model_id2label, key=int)]
    if model_labels == [f"LABEL_{i}" for i in range(len(model_labels))]:
        return
    if list(data_labels) != model_labels:
        raise DataError(
            f"label order differs: data {list(data_labels)} vs model id2label {model_labels}: pass "
            "label2id=model.config.label2id to prepare_classification_datasets, or relabel the data"
        )


def prepare_token_classification_datasets(
    raw: datasets.DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    args: DataArguments,
    label_list: Sequence[str],
) -> datasets.DatasetDict:
    """Tokenize pre-split words and align tags: the first sub-word of a word gets its tag, the rest -100.

    Words come from text_column (default: "tokens" or "words"), tags from label_column if present,
    else "ner_tags"/"tags"/...; tags may be strings of `label_list` or ids into it. Needs a fast
    tokenizer (for `word_ids`). Pad with `DataCollatorForTokenClassification`.
    """
    _refuse_sequence_classification_options(args, "token classification")
    if not tokenizer.is_fast:
        raise DataError(
            f"token classification needs a fast tokenizer (word_ids), got {type(tokenizer).__name__}: "
            "load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    columns = _reference_split(raw).column_names
    tokens_column = args.text_column or _first_present(_TOKEN_COLUMNS, columns, "text_column")
    tags_column = (
        args.label_column if args.label_column in columns else _first_present(_TAG_COLUMNS, columns, "label_column")
    )
    label2id = {label: i for i, label in enumerate(label_list)}
    for split, dataset in raw.items():
        _require_column(dataset, split, tokens_column, "text_column")
        _require_column(dataset, split, tags_column, "label_column")
        _check_tags(dataset, split, tags_column, label2id)

    def tokenize_and_align(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(
            batch[tokens_column], is_split_into_words=True, truncation=True, max_length=args.max_seq_length
        )
        all_labels = []
        for row, (words, tags) in enumerate(zip(batch[tokens_column], batch[tags_column])):
            if len(words) != len(tags):
                raise DataError(f"an example has {len(words)} words but {len(tags)} tags: fix the data ({words[:5]})")
            labels, previous = [], None
            for word_id in encoded.word_ids(row):
                first_sub_word = word_id is not None and word_id != previous
                labels.append(_tag_id(tags[word_id], label2id) if first_sub_word else IGNORE_INDEX)
                previous = word_id
            all_labels.append(labels)
        encoded["labels"] = all_labels
        return encoded

    return datasets.DatasetDict(
        {
            split: dataset.map(
                tokenize_and_align,
                batched=True,
                remove_columns=dataset.column_names,
                num_proc=args.preprocessing_num_workers,
                desc=f"Tokenizing {split}",
            )
            for split, dataset in _subsample(raw, args).items()
        }
    )


def prepare_lm_datasets(
    raw: datasets.DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    args: DataArguments,
    task: str = "masked_lm",
) -> datasets.DatasetDict:
    """Tokenize a text column, concatenate it and cut it into block_size chunks (HF run_clm/run_mlm style).

    Blank lines are dropped; the tail of each 1,000-line batch that does not fill a block is
    dropped too. "causal_lm" adds labels = input_ids (the model shifts them); "masked_lm" leaves
    masking to `DataCollatorForLanguageModeling(mlm=True)` and keeps a special_tokens_mask so that
    [CLS]/[SEP] are never masked. max_*_samples count blocks.
    """
    if task not in _LM_TASKS:
        raise ValueError(f"task={task!r}: use one of {', '.join(_LM_TASKS)}")
    _refuse_sequence_classification_options(args, task)
    block_size = args.block_size or args.max_seq_length
    if block_size > tokenizer.model_max_length:
        raise DataError(
            f"block_size={block_size} exceeds the tokenizer's model_max_length={tokenizer.model_max_length}: "
            "set block_size (or max_seq_length) lower"
        )
    text_column = args.text_column or "text"
    for split, dataset in raw.items():
        _require_column(dataset, split, text_column, "text_column")

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        texts = [text for text in batch[text_column] if text and not text.isspace()]
        # verbose=False: lines longer than model_max_length are fine here, they are cut into blocks.
        return tokenizer(texts, return_special_tokens_mask=task == "masked_lm", verbose=False)

    def group(batch: dict[str, list]) -> dict[str, list]:
        concatenated = {key: list(chain.from_iterable(values)) for key, values in batch.items()}
        total = len(concatenated["input_ids"]) // block_size * block_size
        blocks = {
            key: [values[start : start + block_size] for start in range(0, total, block_size)]
            for key, values in concatenated.items()
        }
        if task == "causal_lm":
            blocks["labels"] = [list(ids) for ids in blocks["input_ids"]]
        return blocks

    grouped = datasets.DatasetDict()
    for split, dataset in raw.items():
        tokenized = dataset.map(
            tokenize,
            batched=True,
            remove_columns=dataset.column_names,
            num_proc=args.preprocessing_num_workers,
            desc=f"Tokenizing {split}",
        )
        grouped[split] = tokenized.map(
            group,
            batched=True,
            num_proc=args.preprocessing_num_workers,
            desc=f"Grouping {split} into blocks of {block_size}",
        )
        if grouped[split].num_rows == 0:
            raise DataError(
                f"the {split} split has fewer than block_size={block_size} tokens per 1,000 lines: "
                "lower block_size or add text"
            )
    return _subsample(grouped, args)


def build_data_collator(
    tokenizer: PreTrainedTokenizerBase, args: DataArguments, task: str
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The batch collator that matches each prepare_* function (dynamic padding, MLM masking)."""
    if task in ("sequence_classification", "sequence_regression"):
        return DataCollatorWithPadding(tokenizer)
    if task == "token_classification":
        return DataCollatorForTokenClassification(tokenizer)
    if task == "masked_lm":
        return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=args.mlm_probability)
    if task == "causal_lm":
        return default_data_collator  # blocks have equal length and carry their labels
    raise ValueError(f"unknown task {task!r}")


def _refuse_sequence_classification_options(args: DataArguments, task: str) -> None:
    if args.augment_copies:
        raise DataError(
            f"augment_copies is for sequence classification (word replacement would break {task} labels): unset it"
        )
    if args.unlabeled_file or args.unlabeled_dataset_name or args.unlabeled_rows_in_train or args.unlabeled_crops:
        raise DataError(
            f"the recipes read transfer sets for sequence classification; for {task}, mark unlabeled rows with "
            "labels -100 yourself (docs/transfer-sets.md) and unset unlabeled_file/unlabeled_dataset_name/"
            "unlabeled_crops"
        )


def _load_hub(name: str, config: str | None) -> datasets.DatasetDict:
    """The Hub code path; its failures (offline, unknown name) become one-line DataErrors."""
    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as err:  # datasets raises many types: ConnectionError, DatasetNotFoundError, ...
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise DataError(
            f"could not load dataset {name!r} (config {config!r}): {type(err).__name__}: {first_line}: "
            "check the name, or pass local files (train_file/validation_file or a folder as dataset_name)"
        ) from err
    return loaded


def _split_files_in_folder(folder: Path) -> dict[str, Path]:
    """Map split -> file for train.*, dev.*/validation.*/valid.*/val.* and test.* in a folder."""
    found: dict[str, list[Path]] = {split: [] for split in SPLITS}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in _BUILDERS:
            for split, stems in _SPLIT_STEMS.items():
                if path.stem.lower() in stems:
                    found[split].append(path)
    for split, paths in found.items():
        if len(paths) > 1:
            raise DataError(f"several {split} files in {folder}: {', '.join(p.name for p in paths)}: keep one")
    files = {split: paths[0] for split, paths in found.items() if paths}
    if not files:
        raise DataError(
            f"no data files in folder {folder}: name them train/dev/validation/test with an extension "
            f"among {', '.join(sorted(_BUILDERS))}"
        )
    return files


def _load_file(path: str | Path, split: str) -> datasets.Dataset:
    """One local file as one split, with the builder its extension calls for."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise DataError(f"{split} file {file} is a folder: pass a folder as dataset_name instead")
    if not file.is_file():
        raise DataError(f"{split} file not found: {file}: check the path")
    builder = _BUILDERS.get(file.suffix.lower())
    if builder is None:
        raise DataError(
            f"unsupported file extension {file.suffix or '(none)'!r} for {file}: "
            f"use one of {', '.join(sorted(_BUILDERS))}"
        )
    if not _has_rows(file, builder):
        raise DataError(f"the {split} file {file} has no rows: point it at a file with examples")
    if builder == "trec":
        return _load_trec(file, split)
    dataset = datasets.load_dataset(
        builder, data_files={split: str(file)}, split=split, **_builder_kwargs(file.suffix.lower())
    )
    bom_named = {name: name.lstrip("\ufeff") for name in dataset.column_names if name.startswith("\ufeff")}
    return dataset.rename_columns(bom_named) if bom_named else dataset


def _load_trec(file: Path, split: str) -> datasets.Dataset:
    """TREC's `COARSE:fine question` lines (train_5500.label, TREC_10.label) with the columns of the Hub's
    `CogComp/trec`: `text`, `coarse_label` (ABBR, DESC, ...) and `fine_label` (written whole, `DESC:manner`,
    since fine names such as `other` recur under several coarse classes). Read by the `text` builder and
    split by a `map`, so the rows live in `datasets`' cache and later steps (augmentation) are cached too."""
    lines = datasets.load_dataset("text", data_files={split: str(file)}, split=split)
    return lines.map(_split_trec_lines, batched=True, with_indices=True, remove_columns=lines.column_names,
                     fn_kwargs={"file": str(file)}, desc=f"Reading TREC lines of {file.name}")


def _split_trec_lines(batch: dict[str, list], indices: list[int], file: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {"text": [], "coarse_label": [], "fine_label": []}
    for index, line in zip(indices, (line.strip() for line in batch["text"])):
        if not line:
            continue
        label, _, text = line.partition(" ")
        coarse, colon, fine = label.partition(":")
        if not (colon and coarse.isupper() and fine and text.strip()):
            raise DataError(f"{file} line {index + 1} is not TREC's 'COARSE:fine question' ({line[:60]!r}): "
                            "fix the line, or give the data another extension (.tsv, .jsonl, ...)")
        rows["text"].append(text.strip())
        rows["coarse_label"].append(coarse)
        rows["fine_label"].append(label)
    return rows


def _has_rows(file: Path, builder: str) -> bool:
    """Checked before loading: `datasets` fails on empty files with errors that do not say so."""
    if builder == "parquet":
        return pq.ParquetFile(file).metadata.num_rows > 0
    _require_utf8(file)
    needed = 2 if builder == "csv" else 1  # csv/tsv: a header line, then at least one row
    with file.open(encoding="utf-8-sig") as handle:
        non_blank = (line for line in handle if line.strip())
        return sum(1 for _ in zip(range(needed), non_blank)) == needed


def _require_utf8(file: Path) -> None:
    """Text files are read as UTF-8; `datasets` reports another encoding with a traceback, or not at all."""
    with file.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{file} is not UTF-8 (line {number}, byte {error.start + 1}: {line[error.start:error.start + 1]!r}):"
                    " re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                ) from None


def _builder_kwargs(suffix: str) -> dict[str, Any]:
    """Reader options per extension (the csv builder passes pandas.read_csv options through)."""
    if suffix == ".tsv":
        return {"sep": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False, "encoding": "utf-8-sig"}
    if suffix == ".csv":
        return {"keep_default_na": False, "encoding": "utf-8-sig"}
    if _BUILDERS[suffix] == "text":
        return {"keep_linebreaks": True}  # causal LMs see line ends, as in HF run_clm
    return {}


def _reference_split(raw: datasets.DatasetDict) -> datasets.Dataset:
    """The split that defines columns and labels: train, else the first one present."""
    if not raw:
        raise DataError("the DatasetDict has no splits: load data with load_raw_datasets first")
    return raw["train"] if "train" in raw else next(iter(raw.values()))


def _require_column(dataset: datasets.Dataset, split: str, column: str, option: str) -> None:
    if column not in dataset.column_names:
        raise DataError(
            f"column {column!r} is not in the {split} split (columns: {', '.join(dataset.column_names)}): set {option}"
        )


def _first_present(candidates: Sequence[str], columns: Sequence[str], option: str) -> str:
    for name in candidates:
        if name in columns:
            return name
    raise DataError(f"none of the columns {', '.join(candidates)} found (columns: {', '.join(columns)}): set {option}")


def _text_columns(columns: Sequence[str], args: DataArguments) -> tuple[str, str | None]:
    """Explicit text_column/text_pair_column, else the first known pair, else the first known single column."""
    if args.text_column is not None:
        return args.text_column, args.text_pair_column
    if args.text_pair_column is None:
        for first, second in _TEXT_PAIRS:
            if first in columns and second in columns:
                return first, second
    return _first_present(_TEXT_COLUMNS, columns, "text_column"), args.text_pair_column


def _has_labels(dataset: datasets.Dataset, column: str) -> bool:
    """False for unlabeled test sets: no label column, or only missing/-1 values (GLUE on the Hub)."""
    if column not in dataset.column_names:
        return False
    return any(value is not None and value != -1 for value in dataset.unique(column))


def _label_encoding(
    labeled: Mapping[str, datasets.Dataset], column: str, label2id: Mapping[str, int] | None,
    num_classes: int | None = None,
) -> tuple[list[str], Callable[[Any], int | float]]:
    """Label names by id, and the function that turns a raw label value into its id (or float score)."""
    values = {split: dataset.unique(column) for split, dataset in labeled.items()}
    every = set(chain.from_iterable(values.values()))
    model_labels = [label for label, _ in sorted(label2id.items(), key=lambda item: item[1])] if label2id else None
    kinds = {_label_kind(value) for value in every}
    if len(kinds) > 1:
        raise DataError(
            f"column {column!r} mixes label types ({', '.join(sorted(kinds))}): make them all ints or all strings"
        )
    kind = kinds.pop() if kinds else "int"
    classifier = max(num_classes or 0, len(model_labels or ())) > 1
    if kind == "float" and classifier and all(float(value).is_integer() for value in every):
        # 0.0/1.0 written by pandas or a float column: class ids for a classifier, not regression targets.
        return _int_label_encoding(labeled, column, {int(value) for value in every}, model_labels)

    if kind == "float":
        if model_labels is not None and len(model_labels) > 1:
            raise DataError(
                f"float labels (regression) but label2id has {len(model_labels)} classes: "
                "use an int or string label column"
            )
        return [], float

    if kind == "int":
        return _int_label_encoding(labeled, column, every, model_labels)

    if model_labels is not None:
        unknown = sorted(every - set(model_labels))
        if unknown:
            raise DataError(
                f"data labels {unknown} are not in the model's label2id {model_labels}: relabel the data, "
                "or fine-tune the teacher with these label names in config.label2id"
            )
        label_list = model_labels
    else:
        reference = values["train"] if "train" in values else next(iter(values.values()))
        label_list = sorted(reference, key=_natural_key(reference))
        unseen = sorted(every - set(label_list))
        if unseen:
            raise DataError(
                f"labels {unseen} appear outside the train split only: the model could never learn them; fix the splits"
            )
    ids = {label: i for i, label in enumerate(label_list)}
    return label_list, ids.__getitem__


def _int_label_encoding(
    labeled: Mapping[str, datasets.Dataset], column: str, every: set[int], model_labels: list[str] | None
) -> tuple[list[str], Callable[[Any], int]]:
    """Integer labels are class ids: names from the model, a `ClassLabel` feature, or "0".."max"."""
    feature = next(iter(labeled.values())).features[column] if labeled else None
    class_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    if model_labels is not None:
        if class_names is not None:
            check_label_order(class_names, dict(enumerate(model_labels)))
        label_list = model_labels
    else:
        label_list = class_names or [str(i) for i in range(max(every, default=-1) + 1)]
    out_of_range = sorted(value for value in every if not 0 <= value < len(label_list))
    if out_of_range:
        raise DataError(
            f"integer labels {out_of_range} are outside 0..{len(label_list) - 1} ({len(label_list)} labels): "
            "fix the data or the model's label2id"
        )
    return label_list, int


def _require_text_cells(dataset: datasets.Dataset, split: str, column: str) -> None:
    """Text columns hold text: a column pandas read as numbers, or an empty cell (tokenized as ""), is refused."""
    values = dataset.data.column(column)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise DataError(
            f"text column {column!r} of the {split} split holds {values.type} values, not text: set "
            "text_column (and text_pair_column) to the columns holding the texts"
        )
    row = _first_blank_row(values)
    if row is not None:
        raise DataError(f"row {row} of the {split} split has an empty {column!r} text: fill or drop that row")


def _require_filled_labels(dataset: datasets.Dataset, split: str, column: str) -> None:
    """An empty label cell is a missing label (keep_default_na=False would read it as a class '')."""
    values = dataset.data.column(column)
    row = _first_blank_row(values) if pa.types.is_string(values.type) or pa.types.is_large_string(values.type) \
        else _first_index(pc.is_null(values))
    if row is not None:
        raise DataError(f"row {row} of the {split} split has an empty {column!r} label: fill or drop that row"
                        + (", or set unlabeled_rows_in_train to use it as a transfer row" if split == "train" else ""))


def _first_blank_row(values: Any) -> int | None:
    """1-based row (header not counted) of the first missing or whitespace-only string, or None."""
    return _first_index(pc.or_kleene(pc.is_null(values), pc.equal(pc.utf8_trim_whitespace(values), "")))


def _first_index(mask: Any) -> int | None:
    index = pc.index(mask, True).as_py()
    return None if index < 0 else index + 1


def _label_kind(value: Any) -> str:
    if isinstance(value, int):  # bool included
        return "int"
    if isinstance(value, float):
        return "float"
    return "str"


def _natural_key(labels: Sequence[str]) -> Callable[[str], Any]:
    """Numeric order for labels that are all integers written as strings ("2" before "10")."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return int
    return str


def _check_tags(dataset: datasets.Dataset, split: str, column: str, label2id: Mapping[str, int]) -> None:
    """Every tag (string or id) must belong to label_list, checked once on the Arrow column."""
    tags = pc.unique(pc.list_flatten(dataset.data.column(column))).to_pylist()
    unknown = sorted(
        (tag for tag in tags if (tag not in label2id if isinstance(tag, str) else not 0 <= tag < len(label2id))),
        key=str,
    )
    if unknown:
        raise DataError(
            f"tags {unknown} in the {split} split are not in label_list {list(label2id)}: extend label_list"
        )


def _tag_id(tag: str | int, label2id: Mapping[str, int]) -> int:
    return label2id[tag] if isinstance(tag, str) else int(tag)


def _subsample(raw: datasets.DatasetDict, args: DataArguments) -> datasets.DatasetDict:
    """max_train_samples: first N after a seeded shuffle (a random subset, reproducible);
    max_eval_samples: first N validation examples (the same ones in every run)."""
    subset = datasets.DatasetDict(raw)
    if args.max_train_samples is not None and "train" in subset:
        train = subset["train"].shuffle(seed=args.subset_seed)
        subset["train"] = train.select(range(min(args.max_train_samples, train.num_rows)))
    if args.max_eval_samples is not None and "validation" in subset:
        validation = subset["validation"]
        subset["validation"] = validation.select(range(min(args.max_eval_samples, validation.num_rows)))
    return subset
