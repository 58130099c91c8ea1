"""Report files, written as one set (`hfkd.io.staged`) so an interrupted run never leaves a half-written one."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hfkd.io import atomic_write, staged
from hfkd.report.render import plot_report, report_to_markdown

__all__ = ["atomic_write", "read_references", "write_report"]

_REPORT_FILES = {"json": "report.json", "markdown": "report.md", "plot": "report.png"}


def write_report(report: Mapping[str, Any], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.md and report.png as one set (old set or new set after a kill); returns their paths."""
    output_dir = Path(output_dir)
    contents = {
        "json": json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n",
        "markdown": "# Distillation report\n\n" + report_to_markdown(report),
        "plot": plot_report(report),
    }
    with staged(output_dir) as staging:
        for kind, data in contents.items():
            Path(staging, _REPORT_FILES[kind]).write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return {kind: output_dir / name for kind, name in _REPORT_FILES.items()}


def read_references(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Published teacher/student pairs from a CSV with case, student_size, teacher_size, student_score,
    teacher_score and source columns (the shared `reference/distillation_metric_cases.csv`)."""
    numeric = ("student_size", "teacher_size", "student_score", "teacher_score")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in ("case", "source", *numeric) if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path} lacks the reference columns {missing}.")
    return [{"case": r["case"], "source": r["source"], **{c: float(r[c]) for c in numeric}} for r in rows]


def _json_safe(value: Any) -> Any:
    """NaN/inf become null so report.json stays valid JSON."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
