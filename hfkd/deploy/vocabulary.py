"""Vocabulary trimming: keep the tokens a deployment's texts use, drop the rest from tokenizer and embeddings.

MiniLM's 30,522-token vocabulary is 11.7M of its 22.7M parameters, and a task's texts use a
fraction of it. `trim_vocabulary(model, tokenizer, texts)` keeps

- every special and added token, and the ids the post-processor and the model config name;
- every token id the tokenizer produces on `texts`;
- what the tokenizer's algorithm needs to produce those tokens again (below),

rewrites `tokenizer.json` with new ids (the old order kept), reloads it with `AutoTokenizer` (as a
user's `from_pretrained` will), checks by re-tokenizing `texts`, and only then slices the
embedding rows. Why the tokens on `texts` stay the same, per tokenizer model:

- WordPiece takes the longest vocabulary entry at each position: the one it took is kept and no
  longer one existed, so removing others changes nothing.
- BPE applies, at each step, the lowest-ranked merge among adjacent symbols. Merges never cross the
  boundary of a final token, so the merges inside one token's span are those of BPE run on that
  token alone: every symbol formed on the way (`_bpe_intermediates`) is kept, and a merge is kept
  when both its parts and its result are. The merges applied on `texts` are then all still there,
  in the same order, and no merge is added: BPE takes the same steps.
- Unigram takes the best-scoring segmentation (Viterbi): removing pieces the best path does not use
  only removes competitors, except that a position left without a single-character piece gets an
  unknown-token node, scored 10 below the lowest piece score. Keeping the lowest-scoring piece keeps
  that score, below every piece's: such a node makes a path worse than the one through the removed
  piece, which already lost.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from hfkd.models import HfkdError

logger = logging.getLogger(__name__)

SUPPORTED_MODELS = ("BPE", "Unigram", "WordPiece")
UNKNOWN_SHARE_WARNING = 0.5
"""Warn when more than this share of the given texts' tokens is already unknown to the tokenizer."""
PADDING_ROWS_ALLOWED = 1024
"""Embedding rows beyond the tokenizer's tokens accepted as padding (vocabularies rounded up to a multiple
of 64 or 128); more means the tokenizer is not the model's."""
CONFIG_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "sep_token_id",
                    "cls_token_id", "mask_token_id", "decoder_start_token_id")
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # byte-fallback tokens (Llama/SentencePiece style)
_TOKENIZER_FILE = "tokenizer.json"
Encoded = tuple[list[int], list[str], list[int]]
_KEPT_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json")


class VocabularyError(HfkdError, ValueError):
    """A model, tokenizer or texts whose vocabulary cannot be trimmed as asked: the message names the fix."""


@dataclass(frozen=True)
class TokenChange:
    """How a trimmed tokenizer's tokens differ from the original's on some texts (special tokens left out)."""

    texts: int
    tokens: int
    """Tokens the original tokenizer produces on the texts."""
    changed_tokens: int
    """Of those, the ones the trimmed tokenizer does not reproduce (split differently, unknown or dropped)."""
    unknown_tokens: int
    """Unknown tokens the trimmed tokenizer produces where the original produced known ones."""
    changed_texts: int

    @property
    def changed_share(self) -> float:
        return self.changed_tokens / self.tokens if self.tokens else 0.0

    @property
    def unknown_share(self) -> float:
        return self.unknown_tokens / self.tokens if self.tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)},
                "changed_share": self.changed_share, "unknown_share": self.unknown_share}


@dataclass
class TrimReport:
    """What `trim_vocabulary` kept and saved. `compare(other_texts)` says what changes on other text."""

    tokenizer_model: str
    vocab_before: int
    vocab_after: int
    kept_special: int
    """Special and added tokens, and ids the post-processor or the model config names."""
    kept_in_texts: int
    """Other tokens the given texts produce."""
    kept_extra: int
    """Tokens the tokenizer's algorithm needs to produce those again, the alphabet and `keep_tokens`."""
    texts: int
    text_tokens: int
    unknown_in_texts: int
    """Unknown tokens the original tokenizer already produced on the given texts."""
    parameters_before: int
    parameters_after: int
    bytes_before: int
    """Bytes of the model's parameters (tied weights once), i.e. of its weights on disk without headers."""
    bytes_after: int
    kept_ids: list[int] = field(repr=False)
    """kept_ids[new_id] = the token's id in the original vocabulary (to map ids or cached teacher outputs)."""
    original_tokenizer: Any = field(repr=False, compare=False)
    tokenizer: Any = field(repr=False, compare=False)

    @property
    def removed(self) -> int:
        return self.vocab_before - self.vocab_after

    @property
    def parameters_saved(self) -> int:
        return self.parameters_before - self.parameters_after

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def compare(self, texts: Iterable[str], batch_size: int = 1024) -> TokenChange:
        """How many tokens of `texts` the trimmed tokenizer changes, and how many become unknown."""
        return compare_tokenizers(self.original_tokenizer, self.tokenizer, texts, batch_size)

    def to_dict(self) -> dict[str, Any]:
        """The numbers (JSON-safe), without the tokenizers."""
        skip = ("original_tokenizer", "tokenizer", "kept_ids")
        numbers = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        return {**numbers, "removed": self.removed, "parameters_saved": self.parameters_saved,
                "bytes_saved": self.bytes_saved, "kept_ids": list(self.kept_ids)}

    def summary(self) -> str:
        """A few lines for a terminal."""
        share = self.unknown_in_texts / self.text_tokens if self.text_tokens else 0.0
        return "\n".join([
            f"{self.tokenizer_model} vocabulary: kept {self.vocab_after:,} of {self.vocab_before:,} tokens, "
            f"removed {self.removed:,} (special {self.kept_special:,}, in the texts {self.kept_in_texts:,}, "
            f"extra {self.kept_extra:,})",
            f"parameters: {self.parameters_before:,} -> {self.parameters_after:,} "
            f"(-{self.parameters_saved:,}, -{_share(self.parameters_saved, self.parameters_before)})",
            f"bytes: {self.bytes_before:,} -> {self.bytes_after:,} (-{_share(self.bytes_saved, self.bytes_before)})",
            f"texts: {self.texts:,} ({self.text_tokens:,} tokens, {100 * share:.2f}% unknown before trimming)",
        ])


def trim_vocabulary(
    model: nn.Module,
    tokenizer: Any,
    texts: Iterable[str],
    *,
    keep_tokens: Iterable[str | int] = (),
    keep_alphabet: bool = False,
    batch_size: int = 1024,
) -> tuple[nn.Module, Any, TrimReport]:
    """Keep only the tokens `texts` need (plus special tokens); return (model, tokenizer, report).

    On `texts` the trimmed tokenizer produces exactly the original's tokens (checked here, by
    re-tokenizing) and the model, fed the new ids, the same outputs: its input embedding and output
    head (bias included; a tied head stays tied) keep the rows of the kept tokens, in their old
    order. The model is changed in place (like `resize_token_embeddings`); `config.vocab_size` and
    the config's token ids follow. The tokenizer is a new one, loaded back from its saved files.

    `keep_alphabet` also keeps every single-character token (WordPiece: with its `##` form; byte
    fallback: the `<0x..>` bytes), so that unseen words split into characters instead of becoming
    unknown or, for BPE without an unknown token, being dropped. `keep_tokens`: more tokens or ids
    to keep. `report.compare(other_texts)` counts what changes on text outside `texts`.
    """
    texts = _texts(texts)
    spec = _tokenizer_spec(tokenizer)
    vocab_tensors = _vocabulary_tensors(model, len(tokenizer))
    asked = _asked_ids(tokenizer, keep_tokens)
    encoded = _encode(tokenizer, texts, batch_size)
    text_tokens, unknown = _count_unknown(encoded, tokenizer.unk_token_id)
    if text_tokens and unknown / text_tokens > UNKNOWN_SHARE_WARNING:
        logger.warning("%.0f%% of the given texts' tokens are unknown (%s) already: are the texts in the language "
                       "and script this tokenizer was built for?", 100 * unknown / text_tokens, tokenizer.unk_token)

    special = _special_ids(tokenizer, model, spec)
    in_texts = {i for ids, _, _ in encoded for i in ids} - special
    extra = _extra_ids(spec, special | in_texts, asked, keep_alphabet) - special - in_texts
    kept = sorted(special | in_texts | extra)
    new_id = {old: new for new, old in enumerate(kept)}

    trimmed = _rebuild_tokenizer(tokenizer, _trimmed_spec(spec, kept, new_id), new_id)
    _check_vocabulary(tokenizer, trimmed, kept)
    _check_same_tokens(encoded, trimmed, texts, new_id, batch_size)

    parameters_before, bytes_before = _parameter_size(model)
    _slice_rows(model, vocab_tensors, kept, new_id)
    parameters_after, bytes_after = _parameter_size(model)
    report = TrimReport(
        tokenizer_model=spec["model"]["type"], vocab_before=len(tokenizer), vocab_after=len(kept),
        kept_special=len(special), kept_in_texts=len(in_texts), kept_extra=len(extra), texts=len(texts),
        text_tokens=text_tokens, unknown_in_texts=unknown, parameters_before=parameters_before,
        parameters_after=parameters_after, bytes_before=bytes_before, bytes_after=bytes_after,
        kept_ids=kept, original_tokenizer=tokenizer, tokenizer=trimmed)
    return model, trimmed, report


def compare_tokenizers(original: Any, trimmed: Any, texts: Iterable[str], batch_size: int = 1024) -> TokenChange:
    """Count the original's tokens that `trimmed` does not reproduce on `texts` (aligned per text), and the
    unknown tokens it produces in their place."""
    texts = list(texts)
    unk = trimmed.unk_token_id  # by id: a Unigram unknown token is written as the text it stands for
    tokens = changed = unknown = changed_texts = 0
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        before = original(batch, add_special_tokens=False, verbose=False).encodings
        after = trimmed(batch, add_special_tokens=False, verbose=False).encodings
        for old, new in zip(before, after):
            tokens += len(old.tokens)
            if old.tokens == new.tokens:
                continue
            changed_texts += 1
            matcher = difflib.SequenceMatcher(None, old.tokens, new.tokens, autojunk=False)
            for tag, i1, i2, j1, j2 in matcher.get_opcodes():
                if tag != "equal":
                    changed += i2 - i1
                    unknown += new.ids[j1:j2].count(unk) if unk is not None else 0
    return TokenChange(texts=len(texts), tokens=tokens, changed_tokens=changed, unknown_tokens=unknown,
                       changed_texts=changed_texts)


# ------------------------------------------------------------------------------------- checks first


def _texts(texts: Iterable[str]) -> list[str]:
    texts = list(texts)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise VocabularyError(f"texts must be strings, got a {type(bad).__name__}: pass the texts themselves")
    if not any(text.strip() for text in texts):
        raise VocabularyError("no texts given (or only blank ones): pass the texts the model will see, "
                              "e.g. its training set, to learn which tokens to keep")
    return texts


def _tokenizer_spec(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer.json of a fast tokenizer whose model this module can trim."""
    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        raise VocabularyError(f"{type(tokenizer).__name__} is not a fast (tokenizers) tokenizer, and trimming "
                              "rewrites tokenizer.json: load it with AutoTokenizer.from_pretrained(path)")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = spec["model"].get("type")
    if kind not in SUPPORTED_MODELS:
        raise VocabularyError(f"tokenizer model {kind} cannot be trimmed: supported are {', '.join(SUPPORTED_MODELS)}")
    if kind == "BPE" and spec["model"].get("dropout"):
        raise VocabularyError(f"BPE dropout is on ({spec['model']['dropout']}), so tokens are random: "
                              "set the tokenizer's dropout to None before trimming")
    return spec


def _vocabulary_tensors(model: nn.Module, tokenizer_size: int) -> list[nn.Parameter]:
    """The parameters with one row per token (input embedding, output head and its bias), once each;
    refuses a model whose embedding does not fit the tokenizer or that keeps vocabulary rows elsewhere."""
    embedding = model.get_input_embeddings()
    rows = embedding.weight.shape[0]
    if tokenizer_size > rows or rows - tokenizer_size > PADDING_ROWS_ALLOWED:
        raise VocabularyError(
            f"the tokenizer has {tokenizer_size:,} tokens but the model's input embedding {rows:,} rows: "
            "pass the tokenizer the model was trained with")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tensors = {id(embedding.weight): embedding.weight}
    for tensor in (getattr(head, "weight", None), getattr(head, "bias", None)):
        if tensor is None:
            continue
        if tensor.shape[0] != rows:
            raise VocabularyError(f"the output head has {tensor.shape[0]:,} rows but the input embedding {rows:,}: "
                                  "trim a model whose head scores the input vocabulary")
        tensors[id(tensor)] = tensor
    elsewhere = [name for name, tensor in (*model.named_parameters(), *model.named_buffers())
                 if id(tensor) not in tensors and rows in tensor.shape]
    if elsewhere:
        raise VocabularyError(
            f"{', '.join(elsewhere[:3])} {'has' if len(elsewhere) == 1 else 'have'} the vocabulary's size ({rows:,}) "
            "outside the input embedding and output head: trimming supports models whose vocabulary lives only there")
    return list(tensors.values())


# ------------------------------------------------------------------------------------ what to keep


def _encode(tokenizer: Any, texts: Sequence[str], batch_size: int) -> list[Encoded]:
    """(ids, tokens, special-tokens mask) of every text, special tokens included, not truncated."""
    encoded = []
    for start in range(0, len(texts), batch_size):
        for encoding in tokenizer(list(texts[start:start + batch_size]), verbose=False).encodings:
            encoded.append((encoding.ids, encoding.tokens, encoding.special_tokens_mask))
    return encoded


def _count_unknown(encoded: list[Encoded], unk_id: int | None) -> tuple[int, int]:
    """(tokens, unknown tokens) of the texts themselves, the post-processor's special tokens left out."""
    tokens = unknown = 0
    for ids, _, special in encoded:
        for i, is_special in zip(ids, special):
            tokens += not is_special
            unknown += not is_special and i == unk_id
    return tokens, unknown


def _special_ids(tokenizer: Any, model: nn.Module, spec: dict[str, Any]) -> set[int]:
    """Ids to keep whatever the texts: special and added tokens, the post-processor's, padding's and the
    unknown piece's ids, the model config's token ids and the embedding's padding_idx."""
    ids = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    ids |= {added["id"] for added in spec.get("added_tokens") or ()}
    _map_processor_ids(spec.get("post_processor"), lambda i: ids.add(i) or i)
    if spec.get("padding"):
        ids.add(spec["padding"]["pad_id"])
    if spec["model"]["type"] == "Unigram" and spec["model"].get("unk_id") is not None:
        ids.add(spec["model"]["unk_id"])
    ids |= _config_ids(model)
    ids.add(model.get_input_embeddings().padding_idx)
    return {i for i in ids if i is not None and 0 <= i < len(tokenizer)}


def _extra_ids(spec: dict[str, Any], kept: set[int], asked: set[int], keep_alphabet: bool) -> set[int]:
    """What the algorithm needs to produce the kept tokens again, the alphabet if asked, and the asked ids."""
    model = spec["model"]
    vocab = _model_vocab(model)
    extra = set(asked)
    if keep_alphabet:
        extra |= {i for token, i in vocab.items() if _is_single_character(token, model)}
    if model["type"] == "BPE":
        token_of = {i: token for token, i in vocab.items()}
        added = {added["id"] for added in spec.get("added_tokens") or ()}
        wanted = {token_of[i] for i in kept | extra if i in token_of and i not in added}
        formed = _bpe_intermediates(wanted, _merge_pairs(model["merges"]),
                                    model.get("continuing_subword_prefix") or "", model.get("end_of_word_suffix") or "")
        extra |= {vocab[symbol] for symbol in formed if symbol in vocab}
    elif model["type"] == "Unigram":  # the lowest-scoring piece sets the unknown-token score
        extra.add(min(range(len(model["vocab"])), key=lambda i: model["vocab"][i][1]))
    return extra


def _asked_ids(tokenizer: Any, keep_tokens: Iterable[str | int]) -> set[int]:
    """The ids of `keep_tokens` (tokens as the tokenizer writes them, or ids)."""
    vocab = tokenizer.get_vocab()
    ids = set()
    for token in keep_tokens:
        if isinstance(token, int) and 0 <= token < len(tokenizer):
            ids.add(token)
        elif isinstance(token, str) and token in vocab:
            ids.add(vocab[token])
        else:
            raise VocabularyError(f"keep_tokens holds {token!r}, which is not a token (or id) of this tokenizer: "
                                  "pass tokens as the tokenizer writes them (convert_ids_to_tokens) or their ids")
    return ids


def _model_vocab(model: dict[str, Any]) -> dict[str, int]:
    """token -> id of the tokenizer model's own vocabulary (Unigram: the piece list's order)."""
    if model["type"] == "Unigram":
        return {piece: i for i, (piece, _) in enumerate(model["vocab"])}
    return dict(model["vocab"])


def _is_single_character(token: str, model: dict[str, Any]) -> bool:
    """One character, once the subword prefix ("##") or end-of-word suffix is stripped; or a fallback byte."""
    prefix = model.get("continuing_subword_prefix") or ""
    suffix = model.get("end_of_word_suffix") or ""
    body = token[len(prefix):] if prefix and token.startswith(prefix) else token
    body = body[:-len(suffix)] if suffix and body.endswith(suffix) else body
    return len(body) == 1 or bool(model.get("byte_fallback") and _BYTE_TOKEN.fullmatch(token))


def _merge_pairs(merges: list[Any]) -> list[tuple[str, str]]:
    """BPE merges as pairs: tokenizers writes them as ["a", "b"] (newer) or "a b" (older files)."""
    return [tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge) for merge in merges]


def _bpe_intermediates(tokens: Iterable[str], merges: list[tuple[str, str]], prefix: str, suffix: str) -> set[str]:
    """Every symbol BPE forms on the way to each token (its characters included), running BPE on the token
    alone: the lowest-ranked adjacent pair first, the leftmost of equal ones, as tokenizers does."""
    rank = {pair: i for i, pair in enumerate(merges)}
    formed: set[str] = set()
    for token in tokens:
        symbols = _initial_symbols(token, prefix, suffix)
        formed.update(symbols)
        while len(symbols) > 1:
            candidates = [(rank[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in rank]
            if not candidates:
                break
            _, i = min(candidates)
            merged = symbols[i] + symbols[i + 1][len(prefix):]
            symbols[i:i + 2] = [merged]
            formed.add(merged)
    return formed


def _initial_symbols(token: str, prefix: str, suffix: str) -> list[str]:
    """The characters BPE starts from for this token: with a continuing-subword prefix every character not
    at a word's start carries it (a token starting with it is not at the start); with an end-of-word
    suffix the word's last character carries it."""
    inner = bool(prefix) and token.startswith(prefix) and len(token) > len(prefix)
    body = token[len(prefix):] if inner else token
    final = bool(suffix) and body.endswith(suffix) and len(body) > len(suffix)
    body = body[:-len(suffix)] if final else body
    if not body:
        return [token]
    symbols = [(prefix if inner or i else "") + character for i, character in enumerate(body)]
    if final:
        symbols[-1] += suffix
    return symbols


def _config_ids(model: nn.Module) -> set[int]:
    """Token ids a model's config and generation config name (eos may be a list)."""
    ids: set[int] = set()
    for config in _configs(model):
        for name in CONFIG_TOKEN_IDS:
            value = getattr(config, name, None)
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    return {i for i in ids if isinstance(i, int)}


def _configs(model: nn.Module) -> list[Any]:
    configs = []
    config = getattr(model, "config", None)
    if config is not None:
        configs.append(config)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        if text is not config:
            configs.append(text)
    if getattr(model, "generation_config", None) is not None:
        configs.append(model.generation_config)
    return configs


# ------------------------------------------------------------------------------------ the rebuild


def _trimmed_spec(spec: dict[str, Any], kept: list[int], new_id: dict[int, int]) -> dict[str, Any]:
    """tokenizer.json with only the kept tokens, renumbered in their old order, and the BPE merges whose
    parts and result are all kept."""
    spec = copy.deepcopy(spec)
    model = spec["model"]
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in kept if old < len(model["vocab"])]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    else:
        token_of = {i: token for token, i in model["vocab"].items()}
        model["vocab"] = {token_of[old]: new_id[old] for old in kept if old in token_of}
    if model["type"] == "BPE":
        vocab, cut = model["vocab"], len(model.get("continuing_subword_prefix") or "")
        model["merges"] = [merge for merge, (a, b) in zip(model["merges"], _merge_pairs(model["merges"]))
                           if a in vocab and b in vocab and a + b[cut:] in vocab]
    for added in spec.get("added_tokens") or ():
        added["id"] = new_id[added["id"]]
    _map_processor_ids(spec.get("post_processor"), new_id.__getitem__)
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]
    return spec


def _map_processor_ids(processor: dict[str, Any] | None, change: Callable[[int], int]) -> None:
    """Replace each token id a post-processor holds with change(id), in place (also used to collect them)."""
    if not processor:
        return
    kind = processor.get("type")
    if kind == "Sequence":
        for inner in processor["processors"]:
            _map_processor_ids(inner, change)
    elif kind == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [change(i) for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            token, i = processor[key]
            processor[key] = [token, change(i)]


def _rebuild_tokenizer(tokenizer: Any, spec: dict[str, Any], new_id: dict[int, int]) -> Any:
    """Save the tokenizer, put the trimmed tokenizer.json in place of its vocabulary files, load it back."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="hfkd-trim-") as folder:
        tokenizer.save_pretrained(folder)
        for name in os.listdir(folder):
            if name not in _KEPT_FILES:
                os.remove(os.path.join(folder, name))  # vocab.txt, merges.txt, *.model: the untrimmed vocabulary
        with open(os.path.join(folder, _TOKENIZER_FILE), "w", encoding="utf-8") as handle:
            json.dump(spec, handle, ensure_ascii=False)
        config_path = os.path.join(folder, "tokenizer_config.json")
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
        if "added_tokens_decoder" in config:
            config["added_tokens_decoder"] = {str(new_id[int(i)]): token
                                              for i, token in config["added_tokens_decoder"].items()}
        with open(config_path, "w", encoding="utf-8") as handle:
            json.dump(config, handle, ensure_ascii=False, indent=2)
        trimmed = AutoTokenizer.from_pretrained(folder)
    trimmed.name_or_path = tokenizer.name_or_path
    return trimmed


def _check_vocabulary(original: Any, trimmed: Any, kept: list[int]) -> None:
    """Each new id holds the token its old id held (special and added tokens included)."""
    expected = original.convert_ids_to_tokens(kept)
    found = trimmed.convert_ids_to_tokens(list(range(len(kept))))
    if len(trimmed) != len(kept) or found != expected:
        wrong = next((i for i, (a, b) in enumerate(zip(expected, found)) if a != b), min(len(kept), len(trimmed)))
        raise RuntimeError(f"the trimmed tokenizer has {len(trimmed)} tokens for {len(kept)} kept, first "
                           f"difference at new id {wrong}: a bug in hfkd.deploy.vocabulary, please report it")


def _check_same_tokens(encoded: list[Encoded], trimmed: Any, texts: Sequence[str],
                       new_id: dict[int, int], batch_size: int) -> None:
    """The contract, checked: on the given texts the trimmed tokenizer gives the same tokens, renumbered."""
    again = _encode(trimmed, texts, batch_size)
    for index, ((ids, tokens, _), (new_ids, new_tokens, _)) in enumerate(zip(encoded, again)):
        if new_tokens != tokens or new_ids != [new_id[i] for i in ids]:
            raise RuntimeError(f"text {index} ({texts[index][:60]!r}) tokenizes as {new_tokens[:12]} after trimming, "
                               f"{tokens[:12]} before: a bug in hfkd.deploy.vocabulary, please report it")


def _slice_rows(model: nn.Module, tensors: list[nn.Parameter], kept: list[int], new_id: dict[int, int]) -> None:
    """Keep the kept rows of every vocabulary tensor in place (`.data`, so tied and aliased parameters stay
    one), then the modules' sizes, padding_idx, config.vocab_size and the config's token ids."""
    with torch.no_grad():
        for tensor in tensors:
            tensor.data = tensor.data.index_select(0, torch.tensor(kept, device=tensor.device))
    sliced = {id(tensor) for tensor in tensors}
    for module in model.modules():
        if isinstance(module, nn.Embedding) and id(module.weight) in sliced:
            module.num_embeddings = len(kept)
            module.padding_idx = new_id.get(module.padding_idx) if module.padding_idx is not None else None
        elif isinstance(module, nn.Linear) and id(module.weight) in sliced:
            module.out_features = len(kept)
    for config in _configs(model):
        if hasattr(config, "vocab_size"):
            config.vocab_size = len(kept)
        for name in CONFIG_TOKEN_IDS:
            value = getattr(config, name, None)
            if isinstance(value, int):
                setattr(config, name, new_id.get(value))
            elif isinstance(value, (list, tuple)):
                setattr(config, name, [new_id.get(i) for i in value])


def _parameter_size(model: nn.Module) -> tuple[int, int]:
    """(parameters, bytes), each shared parameter once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique), sum(p.numel() * p.element_size() for p in unique)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "0%"
