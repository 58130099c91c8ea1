"""Distillation in stages within one run (TinyBERT's intermediate-layer, then prediction-layer step).

A stage is a length (`max_steps` or `num_train_epochs`) and the loss weights (`alpha_*`) that
hold during it; weights a stage does not name keep the config's top-level values. Which stage is
active is a pure function of the optimizer step and the run's total steps, so a run resumed from
any checkpoint, on either side of a stage boundary, trains exactly as an uninterrupted one.

One optimizer and one learning-rate schedule span all stages (the total length is the sum of the
stages'): TinyBERT ran its two steps as separate fine-tunings, each with its own warm-up and decay;
run two hfkd jobs for that.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from hfkd.objective.terms import check_weights

LENGTH_KEYS = ("max_steps", "num_train_epochs")


def parse_stages(value: Any, base_weights: dict[str, float]) -> list[dict[str, float]]:
    """Validate `stages` (a list of dicts, or its JSON text) and fill each stage's weights.

    `base_weights` are the config's weights by key (`alpha_<term>` of every registered term).
    Returns one dict per stage holding its length key and every `alpha_*` key.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"stages={value!r} is not JSON: give a list of stage dicts.") from None
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(s, dict) for s in value):
        raise ValueError(
            f"stages must be a non-empty list of dicts like {{'num_train_epochs': 1, 'alpha_hidden': 1.0}}, "
            f"got {value!r}."
        )
    stages, units = [], set()
    for index, stage in enumerate(value, start=1):
        unknown = sorted(set(stage) - set(LENGTH_KEYS) - set(base_weights))
        if unknown:
            raise ValueError(
                f"stage {index} has unknown keys {unknown}; a stage takes one of {list(LENGTH_KEYS)} "
                f"and any of {list(base_weights)}."
            )
        lengths = [key for key in LENGTH_KEYS if key in stage]
        if len(lengths) != 1:
            raise ValueError(f"stage {index} needs exactly one of {list(LENGTH_KEYS)}, got {stage}.")
        unit = lengths[0]
        length = stage[unit]
        is_number = isinstance(length, (int, float)) and not isinstance(length, bool) and math.isfinite(length)
        if not is_number or length <= 0 or (unit == "max_steps" and not float(length).is_integer()):
            kind = "integer" if unit == "max_steps" else "number"
            raise ValueError(f"stage {index}: {unit} must be a positive {kind}, got {length!r}.")
        units.add(unit)
        weights = {key: stage.get(key, base_weights[key]) for key in base_weights}
        check_weights(weights, where=f"stage {index}: ")
        weights = {key: float(weight) for key, weight in weights.items()}
        stages.append({unit: int(length) if unit == "max_steps" else float(length), **weights})
    if len(units) > 1:
        raise ValueError("stages mix max_steps and num_train_epochs; give every stage's length in one unit.")
    return stages


def stage_unit(stages: Sequence[dict[str, float]]) -> str:
    """'max_steps' or 'num_train_epochs': the unit all stage lengths are given in."""
    return next(key for key in LENGTH_KEYS if key in stages[0])


def total_length(stages: Sequence[dict[str, float]]) -> float:
    unit = stage_unit(stages)
    return sum(stage[unit] for stage in stages)


def stage_boundaries(stages: Sequence[dict[str, float]], total_steps: int) -> list[int]:
    """Optimizer step at which each stage ends: its share of the run's `total_steps`, cumulated."""
    unit, total = stage_unit(stages), total_length(stages)
    ends, elapsed = [], 0.0
    for stage in stages:
        elapsed += stage[unit]
        ends.append(round(total_steps * elapsed / total))
    return ends


def stage_index(stages: Sequence[dict[str, float]], step: int, total_steps: int) -> int:
    """0-based stage that optimizer step `step` (0 = the first update) belongs to."""
    for index, end in enumerate(stage_boundaries(stages, total_steps)):
        if step < end:
            return index
    return len(stages) - 1


def stage_weights(weights: dict[str, float]) -> dict[str, float]:
    """`alpha_<term>` keys of a stage (or of the config's weights) -> weights by term name."""
    return {key.removeprefix("alpha_"): value for key, value in weights.items() if key.startswith("alpha_")}


def loss_weights_at(
    base_weights: dict[str, float], stages: Sequence[dict[str, float]] | None, step: int, total_steps: int
) -> dict[str, float]:
    """Weight of each loss term (by term name: 'ce', 'kd', ...) at optimizer step `step`."""
    return stage_weights(stages[stage_index(stages, step, total_steps)] if stages else base_weights)
