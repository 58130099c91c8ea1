"""Building a teacher cache: the teacher runs once over the tokenized rows, shard by shard.

Rows in, cache out: `build_teacher_cache` takes the tokenized train rows (any `datasets.Dataset`)
and writes the shards `hfkd.teacher.cache.shards` describes. Under `accelerate launch` (a process
group) each process runs its own teacher on its share of the missing shards and the main process
writes the manifest when all are complete; the shards, hence the cache, are the same whatever the
number of processes. One shard's outputs are in memory at a time.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DataCollatorForLanguageModeling

from hfkd.models import forward_arg_names, task_of
from hfkd.teacher.cache.fingerprint import as_teacher_list, teacher_cache_fingerprint
from hfkd.teacher.cache.read import (
    OUTPUT_DTYPE,
    TEACHER_LOGITS,
    TEACHER_TOPK_INDICES,
    TEACHER_TOPK_LOGPROBS,
    has_teacher_cache,
    load_teacher_cache,
)
from hfkd.teacher.cache.shards import (
    CacheLayout,
    barrier,
    check_cache_dir,
    check_same_build,
    check_disk_space,
    plan_shards,
    processes,
)

logger = logging.getLogger(__name__)

SHARD_ROWS = 4096
SHARD_BYTES = 256 * 2**20
_SEQUENCE_TASKS = ("sequence_classification",)
_POSITION_TASKS = ("token_classification", "causal_lm")
_LABEL_COLUMNS = ("labels", "label", "label_ids")


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
    shard_rows: int = SHARD_ROWS,
    shard_bytes: int = SHARD_BYTES,
) -> datasets.Dataset:
    """Run `teacher` once over `dataset` and save the dataset plus its outputs in `cache_dir`, shard by shard.

    The outputs are a `teacher_logits` column, or with `top_k` the top-k log-probabilities at
    `temperature` (the training temperature) and their ids (see `hfkd.teacher.cache`). Shards are
    contiguous rows, at most `shard_rows` rows and `shard_bytes` of outputs each.

    Within a shard, batches are formed in order of length (less padding) with the collator training
    uses; rows keep the input order. The teacher runs in eval mode under `torch.inference_mode()` on
    its own device and dtype (cast it to `teacher_dtype` first if training uses one). A killed build
    resumes with the same call; the previous cache serves until the new one is complete.
    `cache_dir` must be new, empty or an hfkd cache (`check_cache_dir`). Returns the saved dataset
    (memory-mapped from `cache_dir`). A list of teachers (same task head and classes) stores their
    logits side by side, in list order.
    """
    if batch_size <= 0 or shard_rows <= 0 or shard_bytes <= 0:
        raise ValueError(f"batch_size, shard_rows and shard_bytes must be > 0, got {batch_size}, {shard_rows}, "
                         f"{shard_bytes}.")
    teachers = as_teacher_list(teacher)
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
    inputs = dataset.select_columns([c for c in dataset.column_names if c in accepted or c in _LABEL_COLUMNS])
    _check_deterministic(inputs, data_collator)
    fingerprint = teacher_cache_fingerprint(
        teachers, dataset, top_k=top_k, temperature=temperature, extra=fingerprint_extra)
    per_position = task in _POSITION_TASKS
    lengths = _row_lengths(inputs)
    item_bytes = _item_bytes(_output_classes(teachers[0], task) * len(teachers), top_k)
    row_bytes = (lengths if per_position else np.ones_like(lengths)) * item_bytes
    layout = CacheLayout(cache_dir, fingerprint, plan_shards(row_bytes, shard_rows, shard_bytes))
    check_same_build(layout)
    if layout.complete():
        if processes()[0] == 0:
            layout.drop_unused()  # left by a kill between writing the manifest and cleaning up
        logger.info("Teacher cache in %s is complete for this teacher, data and settings: nothing to build.",
                    layout.cache_dir)
    else:
        outputs = _logit_outputs if top_k is None else partial(_top_k_outputs, top_k=top_k, temperature=temperature)
        run = partial(_run_teacher, data_collator=data_collator, batch_size=batch_size, per_position=per_position,
                      outputs=outputs)

        def shard(start: int, stop: int) -> datasets.Dataset:
            per_teacher = [run(t, inputs.select(range(start, stop)), lengths=lengths[start:stop]) for t in teachers]
            return _with_outputs(dataset.select(range(start, stop)), per_teacher)

        _write_missing_shards(layout, shard, row_bytes, dataset, top_k, temperature)
    return load_teacher_cache(cache_dir, fingerprint)


def _write_missing_shards(layout: CacheLayout, shard: Callable[[int, int], datasets.Dataset], row_bytes: np.ndarray,
                          dataset: datasets.Dataset, top_k: int | None, temperature: float | None) -> None:
    """Each process writes its share of the missing shards; the main process then commits the manifest."""
    rank, world = processes()
    if rank == 0:
        layout.prepare()
    barrier()
    todo = layout.missing()
    _announce(layout, todo, row_bytes, dataset, top_k, temperature, log=rank == 0)
    barrier()  # every process has listed the missing shards before any is written
    started = time.perf_counter()
    for index in todo[rank::world]:
        layout.write(index, shard(*layout.bounds[index]))
    logger.info("Teacher cache: %d shard(s) written by process %d in %.1f s", len(todo[rank::world]), rank,
                time.perf_counter() - started)
    barrier()
    if rank == 0:
        layout.commit()
    barrier()


def _announce(layout: CacheLayout, todo: list[int], row_bytes: np.ndarray, dataset: datasets.Dataset,
              top_k: int | None, temperature: float | None, log: bool) -> None:
    """Log the projected size (outputs plus the rows' own columns) and refuse it beyond the free space."""
    input_bytes = dataset.data.nbytes / max(len(dataset.data), 1)
    shard_size = [row_bytes[a:b].sum() + (b - a) * input_bytes for a, b in layout.bounds]
    total, needed = sum(shard_size), sum(shard_size[i] for i in todo)
    if log:
        logger.info("Teacher cache: %d rows in %d shard(s) (%d to write), about %.3f GiB of %s "
                    "(%.3f GiB to write) -> %s",
                    len(dataset), len(layout.bounds), len(todo), total / 2**30,
                    "logits" if top_k is None else f"top-{top_k} log-probabilities (T={temperature})",
                    needed / 2**30, layout.cache_dir)
    check_disk_space(layout.cache_dir, int(needed))


def _row_lengths(inputs: datasets.Dataset) -> np.ndarray:
    """Tokens per row, read column-wise from Arrow (no Python list per row)."""
    if "input_ids" not in inputs.column_names:
        return np.ones(len(inputs), dtype=np.int64)
    ids = inputs.select_columns(["input_ids"]).with_format("arrow")
    parts = [pc.list_value_length(batch["input_ids"]).to_numpy(zero_copy_only=False)
             for batch in ids.iter(batch_size=65536)]
    return np.concatenate(parts).astype(np.int64)


def _item_bytes(classes: int, top_k: int | None) -> int:
    """Bytes stored per item (a row, or a position of it): all logits, or k+1 log-probs and k int32 ids."""
    itemsize = torch.empty((), dtype=OUTPUT_DTYPE).element_size()
    return classes * itemsize if top_k is None else (top_k + 1) * itemsize + top_k * 4


def _with_outputs(rows: datasets.Dataset, per_teacher: list[dict[str, list[np.ndarray]]]) -> datasets.Dataset:
    """`rows` plus one column per output, several teachers' logits side by side."""
    per_column = {name: [np.concatenate(values, axis=-1) for values in zip(*(p[name] for p in per_teacher))]
                  for name in per_teacher[0]} if len(per_teacher) > 1 else per_teacher[0]
    for name, values in per_column.items():
        rows = rows.add_column(name, _arrow_rows(values), feature=_feature(values[0]))
    return rows


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
    return {TEACHER_LOGITS: logits.to(OUTPUT_DTYPE)}


def _top_k_outputs(logits: torch.Tensor, top_k: int, temperature: float) -> dict[str, torch.Tensor]:
    """Top-k log-probabilities at T plus the log of the rest (a logsumexp over the others), and their ids."""
    log_probs = F.log_softmax(logits.to(OUTPUT_DTYPE) / temperature, dim=-1)
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
