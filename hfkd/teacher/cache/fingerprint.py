"""What a teacher cache depends on: the teacher's weights, the tokenized rows, the settings.

`teacher_cache_fingerprint` is stored in the cache's manifest and in every shard; a reader or a
resumed build compares it with the one it expects (`hfkd.teacher.cache.shards`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from hfkd import __version__

SHARDS_KEY = "shards"  # the manifest's list of shards, next to the fingerprint fields

def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor in the model's state_dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def rows_sha256(dataset: datasets.Dataset, batch_rows: int = 16384) -> str:
    """sha256 over the dataset's column names, types and values, in row order.

    The same rows hash the same however they were produced. `datasets`' own `_fingerprint` hashes
    the transforms instead, and with them everything a tokenize function closes over (an evaluation
    setting, a flag of the run), so a cache keyed on it went stale when nothing it holds had changed.
    """
    names = sorted(dataset.column_names)
    digest = hashlib.sha256(json.dumps([[name, str(dataset.features[name])] for name in names]).encode())
    for table in dataset.with_format("arrow").iter(batch_size=batch_rows):
        for name in names:
            _hash_array(digest, table.column(name).combine_chunks())
    return digest.hexdigest()


def _hash_array(digest: Any, array: pa.Array) -> None:
    """Values of one column batch: list lengths then their flattened values; nulls as a mask."""
    if array.null_count:
        digest.update(np.asarray(array.is_null()).tobytes())
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or pa.types.is_fixed_size_list(array.type):
        digest.update(np.asarray(pc.list_value_length(array).fill_null(0), dtype=np.int64).tobytes())
        _hash_array(digest, array.flatten())
    elif pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_boolean(array.type):
        digest.update(np.asarray(array.fill_null(0) if array.null_count else array).tobytes())
    else:  # strings and anything else: their Python values
        digest.update(json.dumps(array.to_pylist(), default=str).encode())


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
    teachers = as_teacher_list(teacher)
    hashes = [state_dict_sha256(t) for t in teachers]
    fingerprint = {
        "teacher_sha256": hashes[0] if len(hashes) == 1 else hashes,
        "rows_sha256": rows_sha256(dataset),
        "top_k": top_k,
        "temperature": float(temperature) if top_k is not None else None,
        "hfkd_version": __version__,
    }
    clashing = sorted((set(fingerprint) | {SHARDS_KEY}) & set(extra or {}))
    if clashing:
        raise ValueError(f"fingerprint_extra may not override {clashing}: give those fields other names.")
    return {**fingerprint, **dict(extra or {})}


def as_teacher_list(teacher: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    """One teacher or several, as a non-empty list."""
    teachers = [teacher] if isinstance(teacher, nn.Module) else list(teacher)
    if not teachers:
        raise ValueError("no teacher given: pass a model or a non-empty list of models.")
    return teachers


def fingerprint_digest(fingerprint: Mapping[str, Any]) -> str:
    """A short stable hash of a fingerprint: it names the shards of one build."""
    return hashlib.sha256(json.dumps(dict(fingerprint), sort_keys=True).encode()).hexdigest()[:16]
