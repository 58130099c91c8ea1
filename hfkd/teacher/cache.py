"""Teacher-output cache: run the teacher once, train many epochs (or students) from its stored outputs.

With only logit terms active (`alpha_hidden == alpha_attention == 0`), online distillation pays a
teacher forward pass on every step of every epoch, although a frozen teacher in eval mode gives
the same logits for the same inputs each time. `build_teacher_cache` runs it once over the
tokenized train split and stores the logits as a `teacher_logits` column next to the data
(`Dataset.save_to_disk`); `DistillationTrainer` reads that column instead of calling the teacher,
so the teacher need not even be loaded. The KD term is the same as online, up to the float noise
of padding to another batch length.

What is stored, per row (float32):
- sequence classification: all `num_labels` logits, `[num_labels]`;
- token classification and causal LM: the logits of every position of the row, `[length, classes]`
  (unpadded; `TeacherCacheCollator` pads them with the batch). A causal LM's vocabulary makes this
  large (the build logs its size first and refuses when it exceeds the free disk space), hence:
- with `top_k` (for LM vocabularies), per item the teacher's k most likely classes instead:
  `teacher_topk_logprobs` `[..., k+1]`, float32, the log-probabilities log_softmax(z/T) of those k
  classes at the distillation temperature T followed by the log of the mass outside them (-inf when
  k = classes), and `teacher_topk_indices` `[..., k]`, int32, their class ids. The KD term then
  compares the student on those k+1 buckets (`hfkd.objective.losses.TOPK_KD_LOSSES`: kl and ce).
  Log-probabilities at T rather than raw logits plus a normaliser: the rest mass depends on T either
  way (so T is in the fingerprint either way), and storing it as a log computed over the whole
  vocabulary at build time keeps it exact where the top-k hold nearly all the mass (1 - sum would
  cancel to 0 in float32); the KD targets are then read, not recomputed.
Several teachers (a list) store their full logits side by side in teacher order, `[K * classes]` or
`[length, K * classes]`; the trainer splits and combines them every step (`hfkd.teacher.ensemble`).
A top-k cache holds one teacher.

`fingerprint.json` records what the logits depend on: a sha256 of the teacher's weights (in the dtype
it runs in; a list of them, in order, for several teachers), the dataset's `_fingerprint` (which `datasets` derives from the files and every
map/select applied, tokenization included), top-k and the temperature of a top-k cache, the hfkd version and any `fingerprint_extra` (the
recipes add the tokenizer's vocabulary hash, `max_seq_length` and `block_size`). `load_teacher_cache`
refuses a cache whose fingerprint differs from the expected one. Inputs that change every epoch (random MLM
masking, augmentation in the collator or in an on-the-fly transform) cannot be cached and are refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from hfkd import __version__
from hfkd.io import recover, staged
from hfkd.objective.losses import require_topk_loss
from hfkd.models import forward_arg_names, task_of

logger = logging.getLogger(__name__)

TEACHER_LOGITS = "teacher_logits"
TEACHER_TOPK_LOGPROBS = "teacher_topk_logprobs"
TEACHER_TOPK_INDICES = "teacher_topk_indices"
CACHE_COLUMNS = (TEACHER_LOGITS, TEACHER_TOPK_LOGPROBS, TEACHER_TOPK_INDICES)
FINGERPRINT_NAME = "fingerprint.json"
REBUILD_HINT = "rebuild it with `hfkd cache-teacher --config C.yaml` (or hfkd.teacher.cache.build_teacher_cache)"
_SEQUENCE_TASKS = ("sequence_classification",)
_POSITION_TASKS = ("token_classification", "causal_lm")
_LABEL_COLUMNS = ("labels", "label", "label_ids")


# ---------------------------------------------------------------- fingerprint


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor in the model's state_dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def tokenizer_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the token→id map: another vocabulary means other input_ids for the same text."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def teacher_cache_fingerprint(
    teacher: nn.Module | Sequence[nn.Module],
    dataset: datasets.Dataset,
    *,
    top_k: int | None = None,
    temperature: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a cache of `teacher` (or a list of teachers) over `dataset` depends on; see `load_teacher_cache`.

    A top-k cache depends on the distillation temperature (its rest mass does), a full one does not.
    """
    if top_k is not None and temperature is None:
        raise ValueError("a top-k teacher cache depends on the temperature: pass temperature=args.temperature.")
    teachers = _as_list(teacher)
    hashes = [state_dict_sha256(t) for t in teachers]
    fingerprint = {
        "teacher_sha256": hashes[0] if len(hashes) == 1 else hashes,
        "dataset_fingerprint": dataset._fingerprint,
        "top_k": top_k,
        "temperature": float(temperature) if top_k is not None else None,
        "hfkd_version": __version__,
    }
    clashing = sorted(set(fingerprint) & set(extra or {}))
    if clashing:
        raise ValueError(f"fingerprint_extra may not override {clashing}: give those fields other names.")
    return {**fingerprint, **dict(extra or {})}


# ---------------------------------------------------------------- build and load


def build_teacher_cache(
    teacher: nn.Module | Sequence[nn.Module],
    dataset: datasets.Dataset,
    data_collator: Callable[[list[dict[str, Any]]], Mapping[str, Any]],
    cache_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    top_k: int | None = None,
    temperature: float | None = None,
    fingerprint_extra: Mapping[str, Any] | None = None,
) -> datasets.Dataset:
    """Run `teacher` once over `dataset` and save the dataset plus its outputs in `cache_dir`.

    The outputs are a `teacher_logits` column, or with `top_k` the top-k log-probabilities at
    `temperature` (the training temperature) and their ids (see the module docstring).

    Batches are formed in order of length (less padding) with the collator training uses; rows keep
    the input order. The teacher runs in eval mode under `torch.inference_mode()` on its own device
    and dtype (cast it to `teacher_dtype` first if training uses one). The cache is written to a
    staging folder and swapped into place (`hfkd.io.staged`): a kill leaves the previous cache or the new
    one. `cache_dir` must be new, empty or an hfkd cache (`check_cache_dir`).
    Returns the saved dataset (memory-mapped from `cache_dir`). A list of teachers (same task
    head and classes) stores their logits side by side, in list order.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}.")
    teachers = _as_list(teacher)
    task = task_of(teachers[0])
    heads = {(task_of(t), _output_classes(t, task)) for t in teachers} if task else set()
    if len(heads) > 1:
        raise ValueError(f"the teachers differ in task head or class count {sorted(heads, key=str)}: "
                         "cache teachers that share the student's head and label set / vocabulary.")
    _check_cacheable(task, dataset)
    check_cache_dir(cache_dir)
    if top_k is not None and len(teachers) > 1:
        raise ValueError("a top-k cache holds one teacher's distribution: cache several teachers with full "
                         "logits (unset teacher_cache_top_k), or distill from them online.")
    _check_top_k(top_k, temperature, _output_classes(teachers[0], task))
    # Only what a teacher or the collator's labels use: text columns would trip padding collators.
    accepted = frozenset().union(*(forward_arg_names(t) for t in teachers))
    columns = [c for c in dataset.column_names if c in accepted or c in _LABEL_COLUMNS]
    inputs = dataset.select_columns(columns)
    _check_deterministic(inputs, data_collator)
    fingerprint = teacher_cache_fingerprint(
        teachers, dataset, top_k=top_k, temperature=temperature, extra=fingerprint_extra)
    lengths = [len(ids) for ids in inputs["input_ids"]] if "input_ids" in columns else [1] * len(inputs)
    per_position = task in _POSITION_TASKS
    items = sum(lengths) if per_position else len(lengths)
    per_item = _output_classes(teachers[0], task) * len(teachers) * 4 if top_k is None else (2 * top_k + 1) * 4
    needed = items * per_item
    logger.info("Teacher cache: %d rows, %d items, about %.2f GiB of %s -> %s", len(inputs), items, needed / 2**30,
                "logits" if top_k is None else f"top-{top_k} log-probabilities (T={temperature})", cache_dir)
    _check_disk_space(cache_dir, needed)
    started = time.perf_counter()
    outputs = _logit_outputs if top_k is None else partial(_top_k_outputs, top_k=top_k, temperature=temperature)
    per_teacher = [_run_teacher(t, inputs, data_collator, lengths, batch_size, per_position, outputs)
                   for t in teachers]
    per_column = {name: [np.concatenate(rows, axis=-1) for rows in zip(*(p[name] for p in per_teacher))]
                  for name in per_teacher[0]} if len(teachers) > 1 else per_teacher[0]
    cached = dataset
    for name, values in per_column.items():
        cached = cached.add_column(name, _arrow_rows(values), feature=_feature(values[0]))
    logger.info("Teacher cache: %d rows in %.1f s", len(cached), time.perf_counter() - started)
    _save_atomically(cached, fingerprint, os.fspath(cache_dir))
    return datasets.load_from_disk(os.fspath(cache_dir))


def load_teacher_cache(cache_dir: str | os.PathLike, expected_fingerprint: Mapping[str, Any]) -> datasets.Dataset:
    """The cached dataset, if its fingerprint equals `expected_fingerprint` (see `teacher_cache_fingerprint`)."""
    path = os.path.join(os.fspath(cache_dir), FINGERPRINT_NAME)
    if not cache_exists(cache_dir):
        raise FileNotFoundError(f"no teacher cache in {cache_dir} (no {FINGERPRINT_NAME}): {REBUILD_HINT}.")
    with open(path, encoding="utf-8") as handle:
        stored = json.load(handle)
    differing = [key for key in sorted(set(stored) | set(expected_fingerprint))
                 if stored.get(key) != expected_fingerprint.get(key)]
    if differing:
        key, verb = differing[0], "differs" if len(differing) == 1 else "differ"
        why = "".join(_STALE_HINTS.get(k, "") for k in differing)
        raise ValueError(
            f"stale teacher cache in {cache_dir}: {', '.join(differing)} {verb} ({key}: cache "
            f"{_short(stored.get(key))}, expected {_short(expected_fingerprint.get(key))}){why}; {REBUILD_HINT}."
        )
    return datasets.load_from_disk(os.fspath(cache_dir))


def has_teacher_cache(dataset: Any) -> bool:
    """Whether a dataset carries cached teacher outputs (a `build_teacher_cache` result)."""
    return any(name in (getattr(dataset, "column_names", None) or ()) for name in CACHE_COLUMNS)


def check_cache_fits(dataset: Any, kd_loss: str, temperature: float) -> None:
    """Refuse a top-k cache that the KD term cannot use: another temperature, or a loss needing all logits.

    The temperature comes from the `fingerprint.json` beside the dataset's Arrow files, when it is
    still there (a dataset mapped since then lives elsewhere: `load_teacher_cache` checked it then).
    """
    if TEACHER_TOPK_LOGPROBS not in (getattr(dataset, "column_names", None) or ()):
        return
    require_topk_loss(kd_loss, "a full cache (teacher_cache_top_k unset)")
    stored = _stored_fingerprint(dataset)
    if stored is not None and stored.get("temperature") != float(temperature):
        raise ValueError(
            f"the top-k teacher cache holds log-probabilities at temperature {stored.get('temperature')} but "
            f"temperature is {temperature}: train at that temperature or {REBUILD_HINT}."
        )


def _stored_fingerprint(dataset: datasets.Dataset) -> dict[str, Any] | None:
    for cache_file in dataset.cache_files:
        path = os.path.join(os.path.dirname(cache_file["filename"]), FINGERPRINT_NAME)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
    return None


# ---------------------------------------------------------------- collation


class TeacherCacheCollator:
    """Collate the cached teacher columns here and everything else with the wrapped collator.

    Padding collators (`DataCollatorWithPadding`, ...) only know token fields and fail on, or
    mangle, per-row logits. Per-position outputs are zero-padded to the batch's sequence length on
    the tokenizer's padding side (top-k ids with id 0); the padded positions are masked out of the KD term.
    """

    def __init__(self, data_collator: Callable[[list[dict[str, Any]]], Mapping[str, Any]]) -> None:
        self.data_collator = data_collator
        tokenizer = getattr(data_collator, "tokenizer", None)
        self.padding_side = getattr(tokenizer, "padding_side", "right")

    def __call__(self, features: list[dict[str, Any]]) -> Mapping[str, Any]:
        cached = {name: [f[name] for f in features] for name in CACHE_COLUMNS if name in features[0]}
        batch = self.data_collator([{k: v for k, v in f.items() if k not in cached} for f in features])
        for name, rows in cached.items():
            dtype = torch.long if name == TEACHER_TOPK_INDICES else torch.float32
            tensors = [torch.as_tensor(row, dtype=dtype) for row in rows]
            if tensors[0].dim() == 1:
                batch[name] = torch.stack(tensors)
            else:
                batch[name] = _pad_positions(tensors, batch["input_ids"].shape[1], self.padding_side)
        return batch


def _pad_positions(rows: Sequence[torch.Tensor], length: int, side: str) -> torch.Tensor:
    out = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
    for i, row in enumerate(rows):
        if side == "left":
            out[i, length - row.shape[0]:] = row
        else:
            out[i, : row.shape[0]] = row
    return out


# ---------------------------------------------------------------- internals


def _as_list(teacher: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    teachers = [teacher] if isinstance(teacher, nn.Module) else list(teacher)
    if not teachers:
        raise ValueError("no teacher given: pass a model or a non-empty list of models.")
    return teachers


def _check_cacheable(task: str | None, dataset: Any) -> None:
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"the teacher cache needs a map-style datasets.Dataset, got {type(dataset).__name__}.")
    if len(dataset) == 0:
        raise ValueError("the dataset to cache is empty: pass the tokenized train split.")
    if has_teacher_cache(dataset):
        raise ValueError("the dataset already has cached teacher outputs: pass the tokenized data without them.")
    if task == "masked_lm":
        raise ValueError(
            "cannot cache a masked_lm teacher: its inputs are masked at random every epoch, so its outputs "
            "differ every time; train online (unset teacher_cache_dir)."
        )
    if task not in _SEQUENCE_TASKS + _POSITION_TASKS:
        raise ValueError(
            f"cannot cache a {task or 'headless'} teacher: the cache supports "
            f"{', '.join(_SEQUENCE_TASKS + _POSITION_TASKS)}; train online instead."
        )
    if dataset.format["type"] == "custom":
        raise ValueError(
            "the dataset has an on-the-fly transform (set_transform/with_transform), whose rows may change "
            "every epoch: apply it with dataset.map first, or train online."
        )


def _check_top_k(top_k: int | None, temperature: float | None, classes: int) -> None:
    if top_k is None:
        return
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= classes:
        raise ValueError(
            f"top_k={top_k!r} must be an int from 1 to the teacher's {classes} output classes "
            "(typically 20-100 for an LM vocabulary; unset it to cache all logits)."
        )
    if temperature is None or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(
            f"a top-k cache stores log-probabilities at the distillation temperature: pass temperature="
            f"args.temperature (> 0), got {temperature!r}."
        )


def _check_deterministic(inputs: datasets.Dataset, data_collator: Callable) -> None:
    """Refuse collators that give new inputs every epoch: the cached logits would be for other inputs."""
    if isinstance(data_collator, DataCollatorForLanguageModeling) and data_collator.mlm:
        raise ValueError(
            "random MLM masking (DataCollatorForLanguageModeling(mlm=True)) gives new inputs every epoch, so "
            "teacher outputs cannot be cached: train online (unset teacher_cache_dir)."
        )
    probe = [inputs[i] for i in range(min(8, len(inputs)))]
    if not _same_batch(data_collator(probe), data_collator(probe)):
        raise ValueError(
            f"the data collator {type(data_collator).__name__} returns different batches for the same rows "
            "(random masking or augmentation), so teacher outputs cannot be cached: train online."
        )


def _same_batch(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if set(a) != set(b):
        return False
    return all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def _output_classes(teacher: nn.Module, task: str | None) -> int:
    return teacher.config.vocab_size if task == "causal_lm" else teacher.config.num_labels


def _feature(row: np.ndarray) -> datasets.List:
    feature = datasets.List(datasets.Value(str(row.dtype)))
    return feature if row.ndim == 1 else datasets.List(feature)


def _logit_outputs(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    return {TEACHER_LOGITS: logits.float()}


def _top_k_outputs(logits: torch.Tensor, top_k: int, temperature: float) -> dict[str, torch.Tensor]:
    """Top-k log-probabilities at T plus the log of the rest (a logsumexp over the others), and their ids."""
    log_probs = F.log_softmax(logits.float() / temperature, dim=-1)
    values, indices = log_probs.topk(top_k, dim=-1)
    rest = torch.logsumexp(log_probs.scatter(-1, indices, -math.inf), dim=-1, keepdim=True)
    return {TEACHER_TOPK_LOGPROBS: torch.cat([values, rest], dim=-1), TEACHER_TOPK_INDICES: indices.int()}


def _arrow_rows(rows: Sequence[np.ndarray]) -> pa.ChunkedArray:
    """One Arrow list per row ([classes] or [length][classes]), built without Python floats.

    Chunks hold about 2**30 values each: Arrow list offsets are 32-bit.
    """
    chunks, start, size = [], 0, 0
    for end, row in enumerate(rows, start=1):
        size += row.size
        if size >= 2**30 or end == len(rows):
            chunks.append(_arrow_chunk(rows[start:end]))
            start, size = end, 0
    return pa.chunked_array(chunks)


def _arrow_chunk(rows: Sequence[np.ndarray]) -> pa.Array:
    flat = pa.array(np.concatenate([row.reshape(-1) for row in rows]))
    classes = rows[0].shape[-1]
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, len(flat) + 1, classes, dtype=np.int32)), flat)
    if rows[0].ndim == 1:
        return inner
    outer = np.concatenate([[0], np.cumsum([row.shape[0] for row in rows])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(outer), inner)


def _run_teacher(
    teacher: nn.Module,
    inputs: datasets.Dataset,
    data_collator: Callable,
    lengths: Sequence[int],
    batch_size: int,
    per_position: bool,
    outputs: Callable[[torch.Tensor], dict[str, torch.Tensor]],
) -> dict[str, list[np.ndarray]]:
    """`outputs(teacher logits)` per column and row, in row order, from length-sorted batches."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    accepted = forward_arg_names(teacher)
    device = next(teacher.parameters()).device
    padding_side = getattr(getattr(data_collator, "tokenizer", None), "padding_side", "right")
    results: dict[str, list[np.ndarray | None]] = {}
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = [int(i) for i in order[start : start + batch_size]]
                columns = inputs[rows]
                batch = data_collator([dict(zip(columns, values)) for values in zip(*columns.values())])
                feed = {k: v.to(device) for k, v in batch.items() if k in accepted and k not in _LABEL_COLUMNS}
                for name, values in outputs(teacher(**feed).logits).items():
                    values = values.cpu().numpy()
                    column = results.setdefault(name, [None] * len(inputs))
                    for j, row in enumerate(rows):
                        if not per_position:
                            column[row] = values[j]
                        elif padding_side == "left":
                            column[row] = values[j, values.shape[1] - lengths[row]:]
                        else:
                            column[row] = values[j, : lengths[row]]
    finally:
        teacher.train(was_training)
    return results


def _check_disk_space(cache_dir: str | os.PathLike, needed: int) -> None:
    parent = os.path.dirname(os.path.abspath(os.fspath(cache_dir))) or "."
    os.makedirs(parent, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if needed > free:
        raise ValueError(
            f"a teacher cache in {cache_dir} needs about {needed / 2**30:.1f} GiB of teacher outputs but only "
            f"{free / 2**30:.1f} GiB are free: free space, cache fewer rows (max_train_samples), use a smaller "
            "teacher_cache_top_k, or train online."
        )


def _save_atomically(dataset: datasets.Dataset, fingerprint: Mapping[str, Any], cache_dir: str) -> None:
    """Save into a staging folder, fingerprint last, then swap it in (`hfkd.io.staged`: a kill leaves
    the previous cache or the new one, never none)."""
    with staged(os.path.dirname(os.path.abspath(cache_dir))) as staging:
        tmp = os.path.join(staging, os.path.basename(os.path.abspath(cache_dir)))
        dataset.save_to_disk(tmp)
        with open(os.path.join(tmp, FINGERPRINT_NAME), "w", encoding="utf-8") as handle:
            json.dump(dict(fingerprint), handle, indent=2, sort_keys=True)


def check_cache_dir(cache_dir: str | os.PathLike) -> None:
    """Refuse to build over a folder that is not an hfkd cache: the build replaces the whole folder."""
    cache_dir = os.fspath(cache_dir)
    recover_cache(cache_dir)
    if not os.path.isdir(cache_dir) or not os.listdir(cache_dir) or _stored(cache_dir) is not None:
        return
    raise ValueError(f"teacher_cache_dir {cache_dir} holds files but no hfkd teacher cache ({FINGERPRINT_NAME} "
                     "written by hfkd), and building replaces the whole folder: choose a new or empty folder.")


def cache_exists(cache_dir: str | os.PathLike) -> bool:
    """Whether `cache_dir` holds a complete cache, after finishing a swap that a kill interrupted."""
    recover_cache(cache_dir)
    return os.path.isfile(os.path.join(os.fspath(cache_dir), FINGERPRINT_NAME))


def recover_cache(cache_dir: str | os.PathLike) -> None:
    """Finish (or drop, if unfinished) a cache write that a kill interrupted; see `hfkd.io.recover`."""
    recover(os.path.dirname(os.path.abspath(os.fspath(cache_dir))))


def _stored(cache_dir: str) -> dict[str, Any] | None:
    """The fingerprint hfkd wrote in `cache_dir`, or None when there is none (or it is not hfkd's)."""
    try:
        with open(os.path.join(cache_dir, FINGERPRINT_NAME), encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) and {"teacher_sha256", "hfkd_version"} <= set(stored) else None


_STALE_HINTS = {
    "temperature": "; a top-k cache holds log-probabilities at the distillation temperature",
    "top_k": "; teacher_cache_top_k must equal the cache's top_k",
}


def _short(value: Any) -> str:
    text = repr(value)
    return text[:15] + "…'" if isinstance(value, str) and len(value) > 16 else text
