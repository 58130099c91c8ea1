"""Quantization-aware distillation: the student trains the last part of the run fake-quantised int8.

`QuantizationAwareTraining` (added by `DistillationTrainer` when `qat_start` is set) switches the
student's linear layers to `hfkd.student.quantization.fake_quantize` once `qat_start` of the run's
optimizer steps are done, so the student learns against the teacher with the rounding that dynamic
int8 deployment (`qat_scheme`: ONNX Runtime's or PyTorch's) will apply. The learned width projections
(`hfkd_projections`, not deployed) stay fp32. Nothing is stored: checkpoints and the saved student
are plain fp32 weights; a resumed run switches it on again from its step count.
"""

from __future__ import annotations

import math

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hfkd.objective.projections import PROJECTIONS_ATTR
from hfkd.student.quantization import fake_quantize, int8_scheme

__all__ = ["QuantizationAwareTraining"]


class QuantizationAwareTraining(TrainerCallback):
    """Fake-quantise the student from `start` (a fraction of the run's optimizer steps) to the end of
    training; evaluations in that part see the int8 student. fp32 again after training, so the saved
    model and any later evaluation are the plain fp32 weights that export quantises."""

    def __init__(self, start: float, scheme: str = "onnxruntime") -> None:
        self.start = start
        self.scheme = int8_scheme(scheme)
        self.start_step: int | None = None
        self.active = False

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.start_step = math.floor(self.start * state.max_steps)
        self.active = False
        self._update(state, kwargs["model"])

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._update(state, kwargs["model"])

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        fake_quantize(kwargs["model"], None, skip=(PROJECTIONS_ATTR,))
        self.active = False

    def _update(self, state: TrainerState, model: nn.Module) -> None:
        """Switch on once `global_step` reaches the start (also when resuming past it)."""
        if not self.active and state.global_step >= self.start_step:
            fake_quantize(model, self.scheme, skip=(PROJECTIONS_ATTR,))
            self.active = True
