"""Which checkpoint a run may resume from: never one that a kill left half-written.

`Trainer` writes `trainer_state.json` last (and not atomically), so a checkpoint folder without a
parseable one, or without weights, was interrupted while saving. A weights file cut short (a copy
or sync that stopped, a disk that filled) is caught too: every `.safetensors` file of the folder and
of its peers' folders (mutual learning) must be as long as its header says, and every torch
`.bin`/`.pt`/`.pth` file must be a whole zip archive. Both hfkd trainers resolve
`resume_from_checkpoint` through `checked_resume_checkpoint` before handing it to `Trainer.train`.
"""

from __future__ import annotations

import json
import os
import re
import zipfile

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def checked_resume_checkpoint(output_dir: str, resume: str | bool | None) -> str | bool | None:
    """`resume_from_checkpoint` for `Trainer.train`: True becomes the newest complete checkpoint in
    output_dir; an explicit path must be complete, else a one-line error names the last complete one."""
    if resume is True:
        return last_complete_checkpoint(output_dir)
    if isinstance(resume, str):
        problem = checkpoint_problem(resume)
        if problem:
            fallback = last_complete_checkpoint(os.path.dirname(os.path.normpath(resume)), required=False)
            hint = f"resume from {fallback}" if fallback else "start a new run"
            raise ValueError(f"checkpoint {resume} {problem}; {hint}.")
    return resume


def checkpoint_problem(path: str) -> str | None:
    """Why a checkpoint folder cannot be trusted, or None. Trainer writes trainer_state.json last."""
    if not os.path.isdir(path):
        return "does not exist"
    names = set(os.listdir(path))
    if TRAINER_STATE_NAME not in names:
        return f"is incomplete (no {TRAINER_STATE_NAME}: the run was probably killed while saving it)"
    try:  # written last, and not atomically: a kill mid-write leaves it truncated
        with open(os.path.join(path, TRAINER_STATE_NAME), encoding="utf-8") as handle:
            int(json.load(handle)["global_step"])
    except (ValueError, KeyError, TypeError):
        return f"is incomplete ({TRAINER_STATE_NAME} is truncated or invalid: the run was killed while saving it)"
    # DeepSpeed ZeRO-3 without 16-bit gathering and sharded FSDP keep the weights in their own files.
    engine_weights = "latest" in names or any(n.startswith("pytorch_model_fsdp") for n in names)
    if not engine_weights and not any(n.endswith(".safetensors") or n.startswith("adapter_model") for n in names):
        return "holds no model weights"
    for file in _weight_files(path):
        if not _is_whole(file):
            return f"is incomplete ({os.path.relpath(file, path)} is truncated or corrupt)"
    return None


def _weight_files(path: str) -> list[str]:
    """The checkpoint's weight and state files, its peers' folders (`peer1/`, ...) included."""
    folders = [path] + [os.path.join(path, n) for n in sorted(os.listdir(path))
                        if re.fullmatch(r"peer\d+", n) and os.path.isdir(os.path.join(path, n))]
    return [os.path.join(folder, n) for folder in folders for n in sorted(os.listdir(folder))
            if n.endswith(_WEIGHT_SUFFIXES) and os.path.isfile(os.path.join(folder, n))]


def _is_whole(file: str) -> bool:
    """A safetensors file whose header parses and whose length is what it says; a whole torch zip."""
    if not file.endswith(".safetensors"):
        return zipfile.is_zipfile(file)
    try:
        with open(file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if 8 + size > os.path.getsize(file):
                return False
            header = json.loads(handle.read(size))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return False
    return os.path.getsize(file) == 8 + size + end


def last_complete_checkpoint(output_dir: str, required: bool = True) -> str | None:
    """Newest `checkpoint-N` in output_dir that is complete (see `checkpoint_problem`)."""
    folders = []
    if os.path.isdir(output_dir):
        folders = [n for n in os.listdir(output_dir) if re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", n)]
    for name in sorted(folders, key=lambda n: int(n.rsplit("-", 1)[1]), reverse=True):
        path = os.path.join(output_dir, name)
        if checkpoint_problem(path) is None:
            return path
    if required:
        raise ValueError(f"no complete checkpoint in {output_dir}; start without resume_from_checkpoint.")
    return None
