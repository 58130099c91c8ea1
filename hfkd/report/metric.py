"""The distillation metric (DM) and the ranking of students by it; pure functions, no models.

DM (Alkhulaifi, Alsahli & Ahmad, PeerJ Computer Science, 2021) folds "how much smaller" and "how
much worse" into one number, so students trained with different recipes can be ranked on a single
axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

DM_ALPHAS = (0.25, 0.5, 0.75)


def distillation_metric(
    student_size: float,
    teacher_size: float,
    student_score: float,
    teacher_score: float,
    alpha: float = 0.5,
) -> float:
    """DM = α·(student_size/teacher_size) + (1−α)·(1 − student_score/teacher_score).

    Lower is better. α weighs compression against fidelity. The value is negative when a small
    student beats its teacher by enough, and is deliberately not clamped: such students rank first.
    Scores must be "higher is better" (accuracy, F1, ...).
    """
    values = {
        "student_size": student_size,
        "teacher_size": teacher_size,
        "student_score": student_score,
        "teacher_score": teacher_score,
        "alpha": alpha,
    }
    for name, value in values.items():
        if not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (weight of size vs score), got {alpha}.")
    if teacher_size <= 0:
        raise ValueError(f"teacher_size must be > 0 (it is a divisor), got {teacher_size}.")
    if teacher_score <= 0:
        raise ValueError(
            f"teacher_score must be > 0 (it is a divisor), got {teacher_score}; DM needs a "
            "higher-is-better metric on which the teacher scores above zero."
        )
    if student_size < 0:
        raise ValueError(f"student_size must be >= 0, got {student_size}.")
    return float(
        alpha * (student_size / teacher_size) + (1 - alpha) * (1 - student_score / teacher_score)
    )


def rank_students(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Students by DM ascending (best first); students without a DM go last."""
    return sorted(
        report["students"],
        key=lambda s: (s["distillation_metric"] is None, s["distillation_metric"] or 0.0),
    )
