"""Several teachers: one KD target from the logits of all of them.

With teachers `i = 1..K`, logits `z_i` and weights `w_i` (`teacher_weights`, divided by their sum;
equal weights by default), the KD term compares the student with:

- `teacher_combination="prob_mean"` (default): the mixture `p = Σ_i w_i · softmax(z_i / T)` at the
  KD temperature `T`. It reaches the KD loss registry as the logits `T · log p`, whose
  `softmax(· / T)` is exactly `p`, so `kl`, `reverse_kl`, `jsd` and `ce` compare against the mixture
  with no loss code of their own. `kd_loss="mse"` compares raw logits, which a mixture does not
  have: it needs `logit_mean`.
- `teacher_combination="logit_mean"`: the logits `z = Σ_i w_i · z_i`, used like one teacher's logits
  (the loss applies the temperature as usual).

Every teacher is checked against the student (task head, vocabulary, label set). Hidden-state and
attention terms compare with the **first** teacher of the list only. A teacher-output cache stores
each teacher's logits side by side (`[..., K * classes]`, teacher order) and combines them at every
step exactly as online, so weights, combination and temperature (schedules included) may change
without rebuilding it; its fingerprint lists every teacher's weights hash.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

TEACHER_COMBINATIONS = ("prob_mean", "logit_mean")


def check_teacher_weights(weights: Sequence[float] | None, combination: str, kd_loss: str) -> None:
    """Config-time checks of `teacher_weights` and `teacher_combination` (raise ValueError)."""
    if combination not in TEACHER_COMBINATIONS:
        raise ValueError(
            f"teacher_combination={combination!r} is not supported; choose one of {list(TEACHER_COMBINATIONS)}."
        )
    if weights is None:
        return
    if not weights or any(not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"teacher_weights must be finite numbers >= 0, one per teacher; got {weights!r}.")
    if sum(weights) <= 0:
        raise ValueError(f"teacher_weights {list(weights)} sum to 0: give at least one teacher a weight > 0.")
    check_combination(kd_loss, combination, len(weights))


def check_combination(kd_loss: str, combination: str, count: int) -> None:
    if count > 1 and combination == "prob_mean" and kd_loss == "mse":
        raise ValueError(
            "kd_loss='mse' compares raw logits, but teacher_combination='prob_mean' mixes probabilities: "
            "set teacher_combination='logit_mean' (or another kd_loss)."
        )


@dataclass(frozen=True)
class TeacherEnsemble:
    """How K teachers' logits become one KD target; K = 1 passes the logits through untouched."""

    weights: tuple[float, ...]
    combination: str = "prob_mean"

    @classmethod
    def from_config(cls, weights: Sequence[float] | None, combination: str, count: int | None) -> TeacherEnsemble:
        """`count` teachers given (None: only cached logits, then `teacher_weights` says how many)."""
        if weights is not None and count is not None and len(weights) != count:
            raise ValueError(
                f"teacher_weights has {len(weights)} entries for {count} teacher(s): give one weight per teacher."
            )
        size = count or (len(weights) if weights is not None else 1)
        raw = list(weights) if weights is not None else [1.0] * size
        total = float(sum(raw))
        return cls(tuple(float(w) / total for w in raw), combination)

    @property
    def size(self) -> int:
        return len(self.weights)

    def combine(self, logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
        """The KD target as logits (see the module docstring for the exact formula)."""
        if len(logits) != self.size:
            raise ValueError(f"got logits of {len(logits)} teachers for {self.size} teacher weights.")
        if self.size == 1:
            return logits[0]
        shapes = {tuple(z.shape) for z in logits}
        if len(shapes) > 1:
            raise ValueError(
                f"teacher logits differ in shape {sorted(shapes)}: every teacher needs the student's "
                "label set / vocabulary and tokenizer."
            )
        stacked = torch.stack([z.float() for z in logits])  # [K, ..., classes]
        weights = torch.tensor(self.weights, dtype=stacked.dtype, device=stacked.device)
        weights = weights.view(-1, *([1] * (stacked.dim() - 1)))
        if self.combination == "logit_mean":
            return (weights * stacked).sum(0)
        # log p = logsumexp_i(log w_i + log_softmax(z_i / T)); zero weights drop out (log 0 = -inf).
        log_p = torch.logsumexp(weights.log() + torch.log_softmax(stacked / temperature, dim=-1), dim=0)
        return temperature * log_p

    def split_cached(self, cached: torch.Tensor, classes: int) -> list[torch.Tensor]:
        """Cached `[..., K * classes]` logits -> the K teachers' `[..., classes]` logits."""
        if cached.shape[-1] != self.size * classes:
            raise ValueError(
                f"the cached teacher_logits hold {cached.shape[-1]} values per item but {self.size} teacher(s) "
                f"x {classes} classes = {self.size * classes} are expected: the cache was built for other "
                "teachers; set teacher_weights to one weight per cached teacher, or rebuild the cache."
            )
        return list(cached.split(classes, dim=-1))

    def describe(self, names: Sequence[str]) -> str:
        """Model-card line: who teaches with which weight, and how they are combined."""
        listed = ", ".join(f"{name} ({weight:.3g})" for name, weight in zip(names, self.weights))
        return f"{listed}; combined by {self.combination}"
