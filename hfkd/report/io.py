"""Report files, written atomically so an interrupted run never leaves a half-written one."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hfkd.report.render import plot_report, report_to_markdown

_REPORT_FILES = {"json": "report.json", "markdown": "report.md", "plot": "report.png"}


def write_report(report: Mapping[str, Any], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.md and report.png, each atomically; returns their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    contents = {
        "json": json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n",
        "markdown": "# Distillation report\n\n" + report_to_markdown(report),
        "plot": plot_report(report),
    }
    return {
        kind: atomic_write(output_dir / _REPORT_FILES[kind], data)
        for kind, data in contents.items()
    }


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write a temp file in the same folder, then os.replace: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "xb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
