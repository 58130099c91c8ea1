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

from hfkd.report.metric import rank_students

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
    """Markdown table (teacher first, students by DM) plus notes on how it was measured."""
    alpha = report["alpha"]
    teacher = report["teacher"]
    first_batch = next(iter(teacher["latency_ms"]))
    batch_label = first_batch.replace("batch_", "batch ")
    headers = [
        "model", "params (M)", "size (MB)", f"score ({report['metric_name']})", "Δ vs teacher",
        f"p50 latency, {batch_label} (ms)", "speed-up", f"DM (α={alpha:g})",
    ]
    rows = [_report_row(entry, teacher, first_batch) for entry in [teacher, *rank_students(report)]]
    latency = report.get("latency", {})
    runs = (
        f" over {latency['repeats']} interleaved samples (each the best of {latency['best_of']} "
        "back-to-back forward passes)"
        if "repeats" in latency and "best_of" in latency
        else ""
    )
    notes = [
        f"DM (α = {alpha:g}) = α·params_student/params_teacher + (1−α)·(1 − score_student/"
        "score_teacher), lower is better (Alkhulaifi et al., 2021); students are ranked by it.",
        f"Latency: median{runs} on real eval examples, "
        f"{report['threads']} threads, device: {report['device']}. "
        f"Speed-up = teacher p50 / student p50 at {batch_label}.",
    ]
    table = markdown_table(headers, rows)
    return table + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def plot_report(report: Mapping[str, Any]) -> bytes:
    """PNG of score vs parameters, the Pareto front (fewer params, higher score) as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        points = [report["teacher"], *report["students"]]
        _plot_front(ax, points)
        _plot_models(ax, report)
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel(report["metric_name"])
        ax.set_title(f"{report['metric_name']} vs size (DM at α={report['alpha']:g})")
        ax.margins(x=0.2, y=0.2)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
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


def _report_row(
    entry: Mapping[str, Any], teacher: Mapping[str, Any], first_batch: str
) -> list[str]:
    is_teacher = entry is teacher
    dm = entry["distillation_metric"]
    return [
        f"**{entry['name']}** (teacher)" if is_teacher else entry["name"],
        f"{entry['params'] / 1e6:.4g}",
        f"{entry['size_bytes'] / 1e6:.4g}",
        _fmt(entry["score"], ".4f"),
        "—" if is_teacher else _fmt(entry["score"] - teacher["score"], "+.4f"),
        f"{entry['latency_ms'][first_batch]['p50']:.2f}",
        f"{entry['speedup']:.2f}×",
        "—" if is_teacher else ("n/a" if dm is None else f"{dm:.4f}"),
    ]


def _plot_front(ax: Any, points: list[Mapping[str, Any]]) -> None:
    front = _pareto_front(points)
    front_x = [p["params"] / 1e6 for p in front]
    front_y = [p["score"] for p in front]
    # the last level runs on to the largest model, so a one-point front is still a visible line
    ax.step(
        front_x + [max(p["params"] for p in points) / 1e6],
        front_y + front_y[-1:],
        where="post",
        color="0.45",
        linestyle="--",
        linewidth=1.2,
        label="Pareto front",
        zorder=1,
    )
    ax.scatter(front_x, front_y, s=200, facecolors="none", edgecolors="0.45", zorder=2)


def _plot_models(ax: Any, report: Mapping[str, Any]) -> None:
    teacher, students = report["teacher"], report["students"]
    ax.scatter(
        [s["params"] / 1e6 for s in students],
        [s["score"] for s in students],
        s=60,
        color="tab:blue",
        label="students",
        zorder=3,
    )
    ax.scatter(
        [teacher["params"] / 1e6],
        [teacher["score"]],
        s=180,
        marker="*",
        color="tab:red",
        label="teacher",
        zorder=3,
    )
    for p in [teacher, *students]:
        dm = p["distillation_metric"]
        label = p["name"] if dm is None else f"{p['name']}\nDM={dm:.3f}"
        ax.annotate(
            label,
            (p["params"] / 1e6, p["score"]),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
        )


def _pareto_front(points: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Points no other point beats on both size (fewer params) and score, by params ascending."""
    front: list[Mapping[str, Any]] = []
    for p in sorted(points, key=lambda p: (p["params"], -p["score"])):
        if not front or p["score"] > front[-1]["score"]:
            front.append(p)
    return front


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)
