"""Reading a teacher cache: the memory-mapped dataset of its shards, and collating its columns.

`load_teacher_cache` checks the manifest against the fingerprint the caller expects and every shard
against the manifest, then concatenates the shards' Arrow files without reading them: a cache larger
than memory trains with memory independent of its size, and under DDP the Trainer's sampler gives
each process its own rows of it, as with any dataset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets
import torch

from hfkd.objective.losses import require_topk_loss
from hfkd.teacher.cache.fingerprint import SHARDS_KEY
from hfkd.teacher.cache.shards import FINGERPRINT_NAME, REBUILD_HINT, read_manifest, shard_paths, stored_fingerprint

TEACHER_LOGITS = "teacher_logits"
TEACHER_TOPK_LOGPROBS = "teacher_topk_logprobs"
TEACHER_TOPK_INDICES = "teacher_topk_indices"
CACHE_COLUMNS = (TEACHER_LOGITS, TEACHER_TOPK_LOGPROBS, TEACHER_TOPK_INDICES)
OUTPUT_DTYPE = torch.float32  # what logits and log-probabilities are stored and collated in (top-k ids: int32)


def load_teacher_cache(cache_dir: str | os.PathLike, expected_fingerprint: Mapping[str, Any]) -> datasets.Dataset:
    """The cached dataset, memory-mapped from its shards, if its fingerprint equals `expected_fingerprint`.

    `expected_fingerprint` is `teacher_cache_fingerprint(...)` (or the stored manifest itself). Nothing is
    read into memory: rows are paged in from the Arrow files as training reads them.
    """
    stored = read_manifest(cache_dir)
    if stored is None:
        raise FileNotFoundError(f"no teacher cache in {cache_dir} (no {FINGERPRINT_NAME}): {REBUILD_HINT}.")
    expected = {k: v for k, v in json.loads(json.dumps(dict(expected_fingerprint))).items() if k != SHARDS_KEY}
    fingerprint = {k: v for k, v in stored.items() if k != SHARDS_KEY}
    differing = [key for key in sorted(set(fingerprint) | set(expected)) if fingerprint.get(key) != expected.get(key)]
    if differing:
        key, verb = differing[0], "differs" if len(differing) == 1 else "differ"
        why = "".join(_STALE_HINTS.get(k, "") for k in differing)
        raise ValueError(
            f"stale teacher cache in {cache_dir}: {', '.join(differing)} {verb} ({key}: cache "
            f"{_short(fingerprint.get(key))}, expected {_short(expected.get(key))}){why}; {REBUILD_HINT}."
        )
    shards = [datasets.load_from_disk(path) for path in shard_paths(cache_dir, stored)]
    return shards[0] if len(shards) == 1 else datasets.concatenate_datasets(shards)


def has_teacher_cache(dataset: Any) -> bool:
    """Whether a dataset carries cached teacher outputs (a `build_teacher_cache` result)."""
    return any(name in (getattr(dataset, "column_names", None) or ()) for name in CACHE_COLUMNS)


def check_cache_fits(dataset: Any, kd_loss: str, temperature: float) -> None:
    """Refuse a top-k cache that the KD term cannot use: another temperature, or a loss needing all logits.

    The temperature comes from the `shard.json` beside the dataset's Arrow files, when it is
    still there (a dataset mapped since then lives elsewhere: `load_teacher_cache` checked it then).
    """
    if TEACHER_TOPK_LOGPROBS not in (getattr(dataset, "column_names", None) or ()):
        return
    require_topk_loss(kd_loss, "a full cache (teacher_cache_top_k unset)")
    stored = stored_fingerprint(dataset)
    if stored is not None and stored.get("temperature") != float(temperature):
        raise ValueError(
            f"the top-k teacher cache holds log-probabilities at temperature {stored.get('temperature')} but "
            f"temperature is {temperature}: train at that temperature or {REBUILD_HINT}."
        )


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
            dtype = torch.long if name == TEACHER_TOPK_INDICES else OUTPUT_DTYPE
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



_STALE_HINTS = {
    "rows_sha256": "; other training rows (another subsample, transfer set, tokenizer or max_seq_length)",
    "temperature": "; a top-k cache holds log-probabilities at the distillation temperature",
    "top_k": "; teacher_cache_top_k must equal the cache's top_k",
}


def _short(value: Any) -> str:
    text = repr(value)
    return text[:15] + "…'" if isinstance(value, str) and len(value) > 16 else text
