"""Temperature and loss-weight schedules over the optimizer steps.

`DistillationConfig` describes them: `temperature_schedule` goes from `temperature` to
`temperature_end`, and `loss_weight_schedule` takes every `alpha_*` weight from its value to its
entry in `loss_weights_end` (weights not listed stay constant). With `s` optimizer steps done out
of `S = max_steps` and progress `p = s / S`, the value used for the next step is

    constant: start
    linear:   start + (end - start) · p
    cosine:   end + (start - end) · (1 + cos(π · p)) / 2

so the first step uses `start` and the values approach `end` as training ends. Being a pure
function of `global_step`, a schedule resumes exactly from a checkpoint. `DistillationSchedule` is
the `TrainerCallback` that sets the values at the start of each optimizer step; `DistillationTrainer`
adds it, reads its `current` values in `compute_loss` and logs the scheduled ones (`temperature`,
`alpha_kd`, ...) with the loss terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from transformers import TrainerCallback

from hfkd.objective.terms import check_weights

SCHEDULES: dict[str, Callable[[float, float, float], float]] = {
    "constant": lambda start, end, progress: start,
    "linear": lambda start, end, progress: start + (end - start) * progress,
    "cosine": lambda start, end, progress: end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2.0,
}


def schedule_value(kind: str, start: float, end: float, progress: float) -> float:
    """The scheduled value at `progress` in [0, 1] (clamped)."""
    return SCHEDULES[kind](start, end, min(max(progress, 0.0), 1.0))


def check_schedule_settings(args: Any) -> None:
    """Config-time checks of the schedule fields of a `DistillationConfig` (raise ValueError)."""
    for field_name in ("temperature_schedule", "loss_weight_schedule"):
        kind = getattr(args, field_name)
        if kind not in SCHEDULES:
            raise ValueError(f"{field_name}={kind!r} is not supported; choose one of {list(SCHEDULES)}.")
    _check_end_given(args, "temperature_schedule", "temperature_end", "")
    _check_end_given(args, "loss_weight_schedule", "loss_weights_end", ' (e.g. {"alpha_kd": 0.2, "alpha_ce": 0.8})')
    end = args.temperature_end
    if end is not None and not (isinstance(end, (int, float)) and math.isfinite(end) and end > 0):
        raise ValueError(f"temperature_end must be a finite number > 0, got {end!r}.")
    ends = args.loss_weights_end
    if ends is None:
        return
    base = args.base_loss_weights
    if not isinstance(ends, Mapping) or not ends or set(ends) - set(base):
        raise ValueError(f"loss_weights_end must map some of {list(base)} to end values, got {ends!r}.")
    check_weights(ends, where="loss_weights_end: ", allow_all_zero=True)
    for name, value in ends.items():
        if base[name] == 0 and value > 0:
            raise ValueError(
                f"{name}=0 switches that term off, so loss_weights_end[{name!r}]={value} cannot bring it in: "
                f"start {name} at a small value > 0 instead."
            )
    if all(ends.get(name, base[name]) == 0 for name in base):
        raise ValueError("loss_weights_end takes every loss weight to 0: keep at least one > 0 at the end.")


def _check_end_given(args: Any, kind_field: str, end_field: str, example: str) -> None:
    """A linear/cosine schedule needs its end value; a constant one takes none."""
    kind, end = getattr(args, kind_field), getattr(args, end_field)
    if (end is None) != (kind == "constant"):
        raise ValueError(
            f"{kind_field}={kind!r} with {end_field}={end!r}: a linear or cosine schedule needs {end_field}"
            f"{example}, a constant one takes none."
        )


class DistillationSchedule(TrainerCallback):
    """Sets the KD temperature and the loss weights of the coming optimizer step from `global_step`."""

    def __init__(self, args: Any) -> None:
        ends = dict(args.loss_weights_end or {})
        self.plans: dict[str, tuple[str, float, float]] = {
            "temperature": (args.temperature_schedule, args.temperature, args.temperature_end or args.temperature)
        }
        for name, start in args.base_loss_weights.items():
            self.plans[name] = (args.loss_weight_schedule, start, ends.get(name, start))
        self.current: dict[str, float] = self.values_at(0.0)

    @property
    def scheduled(self) -> list[str]:
        """Names of the values that change during training (the ones worth logging)."""
        return [name for name, (kind, start, end) in self.plans.items() if kind != "constant" and start != end]

    def values_at(self, progress: float) -> dict[str, float]:
        return {name: schedule_value(kind, start, end, progress) for name, (kind, start, end) in self.plans.items()}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._update(state)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._update(state)

    def _update(self, state: Any) -> None:
        self.current = self.values_at(state.global_step / max(state.max_steps, 1))

    def describe(self) -> str | None:
        """Model-card line, or None when nothing is scheduled."""
        parts = [f"{name} {self.plans[name][0]} {self.plans[name][1]:g}→{self.plans[name][2]:g}" for name in self.scheduled]
        return ", ".join(parts) or None
