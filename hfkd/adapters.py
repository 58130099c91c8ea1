"""PEFT adapters on either side of distillation.

Student: `DistillationTrainer(..., peft_config=LoraConfig(...))` wraps the student with
`peft.get_peft_model`, so only the adapter (and the modules PEFT keeps trainable, such as a
classification head with `task_type="SEQ_CLS"`) trains, next to hfkd's width projections. The
wrapped student still returns hidden states and attention maps, so every loss term works.
`save_model` writes the adapter (`adapter_config.json`, `adapter_model.safetensors`); a merged,
plain `AutoModelFor*` student comes from `merge_adapter_on_save=True` or
`DistillationTrainer.save_merged_student`.

Teacher: a folder holding `adapter_config.json` is an adapter on a base model; `load_pretrained`
loads the base, applies the adapter and merges it (`merge_and_unload`), so the teacher runs at
plain-model speed and no adapter code is left on its forward pass.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from torch import nn

ADAPTER_CONFIG_NAME = "adapter_config.json"


def is_peft_model(model: Any) -> bool:
    """Whether `model` is a `peft.PeftModel` (without importing peft when it is not installed)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (the model itself otherwise)."""
    return model.get_base_model() if is_peft_model(model) else model


def wrap_student(student: nn.Module, peft_config: Any) -> nn.Module:
    """`get_peft_model(student, peft_config)`: freezes the student, leaving the adapter trainable."""
    if peft_config is None:
        return student
    try:
        from peft import PeftConfig, get_peft_model
    except ImportError:
        raise ImportError("peft_config needs the peft package: pip install peft.") from None
    if not isinstance(peft_config, PeftConfig):
        raise TypeError(f"peft_config must be a peft.PeftConfig (e.g. LoraConfig), got {type(peft_config).__name__}.")
    if is_peft_model(student):
        raise ValueError(
            "the student already is a PeftModel and peft_config was given too: pass the plain model with "
            "peft_config, or the PeftModel without it."
        )
    return get_peft_model(student, peft_config)


def is_adapter_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG_NAME))


def adapter_base_path(path: str) -> str:
    """The base model an adapter folder was trained on (`base_model_name_or_path`)."""
    with open(os.path.join(path, ADAPTER_CONFIG_NAME), encoding="utf-8") as handle:
        base = json.load(handle).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{os.path.join(path, ADAPTER_CONFIG_NAME)} names no base_model_name_or_path: "
            "set it to the model the adapter was trained on."
        )
    return base


def load_pretrained(auto_class: Any, path: str, **kwargs: Any) -> nn.Module:
    """`auto_class.from_pretrained(path)`, or base + adapter merged when `path` is an adapter folder.

    `kwargs` go to the base model's `from_pretrained` (dtype, attn_implementation, num_labels...).
    """
    if not (os.path.isdir(path) and is_adapter_folder(path)):
        return auto_class.from_pretrained(path, **kwargs)
    from peft import PeftModel

    base = auto_class.from_pretrained(adapter_base_path(path), **kwargs)
    return PeftModel.from_pretrained(base, path).merge_and_unload()


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain transformers model with the adapter folded into its weights; `model` is left as is.

    Works on a copy (twice the student's memory for a moment) so training can go on with the adapter.
    """
    return copy.deepcopy(model).merge_and_unload()


def adapter_summary(model: nn.Module) -> str | None:
    """One line for the model card: adapter type and its main settings, or None without an adapter."""
    if not is_peft_model(model):
        return None
    config = model.peft_config[model.active_adapter]
    parts = [str(getattr(config, "peft_type", "adapter")).split(".")[-1]]
    for name in ("r", "lora_alpha", "target_modules"):
        value = getattr(config, name, None)
        if value is not None:
            parts.append(f"{name}={sorted(value) if isinstance(value, (set, list)) else value}")
    parameters = list(base_model(model).parameters())  # hfkd's projections sit outside: not counted
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    total = sum(p.numel() for p in parameters)
    return f"{' '.join(parts)}; {trainable:,} of {total:,} parameters trained"
