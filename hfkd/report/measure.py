"""Measuring teacher and students: size, task score, CPU/GPU latency, gathered into a report.

Everything here exists to measure the inputs of the distillation metric honestly: real eval
examples (realistic padding), the same evaluation loop for every model, and teacher and students
timed interleaved (machine noise hits all alike). Rendering and writing the report live in
`hfkd.report.render` and `hfkd.report.io`.
"""

from __future__ import annotations

import inspect
import math
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import EvalPrediction, default_data_collator

from hfkd.deploy.runtime import load_artifact
from hfkd.report.metric import DM_ALPHAS, distillation_metric

ModelOrPath = nn.Module | str | os.PathLike
Collator = Callable[[list[dict]], Mapping[str, Any]]
_LABEL_KEYS = ("labels", "label", "label_ids")


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
    data_collator: Collator | None,
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


# build_report's latency settings when not given (those of `measure_latencies`).
LATENCY_DEFAULTS: dict[str, Any] = {"batch_sizes": (1, 32), "warmup": 3, "repeats": 20, "best_of": 3, "max_length": None}


def measure_latency(model: nn.Module, inputs: Any, data_collator: Collator | None = None, **settings: Any) -> dict[str, Any]:
    """Latency of one model; `settings` and the method as in `measure_latencies` (prefer it to compare models)."""
    return measure_latencies({"model": model}, inputs, data_collator, **settings)["model"]


def measure_latencies(
    models: Mapping[str, nn.Module],
    inputs: Any,
    data_collator: Collator | None = None,
    *,
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 3,
    repeats: int = 20,
    best_of: int = 3,
    max_length: int | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Forward-pass latency (ms) per batch size, timed interleaved across `models`.

    `inputs` is either a callable `batch_size -> dict of tensors`, an eval dataset, or a mapping of
    model name -> eval dataset when models read different tokenizations of the same rows (a trimmed
    vocabulary): the same seeded rows then go to every model, each in its own tokens. From a
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
    results: dict[str, dict[str, Any]] = {
        name: {"seq_len": {}, "threads": torch.get_num_threads()} for name in models
    }
    with _eval_mode(*models.values()), torch.inference_mode():
        for batch_size in batch_sizes:
            key = f"batch_{batch_size}"
            batches = {name: _latency_batches(inputs[name] if isinstance(inputs, Mapping) else inputs,
                                              batch_size, repeats, max_length, seed) for name in models}
            seq_len, stats = _time_interleaved(
                models, batches, data_collator, warmup, repeats, best_of
            )
            for name, result in results.items():
                result["seq_len"][key] = seq_len
                result[key] = stats[name]
    largest = max(batch_sizes)
    for result in results.values():
        result["throughput_samples_per_s"] = 1000.0 * largest / result[f"batch_{largest}"]["mean"]
        result["throughput_batch_size"] = largest
    return results


def build_report(
    teacher: ModelOrPath,
    students: Mapping[str, ModelOrPath] | Sequence[tuple[str, ModelOrPath]],
    eval_dataset: Any,
    data_collator: Collator | None,
    compute_metrics: Callable[[EvalPrediction], Mapping[str, Any]],
    *,
    metric_name: str = "accuracy",
    alpha: float = 0.5,
    teacher_name: str | None = None,
    eval_batch_size: int = 64,
    references: Sequence[Mapping[str, Any]] | None = None,
    eval_datasets: Mapping[str, Any] | None = None,
    **latency: Any,
) -> dict[str, Any]:
    """Measure the teacher and each student and rank the students by DM (`params` as size).

    Models may be given as objects or folders: a saved model folder (loaded with the class in its
    config) or an `hfkd export` folder, run as that artifact (ONNX in ONNX Runtime, int8 as int8);
    every row is scored and timed the same way and gets DM by parameters and by bytes on disk.
    `references` (published pairs, `hfkd.report.io.read_references`) are stored for the plot.
    `eval_datasets` gives a row its own tokenization of `eval_dataset`'s rows (by name: a student
    with a trimmed vocabulary is scored and timed on what its own tokenizer makes of the text). Scores
    are `metrics[metric_name]`; a student's DM is null (with `distillation_metric_error`) when the
    teacher's score makes DM undefined (e.g. 0), so one bad metric does not lose the whole report.
    `latency` takes `measure_latencies`' settings (`batch_sizes`, `warmup`, `repeats`, `best_of`,
    `max_length`; defaults `LATENCY_DEFAULTS`), recorded in the report.
    """
    distillation_metric(1, 1, 1, 1, alpha)  # validate alpha before any compute is spent
    unknown = sorted(set(latency) - set(LATENCY_DEFAULTS))
    if unknown:
        raise TypeError(f"build_report got unknown settings {unknown}; latency settings are {list(LATENCY_DEFAULTS)}.")
    settings = {**LATENCY_DEFAULTS, **latency}
    # smallest first: the speed-up and table use it
    batch_sizes = settings["batch_sizes"] = sorted(set(settings["batch_sizes"]))
    named = _named_sources(teacher, students, teacher_name)
    datasets = {name: (eval_datasets or {}).get(name, eval_dataset) for name, _ in named}
    models, entries = {}, {}
    for name, source in named:
        models[name], entries[name] = _measure_model(
            name, source, datasets[name], data_collator, compute_metrics, metric_name, eval_batch_size
        )
    latencies = measure_latencies(models, datasets, data_collator, **settings)
    teacher_name = named[0][0]
    teacher_entry, teacher_latency = entries[teacher_name], latencies[teacher_name]
    for name, entry in entries.items():
        entry.update(_latency_fields(latencies[name], teacher_latency, batch_sizes))
        entry.update(_no_dm() if name == teacher_name else _dm_fields(entry, teacher_entry, alpha))
    return {
        "alpha": float(alpha),
        "metric_name": metric_name,
        "teacher": teacher_entry,
        "students": [entries[name] for name, _ in named[1:]],
        "threads": teacher_latency["threads"],
        "device": _device_description(_model_device(models[teacher_name])),
        "latency": {
            **settings,
            "seq_len": teacher_latency["seq_len"],
            "throughput_batch_size": teacher_latency["throughput_batch_size"],
        },
        "eval_examples": len(eval_dataset),
        "references": [dict(r) for r in references or []],
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


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
    model: nn.Module, data_collator: Collator | None
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


def _named_sources(
    teacher: ModelOrPath,
    students: Mapping[str, ModelOrPath] | Sequence[tuple[str, ModelOrPath]],
    teacher_name: str | None,
) -> list[tuple[str, ModelOrPath]]:
    """(name, model or folder), teacher first; names are unique strings (they key the report)."""
    student_items = list(students.items()) if isinstance(students, Mapping) else list(students)
    if not student_items:
        raise ValueError("build_report needs at least one student.")
    if teacher_name is None:
        teacher_name = "teacher" if isinstance(teacher, nn.Module) else str(teacher)
    named = [(str(teacher_name), teacher)] + [(str(name), source) for name, source in student_items]
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}.")
    return named


def _measure_model(
    name: str,
    source: ModelOrPath,
    eval_dataset: Any,
    data_collator: Collator | None,
    compute_metrics: Callable[[EvalPrediction], Mapping[str, Any]],
    metric_name: str,
    eval_batch_size: int,
) -> tuple[nn.Module, dict[str, Any]]:
    """The runnable model and its report entry: sizes, metrics and the score DM is computed from.

    A folder is loaded as the artifact it is (`hfkd.deploy.runtime.load_artifact`: an ONNX export
    runs in ONNX Runtime, a PyTorch int8 export as int8), so the score is that artifact's own.
    """
    if isinstance(source, nn.Module):
        model, kind, size = source, "pytorch fp32", safetensors_size(source)
        params, params_no_emb = count_parameters(model)
    else:
        artifact = load_artifact(source)
        model, kind, size = artifact.model, artifact.kind, artifact.size_bytes
        if not size:
            raise FileNotFoundError(f"no model files (*.safetensors or an hfkd export) in {str(source)!r}.")
        counted = count_parameters(model) if artifact.parameters is None else None
        params, params_no_emb = counted or (artifact.parameters, artifact.parameters_no_embeddings)
    metrics = evaluate_model(model, eval_dataset, data_collator, compute_metrics, eval_batch_size)
    return model, {
        "name": name,
        "format": kind,
        "params": params,
        "params_no_embeddings": params_no_emb,
        "size_bytes": size,
        "score": _score(metrics, metric_name, name),
        "metrics": metrics,
    }


def _latency_fields(
    latency: Mapping[str, Any], teacher_latency: Mapping[str, Any], batch_sizes: Sequence[int]
) -> dict[str, Any]:
    """Latency per batch size, throughput, and the speed-up over the teacher (p50) at each batch size;
    `speedup` is the one at the smallest."""
    keys = [f"batch_{b}" for b in batch_sizes]
    speedups = {key: teacher_latency[key]["p50"] / latency[key]["p50"] for key in keys}
    return {
        "latency_ms": {key: latency[key] for key in keys},
        "throughput_samples_per_s": latency["throughput_samples_per_s"],
        "speedup": speedups[keys[0]],
        "speedup_by_batch": speedups,
    }


def _no_dm() -> dict[str, Any]:
    return {"distillation_metric": None, "distillation_metric_by_alpha": None,
            "distillation_metric_bytes": None, "distillation_metric_bytes_by_alpha": None}


def _dm_fields(
    entry: Mapping[str, Any], teacher: Mapping[str, Any], alpha: float
) -> dict[str, Any]:
    """A student's DM at `alpha` and at every DM_ALPHAS, with size = parameters (`distillation_metric`)
    and size = bytes on disk (`distillation_metric_bytes`); null with the reason when undefined."""
    try:
        by_size = {
            size: {
                str(float(a)): distillation_metric(entry[size], teacher[size], entry["score"], teacher["score"], a)
                for a in sorted({*DM_ALPHAS, float(alpha)})
            }
            for size in ("params", "size_bytes")
        }
    except ValueError as error:
        return {**_no_dm(), "distillation_metric_error": str(error)}
    return {
        "distillation_metric": by_size["params"][str(float(alpha))],
        "distillation_metric_by_alpha": by_size["params"],
        "distillation_metric_bytes": by_size["size_bytes"][str(float(alpha))],
        "distillation_metric_bytes_by_alpha": by_size["size_bytes"],
    }


def _time_interleaved(
    models: Mapping[str, nn.Module],
    batches: Mapping[str, list[list[dict[str, Any]] | dict[str, Any]]],
    data_collator: Collator | None,
    warmup: int,
    repeats: int,
    best_of: int,
) -> tuple[float | None, dict[str, dict[str, float]]]:
    """Mean padded length of the first model's batches and, per model, p50/p90/mean ms over
    `repeats` rotations (`batches`: each model's own, the same rows)."""
    names = list(models)
    prepared = {
        name: [_prepare_inputs(b, models[name], data_collator) for b in batches[name]] for name in names
    }
    lengths = [_seq_len(b) for b in prepared[names[0]]]
    seq_len = float(np.mean(lengths)) if all(n is not None for n in lengths) else None
    for name in names:
        for i in range(warmup):
            models[name](**prepared[name][i % len(prepared[name])])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(_time_call(models[name], prepared[name][r % len(prepared[name])], best_of))
    stats = {}
    for name, samples in times.items():
        ms = np.asarray(samples)
        stats[name] = {
            "p50": float(np.percentile(ms, 50)),
            "p90": float(np.percentile(ms, 90)),
            "mean": float(ms.mean()),
        }
    return seq_len, stats


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
    data_collator: Collator | None,
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


def _score(metrics: Mapping[str, float], metric_name: str, model_name: str) -> float:
    for key in (metric_name, f"eval_{metric_name}"):
        if key in metrics:
            return metrics[key]
    raise KeyError(
        f"metric {metric_name!r} not in the metrics of {model_name!r}: {sorted(metrics)}; "
        "set metric_name to one of them."
    )
