"""Teacher-vs-student report: size, task score, CPU/GPU latency and the distillation metric.

The distillation metric (DM) of Alkhulaifi, Alsahli & Ahmad (PeerJ Computer Science, 2021) folds
"how much smaller" and "how much worse" into one number, so students trained with different recipes
can be ranked on a single axis. Everything else here exists to measure its inputs honestly: real
eval examples (realistic padding), teacher and students timed interleaved (machine noise hits all
alike), and files written atomically so an interrupted run never leaves a half-written report.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import os
import platform
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import EvalPrediction, default_data_collator

ModelOrPath = nn.Module | str | os.PathLike
DM_ALPHAS = (0.25, 0.5, 0.75)
_LABEL_KEYS = ("labels", "label", "label_ids")
_REPORT_FILES = {"json": "report.json", "markdown": "report.md", "plot": "report.png"}


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


# --------------------------------------------------------------------------------------- measuring


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, total without nn.Embedding weights); tied weights (e.g. lm_head) count once.

    `model.parameters()` yields a shared Parameter once, so an lm_head tied to the input embedding
    is neither double counted in the total nor left behind in the non-embedding count.
    """
    params = {id(p): p for p in model.parameters()}
    embedding_ids = {
        id(p)
        for module in model.modules()
        if isinstance(module, nn.Embedding)
        for p in module.parameters(recurse=False)
    }
    total = sum(p.numel() for p in params.values())
    embeddings = sum(params[i].numel() for i in embedding_ids if i in params)
    return total, total - embeddings


def safetensors_size(path_or_model: ModelOrPath) -> int:
    """Bytes on disk of the *.safetensors files of a saved model folder (or of a model, once saved).

    This is what a user downloads, so it is the size that matters; a model object is saved to a
    temporary folder with `save_pretrained` to measure it the same way.
    """
    if isinstance(path_or_model, nn.Module):
        with tempfile.TemporaryDirectory(prefix="hfkd-size-") as tmp, _no_progress_bars():
            path_or_model.save_pretrained(tmp)
            return safetensors_size(tmp)
    path = Path(path_or_model)
    if path.is_file():
        return path.stat().st_size
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {str(path)!r}.")
    return sum(f.stat().st_size for f in files)


def evaluate_model(
    model: nn.Module,
    eval_dataset: Any,
    data_collator: Callable[[list[dict]], Mapping[str, Any]] | None,
    compute_metrics: Callable[[EvalPrediction], Mapping[str, Any]],
    batch_size: int = 64,
) -> dict[str, float]:
    """Run `model` over `eval_dataset` and score it with a Trainer-style `compute_metrics`.

    A plain loop (no Trainer) so teacher and students are scored identically and without training
    arguments; logits of varying sequence length (token tasks) are padded with -100 as in Trainer.
    """
    device = _model_device(model)
    collate = _input_collator(model, data_collator)
    loader = DataLoader(eval_dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    logits, labels = [], []
    with _eval_mode(model), torch.inference_mode():
        for batch in loader:
            label = _pop_labels(batch)
            outputs = model(**_to_device(batch, device))
            if getattr(outputs, "logits", None) is None:
                raise ValueError(f"{type(model).__name__} returned no `logits` to evaluate.")
            logits.append(outputs.logits.float().cpu())
            if label is not None:
                labels.append(torch.as_tensor(label).cpu())
    predictions = _concat_padded(logits).numpy()
    label_ids = _concat_padded(labels).numpy() if labels else None
    metrics = compute_metrics(EvalPrediction(predictions=predictions, label_ids=label_ids))
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.number))}


def measure_latency(
    model: nn.Module,
    inputs: Any,
    data_collator: Callable[[list[dict]], Mapping[str, Any]] | None = None,
    *,
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 3,
    repeats: int = 20,
    best_of: int = 3,
    max_length: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency of one model; see `measure_latencies` (which to prefer when comparing models)."""
    return measure_latencies(
        {"model": model},
        inputs,
        data_collator,
        batch_sizes=batch_sizes,
        warmup=warmup,
        repeats=repeats,
        best_of=best_of,
        max_length=max_length,
        seed=seed,
    )["model"]


def measure_latencies(
    models: Mapping[str, nn.Module],
    inputs: Any,
    data_collator: Callable[[list[dict]], Mapping[str, Any]] | None = None,
    *,
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 3,
    repeats: int = 20,
    best_of: int = 3,
    max_length: int | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Forward-pass latency (ms) per batch size, timed interleaved across `models`.

    `inputs` is either a callable `batch_size -> dict of tensors` or an eval dataset. From a
    dataset, batches are consecutive chunks of a fixed seeded shuffle (cycled if the set is small),
    collated with `data_collator` (default: `default_data_collator`) exactly as in evaluation, so
    padding and sequence lengths are realistic; `max_length` truncates examples first. Repeat `r`
    feeds every model the same batch, and the model order rotates each repeat, so background load on
    a shared machine hits all models alike; each sample is the fastest of `best_of` back-to-back
    calls, so an OS time-slice stall (milliseconds, as long as a small model's whole forward pass)
    is not mistaken for model latency. The spread across samples then comes from the real batches.

    Returns per model `{"batch_<b>": {"p50", "p90", "mean"}, ..., "throughput_samples_per_s": at
    the largest batch, "throughput_batch_size", "seq_len": {"batch_<b>": mean padded length},
    "threads"}`.
    """
    if not models:
        raise ValueError("measure_latencies needs at least one model.")
    if repeats < 1 or best_of < 1 or warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(
            "need repeats >= 1, best_of >= 1, warmup >= 0 and at least one batch size, all >= 1."
        )
    names = list(models)
    results: dict[str, dict[str, Any]] = {
        name: {"seq_len": {}, "threads": torch.get_num_threads()} for name in names
    }
    with _eval_mode(*models.values()), torch.inference_mode():
        for batch_size in batch_sizes:
            key = f"batch_{batch_size}"
            batches = _latency_batches(inputs, batch_size, repeats, max_length, seed)
            prepared = {
                name: [_prepare_inputs(b, models[name], data_collator) for b in batches]
                for name in names
            }
            lengths = [_seq_len(b) for b in prepared[names[0]]]
            for name in names:
                results[name]["seq_len"][key] = (
                    float(np.mean(lengths)) if all(n is not None for n in lengths) else None
                )
                for i in range(warmup):
                    models[name](**prepared[name][i % len(batches)])
            times: dict[str, list[float]] = {name: [] for name in names}
            for r in range(repeats):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    batch = prepared[name][r % len(batches)]
                    times[name].append(_time_call(models[name], batch, best_of))
            for name in names:
                ms = np.asarray(times[name])
                results[name][key] = {
                    "p50": float(np.percentile(ms, 50)),
                    "p90": float(np.percentile(ms, 90)),
                    "mean": float(ms.mean()),
                }
    largest = max(batch_sizes)
    for name in names:
        results[name]["throughput_samples_per_s"] = (
            1000.0 * largest / results[name][f"batch_{largest}"]["mean"]
        )
        results[name]["throughput_batch_size"] = largest
    return results


# --------------------------------------------------------------------------------------- reporting


def build_report(
    teacher: ModelOrPath,
    students: Mapping[str, ModelOrPath] | Sequence[tuple[str, ModelOrPath]],
    eval_dataset: Any,
    data_collator: Callable[[list[dict]], Mapping[str, Any]] | None,
    compute_metrics: Callable[[EvalPrediction], Mapping[str, Any]],
    *,
    metric_name: str = "accuracy",
    alpha: float = 0.5,
    teacher_name: str | None = None,
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 3,
    repeats: int = 20,
    best_of: int = 3,
    max_length: int | None = None,
    eval_batch_size: int = 64,
) -> dict[str, Any]:
    """Measure the teacher and each student and rank the students by DM (`params` as size).

    Models may be given as objects or saved folders (loaded with the class in their config). Scores
    are `metrics[metric_name]`; a student's DM is null (with `distillation_metric_error`) when the
    teacher's score makes DM undefined (e.g. 0), so one bad metric does not lose the whole report.
    """
    distillation_metric(1, 1, 1, 1, alpha)  # validate alpha before any compute is spent
    batch_sizes = sorted(set(batch_sizes))  # smallest first: the speed-up and table use it
    student_items = list(students.items()) if isinstance(students, Mapping) else list(students)
    if not student_items:
        raise ValueError("build_report needs at least one student.")
    if teacher_name is None:
        teacher_name = "teacher" if isinstance(teacher, nn.Module) else str(teacher)
    names = [teacher_name] + [str(name) for name, _ in student_items]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}.")

    models: dict[str, nn.Module] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name, source in [(teacher_name, teacher)] + student_items:
        model = _load_model(source)
        params, params_no_emb = count_parameters(model)
        is_saved_folder = not isinstance(source, nn.Module) and Path(source).is_dir()
        metrics = evaluate_model(
            model, eval_dataset, data_collator, compute_metrics, eval_batch_size
        )
        models[name] = model
        entries[name] = {
            "name": name,
            "params": params,
            "params_no_embeddings": params_no_emb,
            "size_bytes": safetensors_size(source if is_saved_folder else model),
            "score": _score(metrics, metric_name, name),
            "metrics": metrics,
        }

    latencies = measure_latencies(
        models,
        eval_dataset,
        data_collator,
        batch_sizes=batch_sizes,
        warmup=warmup,
        repeats=repeats,
        best_of=best_of,
        max_length=max_length,
    )
    teacher_p50 = latencies[teacher_name][f"batch_{min(batch_sizes)}"]["p50"]
    teacher_entry = entries[teacher_name]
    for name, entry in entries.items():
        latency = latencies[name]
        entry["latency_ms"] = {f"batch_{b}": latency[f"batch_{b}"] for b in batch_sizes}
        entry["throughput_samples_per_s"] = latency["throughput_samples_per_s"]
        entry["speedup"] = teacher_p50 / latency[f"batch_{min(batch_sizes)}"]["p50"]
        if name == teacher_name:
            entry["distillation_metric"] = None
            entry["distillation_metric_by_alpha"] = None
            continue
        try:
            by_alpha = {
                str(float(a)): distillation_metric(
                    entry["params"],
                    teacher_entry["params"],
                    entry["score"],
                    teacher_entry["score"],
                    a,
                )
                for a in sorted({*DM_ALPHAS, float(alpha)})
            }
            entry["distillation_metric"] = by_alpha[str(float(alpha))]
            entry["distillation_metric_by_alpha"] = by_alpha
        except ValueError as error:
            entry["distillation_metric"] = None
            entry["distillation_metric_by_alpha"] = None
            entry["distillation_metric_error"] = str(error)

    any_latency = latencies[teacher_name]
    return {
        "alpha": float(alpha),
        "metric_name": metric_name,
        "teacher": teacher_entry,
        "students": [entries[str(name)] for name, _ in student_items],
        "threads": any_latency["threads"],
        "device": _device_description(_model_device(models[teacher_name])),
        "latency": {
            "batch_sizes": list(batch_sizes),
            "warmup": warmup,
            "repeats": repeats,
            "best_of": best_of,
            "max_length": max_length,
            "seq_len": any_latency["seq_len"],
            "throughput_batch_size": any_latency["throughput_batch_size"],
        },
        "eval_examples": len(eval_dataset),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


def rank_students(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Students by DM ascending (best first); students without a DM go last."""
    return sorted(
        report["students"],
        key=lambda s: (s["distillation_metric"] is None, s["distillation_metric"] or 0.0),
    )


def report_to_markdown(report: Mapping[str, Any]) -> str:
    """Markdown table (teacher first, students by DM) plus notes on how it was measured."""
    alpha = report["alpha"]
    teacher = report["teacher"]
    first_batch = next(iter(teacher["latency_ms"]))
    batch_label = first_batch.replace("batch_", "batch ")
    header = (
        f"| model | params (M) | size (MB) | score ({report['metric_name']}) | Δ vs teacher "
        f"| p50 latency, {batch_label} (ms) | speed-up | DM (α={alpha:g}) |"
    )
    lines = [header, "|" + "---|" + "---:|" * 7]
    for entry in [teacher, *rank_students(report)]:
        is_teacher = entry is teacher
        dm = entry["distillation_metric"]
        name = _md_escape(entry["name"])
        cells = [
            f"**{name}** (teacher)" if is_teacher else name,
            f"{entry['params'] / 1e6:.4g}",
            f"{entry['size_bytes'] / 1e6:.4g}",
            _fmt(entry["score"], ".4f"),
            "—" if is_teacher else _fmt(entry["score"] - teacher["score"], "+.4f"),
            f"{entry['latency_ms'][first_batch]['p50']:.2f}",
            f"{entry['speedup']:.2f}×",
            "—" if is_teacher else ("n/a" if dm is None else f"{dm:.4f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
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
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def plot_report(report: Mapping[str, Any]) -> bytes:
    """PNG of score vs parameters, the Pareto front (fewer params, higher score) as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher = report["teacher"]
    points = [teacher, *report["students"]]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
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
        students = report["students"]
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
        for p in points:
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


# --------------------------------------------------------------------------------------- helpers


@contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    """eval() for measuring (no dropout), restoring each model's train/eval mode afterwards."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' "Writing model shards" bar for a save that is only a measurement."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    cpu_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu_name = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                cpu_name,
            )
    except OSError:
        pass
    return f"{device.type} ({cpu_name})" if cpu_name else device.type


def _accepted_inputs(model: nn.Module) -> set[str] | None:
    """Named forward arguments (Trainer's column filter); None when forward takes only **kwargs."""
    params = inspect.signature(model.forward).parameters.values()
    names = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names or None


def _input_collator(
    model: nn.Module, data_collator: Callable[[list[dict]], Mapping[str, Any]] | None
) -> Callable[[list[dict]], dict[str, Any]]:
    """Collator that first drops columns the model cannot take (e.g. raw text, idx)."""
    collator = data_collator or default_data_collator
    accepted = _accepted_inputs(model)
    if accepted is None:
        return lambda features: dict(collator(features))
    keep = accepted | set(_LABEL_KEYS)
    return lambda features: dict(
        collator([{k: v for k, v in f.items() if k in keep} for f in features])
    )


def _pop_labels(batch: dict[str, Any]) -> Any:
    found = [batch.pop(key) for key in _LABEL_KEYS if key in batch]
    return found[0] if found else None


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _concat_padded(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate batches whose dim 1 (sequence) may differ, padding with -100 like Trainer."""
    if all(c.shape[1:] == chunks[0].shape[1:] for c in chunks):
        return torch.cat(chunks)
    longest = max(c.shape[1] for c in chunks)
    return torch.cat(
        [
            nn.functional.pad(c, (0, 0) * (c.ndim - 2) + (0, longest - c.shape[1]), value=-100)
            for c in chunks
        ]
    )


def _latency_batches(
    inputs: Any, batch_size: int, repeats: int, max_length: int | None, seed: int
) -> list[list[dict[str, Any]] | dict[str, Any]]:
    """Feature lists of up to `repeats` distinct batches (or one batch from an inputs callable)."""
    if callable(inputs):
        return [dict(inputs(batch_size))]
    size = len(inputs)
    if size == 0:
        raise ValueError("the latency dataset is empty.")
    order = list(range(size))
    random.Random(seed).shuffle(order)
    batches = []
    for start in range(0, max(1, min(repeats, size // batch_size)) * batch_size, batch_size):
        features = [dict(inputs[order[(start + i) % size]]) for i in range(batch_size)]
        if max_length is not None:
            features = [
                {k: v[:max_length] if isinstance(v, list) else v for k, v in f.items()}
                for f in features
            ]
        batches.append(features)
    return batches


def _prepare_inputs(
    batch: list[dict[str, Any]] | dict[str, Any],
    model: nn.Module,
    data_collator: Callable[[list[dict]], Mapping[str, Any]] | None,
) -> dict[str, Any]:
    """Collate (before timing, so it is never timed), drop labels, move to the model's device."""
    if isinstance(batch, list):
        batch = _input_collator(model, data_collator)(batch)
    else:
        batch = dict(batch)
    _pop_labels(batch)
    return _to_device(batch, _model_device(model))


def _seq_len(batch: Mapping[str, Any]) -> int | None:
    """Padded length: dim 1 of the first 2-D+ input (input_ids, attention_mask, ...)."""
    shapes = (v.shape for v in batch.values() if torch.is_tensor(v) and v.ndim >= 2)
    return next((shape[1] for shape in shapes), None)


def _time_call(model: nn.Module, inputs: Mapping[str, Any], best_of: int) -> float:
    """Fastest of `best_of` back-to-back forward passes, in ms (CUDA synchronised)."""
    device = _model_device(model)
    best = math.inf
    for _ in range(best_of):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter_ns()
        model(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter_ns() - start) / 1e6)
    return best


def _load_model(source: ModelOrPath) -> nn.Module:
    """A model object as is; a saved folder with the architecture class named in its config."""
    if isinstance(source, nn.Module):
        return source
    import transformers

    config = transformers.AutoConfig.from_pretrained(source)
    architecture = (config.architectures or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    if model_class is None:
        raise ValueError(
            f"cannot tell which model class to load from {str(source)!r} (config.architectures="
            f"{config.architectures!r}); pass the loaded model instead."
        )
    return model_class.from_pretrained(source)


def _score(metrics: Mapping[str, float], metric_name: str, model_name: str) -> float:
    for key in (metric_name, f"eval_{metric_name}"):
        if key in metrics:
            return metrics[key]
    raise KeyError(
        f"metric {metric_name!r} not in the metrics of {model_name!r}: {sorted(metrics)}; "
        "set metric_name to one of them."
    )


def _pareto_front(points: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Points no other point beats on both size (fewer params) and score, by params ascending."""
    front: list[Mapping[str, Any]] = []
    for p in sorted(points, key=lambda p: (p["params"], -p["score"])):
        if not front or p["score"] > front[-1]["score"]:
            front.append(p)
    return front


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


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)
