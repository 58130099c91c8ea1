"""Named presets that set a published recipe's distillation settings (`preset: tinybert`).

Whatever the user sets explicitly wins over the preset:
- recipes and the `hfkd` command (YAML keys and flags) know which keys were given, so exactly
  those win, whatever their value;
- `DistillationConfig.from_preset(name, **kwargs)` lets every keyword win the same way;
- `DistillationConfig(preset=name, ...)` fills only the fields still at their dataclass default: a
  dataclass cannot tell "left at default" from "set to the default value", so there a field set to
  its default value (e.g. `alpha_hidden=0.0`) is taken by the preset; use `from_preset` for that.
Presets set the distillation objective only; optimisation settings (learning rate, batch size)
and how to build the student are in each preset's `student` and `notes`, because they depend on
the model sizes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    paper: str
    settings: dict[str, Any]
    student: str
    notes: str


def _load_presets() -> dict[str, Preset]:
    """The presets are data: `presets.yaml` beside this module (paper, settings, student, notes)."""
    text = resources.files("hfkd.objective").joinpath("presets.yaml").read_text(encoding="utf-8")
    return {name: Preset(**entry) for name, entry in yaml.safe_load(text).items()}


PRESETS: dict[str, Preset] = _load_presets()


def preset_settings(name: str) -> dict[str, Any]:
    """A fresh copy of the settings of preset `name` (config field -> value)."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not known; choose one of {sorted(PRESETS)}.")
    return copy.deepcopy(PRESETS[name].settings)


def with_preset(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The one rule of every entry point (constructor, `from_preset`, YAML + flags): preset `name`'s
    settings, overridden by whatever the user gave."""
    return {**preset_settings(name), **given}


def apply_preset(config: Any, name: str) -> list[str]:
    """Set preset `name` on a constructed config, where "given" means a field not at its default;
    return the names the preset set."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    settings = preset_settings(name)
    given = {key: getattr(config, key) for key in settings if getattr(config, key) != defaults[key]}
    for key, value in with_preset(name, given).items():
        setattr(config, key, value)
    applied = sorted(set(settings) - set(given))
    logger.info("preset %s set %s%s", name, applied, f"; kept your {sorted(given)}" if given else "")
    return applied
