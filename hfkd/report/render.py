"""Markdown tables and the score-vs-size plot: how reports and summaries are shown to people.

Every teacher-vs-student (or key/value) table in hfkd and its benchmark scripts goes through
`markdown_table`, so escaping and column alignment are decided in one place.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hfkd.report.metric import distillation_metric, rank_students

# A number as the tables print it: optional sign, digits, decimals, exponent and a unit suffix.
_NUMBER = re.compile(r"[+\-−]?\d[\d,]*(\.\d+)?(e[+\-]?\d+)?\s?(%|×|x|M)?", re.IGNORECASE)
_PLACEHOLDERS = frozenset({"", "–", "—", "-", "n/a"})


def markdown_table(
    headers: Sequence[Any], rows: Iterable[Sequence[Any]], align: str | None = None
) -> str:
    """A GitHub Markdown table; every cell is `str()`-ed and escaped, so any text is safe in it.

    `align` has one letter per column, "l" (left) or "r" (right). By default a column is
    right-aligned when every cell in it is a number (sign, %, ×, x or M allowed) or a placeholder
    (–, —, n/a, empty), so that digits line up; any other column is left-aligned.
    """
    header = [_cell(h) for h in headers]
    body = [[_cell(c) for c in row] for row in rows]
    if any(len(row) != len(header) for row in body):
        raise ValueError(f"every row needs {len(header)} cells, one per header {header}.")
    if align is None:
        align = "".join(
            "r" if all(_is_numeric(row[i]) for row in body) else "l" for i in range(len(header))
        )
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align needs one 'l' or 'r' per column ({len(header)}), got {align!r}.")
    separator = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return "\n".join([_row(header), separator, *(_row(row) for row in body)])


def report_to_markdown(report: Mapping[str, Any]) -> str:
    """Markdown table (teacher first, then students and artifacts by DM) plus how it was measured.

    One row per model or artifact (its `format`: pytorch fp32, onnx fp32, onnx int8, pytorch int8),
    each scored and timed by running that artifact; DM is given with size = parameters and with
    size = bytes on disk.
    """
    alpha = report["alpha"]
    teacher = report["teacher"]
    batches = list(teacher["latency_ms"])
    labels = [b.replace("batch_", "batch ") for b in batches]
    headers = [
        "model", "params (M)", "size (MB)", f"score ({report['metric_name']})", "Δ vs teacher",
        *(f"p50 latency, {label} (ms)" for label in labels), *(f"speed-up, {label}" for label in labels),
        f"DM (α={alpha:g}) by params", f"DM (α={alpha:g}) by bytes", "format",
    ]
    rows = [_report_row(entry, teacher, batches) for entry in [teacher, *rank_students(report)]]
    latency = report.get("latency", {})
    runs = (
        f" over {latency['repeats']} interleaved samples (each the best of {latency['best_of']} "
        "back-to-back forward passes)"
        if "repeats" in latency and "best_of" in latency
        else ""
    )
    notes = [
        f"DM (α = {alpha:g}) = α·size_student/size_teacher + (1−α)·(1 − score_student/"
        "score_teacher), lower is better (Alkhulaifi et al., 2021), with size = parameters (by params; "
        "rows are ranked by it) and with size = bytes of the model files on disk (by bytes).",
        "Every row is measured by running that artifact over the evaluation set: ONNX rows in ONNX "
        "Runtime (CPU), PyTorch rows in PyTorch; an int8 row's score is its own, not its source's.",
        f"Latency: median{runs} on real eval examples, "
        f"{report['threads']} threads (ONNX Runtime sessions get the same intra-op thread count), device: "
        f"{report['device']}. Speed-up = teacher p50 / row p50 at each batch size.",
    ]
    table = markdown_table(headers, rows)
    return table + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n" + _references_markdown(report)


def plot_report(report: Mapping[str, Any]) -> bytes:
    """PNG: score retention vs size relative to the teacher, by parameters and by bytes on disk.

    Every row of the report is a point; dashed lines are DM iso-lines at the report's α (the points
    on one line have the same DM); grey crosses are published teacher/student pairs (the report's
    `references`, sizes in parameters), so a reader sees where this run lands among them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=120, sharey=True)
    try:
        for ax, size, label in ((axes[0], "params", "parameters"), (axes[1], "size_bytes", "bytes on disk")):
            _plot_panel(ax, report, size)
            ax.set_xlabel(f"size / teacher size ({label})")
            ax.set_title(f"size = {label} (DM at α={report['alpha']:g})")
        axes[0].set_ylabel(f"{report['metric_name']} / teacher's")
        axes[1].legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _cell(value: Any) -> str:
    """One table cell: `|` escaped and newlines flattened, which would otherwise break the row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _is_numeric(cell: str) -> bool:
    return cell in _PLACEHOLDERS or _NUMBER.fullmatch(cell) is not None


def _report_row(entry: Mapping[str, Any], teacher: Mapping[str, Any], batches: Sequence[str]) -> list[str]:
    is_teacher = entry is teacher
    speedups = entry.get("speedup_by_batch") or {batches[0]: entry["speedup"]}
    return [
        f"**{entry['name']}** (teacher)" if is_teacher else entry["name"],
        f"{entry['params'] / 1e6:.4g}",
        f"{entry['size_bytes'] / 1e6:.4g}",
        _fmt(entry["score"], ".4f"),
        "—" if is_teacher else _fmt(entry["score"] - teacher["score"], "+.4f"),
        *(f"{entry['latency_ms'][b]['p50']:.2f}" for b in batches),
        *(f"{speedups[b]:.2f}×" if b in speedups else "n/a" for b in batches),
        *("—" if is_teacher else _fmt(entry.get(key), ".4f")
          for key in ("distillation_metric", "distillation_metric_bytes")),
        entry.get("format", "pytorch fp32"),
    ]


def _references_markdown(report: Mapping[str, Any]) -> str:
    references = report.get("references") or []
    if not references:
        return ""
    alpha = report["alpha"]
    rows = [[r["case"], f"{r['student_size'] / r['teacher_size']:.3f}", f"{r['student_score'] / r['teacher_score']:.3f}",
             _fmt(_reference_dm(r, alpha), ".4f"), r["source"]] for r in references]
    headers = ["published pair", "size / teacher (params)", "score / teacher", f"DM (α={alpha:g})", "source"]
    table = markdown_table(headers, rows)
    return "\nPublished reference points (shown in the plot):\n\n" + table + "\n"


def _reference_dm(row: Mapping[str, Any], alpha: float) -> float:
    return distillation_metric(row["student_size"], row["teacher_size"], row["student_score"], row["teacher_score"], alpha)


def _plot_panel(ax: Any, report: Mapping[str, Any], size: str) -> None:
    """One panel: iso-DM lines, the published references, then every row of the report."""
    teacher, alpha = report["teacher"], report["alpha"]
    rows = [teacher, *report["students"]]
    points = [(r, r[size] / teacher[size], r["score"] / teacher["score"]) for r in rows]
    references = [(r, r["student_size"] / r["teacher_size"], r["student_score"] / r["teacher_score"])
                  for r in report.get("references") or []]
    xs = [x for _, x, _ in points + references]
    ys = [y for _, _, y in points + references]
    x_max, y_min, y_max = max(1.05, max(xs) * 1.05), min(ys) - 0.03, max(ys) + 0.03
    _plot_iso_dm(ax, alpha, x_max, y_min, y_max)
    if references:
        ax.scatter([x for _, x, _ in references], [y for _, _, y in references], marker="x", color="0.5", s=30,
                   label="published (params)", zorder=2)
        for r, x, y in references:
            ax.annotate(r["case"].split(" vs ")[0], (x, y), textcoords="offset points", xytext=(3, -9), fontsize=6,
                        color="0.4")
    for kind, marker in _FORMAT_MARKERS.items():
        chosen = [(r, x, y) for r, x, y in points[1:] if r.get("format", "pytorch fp32") == kind]
        if chosen:
            ax.scatter([x for _, x, _ in chosen], [y for _, _, y in chosen], marker=marker, s=60, zorder=3, label=kind)
    ax.scatter([1.0], [1.0], s=180, marker="*", color="tab:red", label="teacher", zorder=3)
    dm_key = "distillation_metric" if size == "params" else "distillation_metric_bytes"
    placed: list[tuple[float, float]] = []  # (x, y) of the labels so far
    for r, x, y in points[1:]:
        dm = r.get(dm_key)
        # artifacts of one source share a size by parameters: stack their labels instead of overprinting
        stacked = sum(abs(x - px) < 0.03 * x_max for px, _ in placed)
        placed.append((x, y))
        ax.annotate(r["name"] if dm is None else f"{r['name']}\nDM={dm:.3f}", (x, y), textcoords="offset points",
                    xytext=(6, 4 - 20 * stacked), fontsize=7,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xlim(0, x_max)
    ax.set_ylim(y_min, y_max)
    ax.grid(True, alpha=0.3)


_FORMAT_MARKERS = {"pytorch fp32": "o", "pytorch int8": "s", "onnx fp32": "D", "onnx int8": "^"}
_ISO_DMS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


def _plot_iso_dm(ax: Any, alpha: float, x_max: float, y_min: float, y_max: float) -> None:
    """Lines of equal DM: y = 1 − (DM − α·x)/(1 − α) (vertical x = DM/α when α = 1)."""
    for dm in _ISO_DMS:
        if alpha == 1:
            ax.axvline(dm, color="0.75", linestyle="--", linewidth=0.8, zorder=1)
            continue
        ax.plot([0, x_max], [1 - (dm - alpha * x) / (1 - alpha) for x in (0, x_max)], color="0.75",
                linestyle="--", linewidth=0.8, zorder=1)
        x_label = min(x_max * 0.97, max(0.02, (dm - (1 - alpha) * (1 - y_max + 0.01)) / alpha)) if alpha else x_max * 0.9
        y_label = 1 - (dm - alpha * x_label) / (1 - alpha)
        if y_min <= y_label <= y_max:
            ax.annotate(f"DM={dm:g}", (x_label, y_label), fontsize=6, color="0.55")


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)
