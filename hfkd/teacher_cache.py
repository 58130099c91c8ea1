"""Teacher-output cache: run the teacher once, train many epochs (or students) from its stored logits.

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
  large: the build refuses when the estimate exceeds the free disk space.
Several teachers (a list) store their logits side by side in teacher order, `[K * classes]` or
`[length, K * classes]`; the trainer splits and combines them every step (`hfkd.multi_teacher`).
Top-k caches (values, indices and the remaining mass, for LM vocabularies) are not implemented.

`fingerprint.json` records what the logits depend on: a sha256 of the teacher's weights (in the dtype
it runs in; a list of them, in order, for several teachers), the dataset's `_fingerprint` (which `datasets` derives from the files and every
map/select applied, tokenization included), top-k, the hfkd version and any `fingerprint_extra` (the
recipes add the tokenizer's vocabulary hash, `max_seq_length` and `block_size`). `load_teacher_cache`
refuses a cache whose fingerprint differs from the expected one. Inputs that change every epoch (random MLM
masking, augmentation in the collator or in an on-the-fly transform) cannot be cached and are refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch
from torch import nn
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from hfkd import __version__
from hfkd.validation import forward_arg_names, task_of

logger = logging.getLogger(__name__)

TEACHER_LOGITS = "teacher_logits"
CACHE_COLUMNS = (TEACHER_LOGITS,)
FINGERPRINT_NAME = "fingerprint.json"
REBUILD_HINT = "rebuild it with `hfkd cache-teacher --config C.yaml` (or hfkd.teacher_cache.build_teacher_cache)"
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
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a cache of `teacher` (or a list of teachers) over `dataset` depends on; see `load_teacher_cache`."""
    teachers = _as_list(teacher)
    hashes = [state_dict_sha256(t) for t in teachers]
    fingerprint = {
        "teacher_sha256": hashes[0] if len(hashes) == 1 else hashes,
        "dataset_fingerprint": dataset._fingerprint,
        "top_k": top_k,
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
    fingerprint_extra: Mapping[str, Any] | None = None,
) -> datasets.Dataset:
    """Run `teacher` once over `dataset` and save the dataset plus a `teacher_logits` column in `cache_dir`.

    Batches are formed in order of length (less padding) with the collator training uses; rows keep
    the input order. The teacher runs in eval mode under `torch.inference_mode()` on its own device
    and dtype (cast it to `teacher_dtype` first if training uses one). The cache is written to a
    temporary folder and renamed into place, so an interrupted build leaves no cache to trust.
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
    _check_cacheable(task, dataset, top_k)
    # Only what a teacher or the collator's labels use: text columns would trip padding collators.
    accepted = frozenset().union(*(forward_arg_names(t) for t in teachers))
    columns = [c for c in dataset.column_names if c in accepted or c in _LABEL_COLUMNS]
    inputs = dataset.select_columns(columns)
    _check_deterministic(inputs, data_collator)
    fingerprint = teacher_cache_fingerprint(teachers, dataset, top_k=top_k, extra=fingerprint_extra)
    lengths = [len(ids) for ids in inputs["input_ids"]] if "input_ids" in columns else [1] * len(inputs)
    if task in _POSITION_TASKS:
        _check_disk_space(cache_dir, sum(lengths) * _output_classes(teachers[0], task) * len(teachers) * 4)
    started = time.perf_counter()
    per_teacher = [
        _run_teacher(t, inputs, data_collator, lengths, batch_size, per_position=task in _POSITION_TASKS)
        for t in teachers
    ]
    logits = [np.concatenate(rows, axis=-1) for rows in zip(*per_teacher)] if len(teachers) > 1 else per_teacher[0]
    cached = dataset.add_column(TEACHER_LOGITS, _arrow_rows(logits), feature=_logits_feature(task))
    logger.info("Teacher cache: %d rows in %.1f s", len(cached), time.perf_counter() - started)
    _save_atomically(cached, fingerprint, os.fspath(cache_dir))
    return datasets.load_from_disk(os.fspath(cache_dir))


def load_teacher_cache(cache_dir: str | os.PathLike, expected_fingerprint: Mapping[str, Any]) -> datasets.Dataset:
    """The cached dataset, if its fingerprint equals `expected_fingerprint` (see `teacher_cache_fingerprint`)."""
    path = os.path.join(os.fspath(cache_dir), FINGERPRINT_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no teacher cache in {cache_dir} (no {FINGERPRINT_NAME}): {REBUILD_HINT}.")
    with open(path, encoding="utf-8") as handle:
        stored = json.load(handle)
    differing = [key for key in sorted(set(stored) | set(expected_fingerprint))
                 if stored.get(key) != expected_fingerprint.get(key)]
    if differing:
        key, verb = differing[0], "differs" if len(differing) == 1 else "differ"
        raise ValueError(
            f"stale teacher cache in {cache_dir}: {', '.join(differing)} {verb} ({key}: cache "
            f"{_short(stored.get(key))}, expected {_short(expected_fingerprint.get(key))}); {REBUILD_HINT}."
        )
    return datasets.load_from_disk(os.fspath(cache_dir))


def has_teacher_cache(dataset: Any) -> bool:
    """Whether a dataset carries cached teacher logits (a `build_teacher_cache` result)."""
    return TEACHER_LOGITS in (getattr(dataset, "column_names", None) or ())


# ---------------------------------------------------------------- collation


class TeacherCacheCollator:
    """Collate the cached teacher columns here and everything else with the wrapped collator.

    Padding collators (`DataCollatorWithPadding`, ...) only know token fields and fail on, or
    mangle, per-row logits. Per-position logits are zero-padded to the batch's sequence length on
    the tokenizer's padding side; the padded positions are masked out of the KD term.
    """

    def __init__(self, data_collator: Callable[[list[dict[str, Any]]], Mapping[str, Any]]) -> None:
        self.data_collator = data_collator
        tokenizer = getattr(data_collator, "tokenizer", None)
        self.padding_side = getattr(tokenizer, "padding_side", "right")

    def __call__(self, features: list[dict[str, Any]]) -> Mapping[str, Any]:
        cached = {name: [f[name] for f in features] for name in CACHE_COLUMNS if name in features[0]}
        batch = self.data_collator([{k: v for k, v in f.items() if k not in cached} for f in features])
        for name, rows in cached.items():
            tensors = [torch.as_tensor(row, dtype=torch.float32) for row in rows]
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


def _check_cacheable(task: str | None, dataset: Any, top_k: int | None) -> None:
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"the teacher cache needs a map-style datasets.Dataset, got {type(dataset).__name__}.")
    if len(dataset) == 0:
        raise ValueError("the dataset to cache is empty: pass the tokenized train split.")
    if has_teacher_cache(dataset):
        raise ValueError(f"the dataset already has a {TEACHER_LOGITS} column: pass the tokenized data without it.")
    if top_k is not None:
        raise NotImplementedError(
            "top-k teacher caches are not implemented yet: cache full logits (top_k=None) or train online."
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


def _output_classes(teacher: nn.Module, task: str) -> int:
    return teacher.config.vocab_size if task == "causal_lm" else teacher.config.num_labels


def _logits_feature(task: str | None) -> datasets.List:
    row = datasets.List(datasets.Value("float32"))
    return row if task in _SEQUENCE_TASKS else datasets.List(row)


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
    flat = pa.array(np.concatenate([row.reshape(-1) for row in rows]), type=pa.float32())
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
) -> list[np.ndarray]:
    """Teacher logits per row, in row order, from length-sorted batches."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    accepted = forward_arg_names(teacher)
    device = next(teacher.parameters()).device
    padding_side = getattr(getattr(data_collator, "tokenizer", None), "padding_side", "right")
    results: list[np.ndarray | None] = [None] * len(inputs)
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = [int(i) for i in order[start : start + batch_size]]
                columns = inputs[rows]
                batch = data_collator([dict(zip(columns, values)) for values in zip(*columns.values())])
                feed = {k: v.to(device) for k, v in batch.items() if k in accepted and k not in _LABEL_COLUMNS}
                logits = teacher(**feed).logits.float().cpu().numpy()
                for j, row in enumerate(rows):
                    if not per_position:
                        results[row] = logits[j]
                    elif padding_side == "left":
                        results[row] = logits[j, logits.shape[1] - lengths[row]:]
                    else:
                        results[row] = logits[j, : lengths[row]]
    finally:
        teacher.train(was_training)
    return results


def _check_disk_space(cache_dir: str | os.PathLike, needed: int) -> None:
    parent = os.path.dirname(os.path.abspath(os.fspath(cache_dir))) or "."
    os.makedirs(parent, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if needed > free:
        raise ValueError(
            f"a teacher cache in {cache_dir} needs about {needed / 2**30:.1f} GiB of logits but only "
            f"{free / 2**30:.1f} GiB are free: free space, cache fewer rows (max_train_samples) or train online."
        )


def _save_atomically(dataset: datasets.Dataset, fingerprint: Mapping[str, Any], cache_dir: str) -> None:
    """Save to a sibling temp folder, write the fingerprint last, then swap it into place."""
    parent = os.path.dirname(os.path.abspath(cache_dir))
    os.makedirs(parent, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = os.path.join(parent, f".{os.path.basename(cache_dir)}.tmp-{tag}")
    old = os.path.join(parent, f".{os.path.basename(cache_dir)}.old-{tag}")
    try:
        dataset.save_to_disk(tmp)
        with open(os.path.join(tmp, FINGERPRINT_NAME), "w", encoding="utf-8") as handle:
            json.dump(dict(fingerprint), handle, indent=2, sort_keys=True)
        if os.path.exists(cache_dir):
            os.replace(cache_dir, old)
        os.replace(tmp, cache_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _short(value: Any) -> str:
    text = repr(value)
    return text[:15] + "…'" if isinstance(value, str) and len(value) > 16 else text
