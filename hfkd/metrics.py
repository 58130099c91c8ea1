"""Task metrics through the `evaluate` interface, offline.

`evaluate.load("accuracy")` fetches a script from the Hugging Face Hub, so hfkd ships its own
metric modules (hfkd/metric_modules/<name>/<name>.py) and loads them by local path.
`build_compute_metrics` turns them into a `compute_metrics` callable for `transformers.Trainer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import evaluate
import numpy as np

if TYPE_CHECKING:
    import torch
    from transformers import EvalPrediction

IGNORE_INDEX = -100
"""Label id that the loss and these metrics skip (padding, non-first sub-words, unmasked tokens)."""

_MODULES_DIR = Path(__file__).resolve().parent / "metric_modules"

BUNDLED_METRICS: tuple[str, ...] = tuple(
    sorted(p.name for p in _MODULES_DIR.iterdir() if (p / f"{p.name}.py").is_file())
)
"""Metric names that `load_metric` resolves without the network."""

DEFAULT_METRIC: dict[str, str] = {
    "sequence_classification": "accuracy",
    "sequence_regression": "pearsonr",
    "token_classification": "f1",
    "masked_lm": "accuracy",
    "causal_lm": "accuracy",
}
"""Main score per task, as a key of the dict that `build_compute_metrics` returns."""

TASKS: tuple[str, ...] = tuple(DEFAULT_METRIC)

# Metric names that select a bundled module with fixed compute arguments; the result key is the name.
_F1_VARIANTS = {f"f1_{average}": average for average in ("binary", "macro", "micro", "weighted")}

_DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    "sequence_classification": ("accuracy", "f1"),
    "sequence_regression": ("pearsonr", "spearmanr"),
    "masked_lm": ("accuracy",),
    "causal_lm": ("accuracy",),
}

MetricsFn = Callable[["EvalPrediction"], dict[str, float]]


def load_metric(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """Load a metric without the Hub when hfkd bundles it; otherwise try `evaluate.load(name)`.

    `kwargs` go to `evaluate.load` (e.g. `keep_in_memory=True`, `experiment_id=...`).
    """
    if name in BUNDLED_METRICS:
        return evaluate.load(str(_MODULES_DIR / name / f"{name}.py"), **kwargs)
    try:
        return evaluate.load(name, **kwargs)
    except Exception as err:  # evaluate raises many types (offline, not found, bad script)
        raise ValueError(
            f"metric {name!r} is not bundled with hfkd and evaluate.load({name!r}) failed "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            f"bundled metrics: {', '.join(BUNDLED_METRICS)}"
        ) from err


def perplexity_from_loss(eval_loss: float) -> float:
    """Perplexity from a mean token NLL in nats, e.g. Trainer's `eval_loss` on a language model.

    exp(eval_loss), with inf instead of an OverflowError for a diverged model.
    """
    try:
        return math.exp(eval_loss)
    except OverflowError:
        return math.inf


def preprocess_logits_for_metrics(logits: torch.Tensor | tuple, labels: torch.Tensor) -> torch.Tensor:
    """Argmax on the device before Trainer gathers predictions.

    Pass as `Trainer(preprocess_logits_for_metrics=...)` for token and LM tasks: keeping full
    vocabulary logits for a whole eval set costs N x T x V floats of memory.
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.argmax(dim=-1)


def build_compute_metrics(
    task: str,
    metric_names: Sequence[str] | None = None,
    id2label: Mapping[int, str] | None = None,
) -> MetricsFn:
    """Build `compute_metrics` for `Trainer`, returning plain keys (`accuracy`, `f1`, ...).

    Tasks:
    - "sequence_classification": defaults to accuracy + f1 (binary f1 for 2 classes, macro f1
      otherwise; the class count comes from id2label, else the logits width). One-column logits
      switch to regression (pearsonr + spearmanr), as `num_labels=1` does in transformers.
    - "sequence_regression": pearsonr + spearmanr.
    - "token_classification": seqeval entity-level precision/recall/f1 + tag accuracy; needs id2label.
    - "masked_lm" / "causal_lm": token accuracy over labels != -100 (perplexity is
      `perplexity_from_loss(metrics["eval_loss"])`, not computable from ids); causal_lm compares the
      prediction at position t with the label at t + 1, as the model's loss does.

    `metric_names` replaces the defaults with any loadable metric; "f1_macro", "f1_micro",
    "f1_weighted" and "f1_binary" pick an f1 average and are returned under that name. Token
    classification only supports "seqeval". Predictions may be logits or argmaxed ids
    (see `preprocess_logits_for_metrics`); tuples are reduced to their first element.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if task == "token_classification":
        return _token_classification_metrics(metric_names, id2label)
    modules = _load_all(metric_names or _DEFAULT_NAMES[task])
    if task == "sequence_regression":
        return _regression_metrics(modules)
    regression_fn = None
    if task == "sequence_classification":
        # One-column logits (num_labels=1) mean regression: default names switch to its metrics.
        regression_modules = modules if metric_names else _load_all(_DEFAULT_NAMES["sequence_regression"])
        regression_fn = _regression_metrics(regression_modules)
    num_labels = len(id2label) if id2label else None

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        predictions, labels = _first(eval_pred.predictions), np.asarray(_first(eval_pred.label_ids))
        if regression_fn is not None and _is_regression_output(predictions):
            return regression_fn(eval_pred)
        predictions = _argmax(predictions)
        if task == "causal_lm":
            predictions, labels = predictions[:, :-1], labels[:, 1:]
        keep = labels != IGNORE_INDEX
        predictions, labels = predictions[keep], labels[keep]
        num_classes = num_labels or _num_classes(eval_pred.predictions, predictions, labels)
        return _compute_all(modules, predictions, labels, num_classes)

    return compute_metrics


def _regression_metrics(modules: Mapping[str, evaluate.EvaluationModule]) -> MetricsFn:
    """compute_metrics for one-score-per-example outputs."""

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        predictions = np.asarray(_first(eval_pred.predictions), dtype=np.float64).reshape(-1)
        labels = np.asarray(_first(eval_pred.label_ids), dtype=np.float64).reshape(-1)
        results: dict[str, float] = {}
        for module in modules.values():
            results.update(_floats(module.compute(predictions=predictions, references=labels)))
        return results

    return compute_metrics


def _token_classification_metrics(
    metric_names: Sequence[str] | None, id2label: Mapping[int, str] | None
) -> MetricsFn:
    """compute_metrics that turns ids into tag strings and scores entities with seqeval."""
    if metric_names is not None and list(metric_names) != ["seqeval"]:
        raise ValueError(f"token_classification supports metric_names=['seqeval'] only, got {list(metric_names)}")
    if not id2label:
        raise ValueError("token_classification needs id2label (e.g. model.config.id2label) to build tag strings")
    tags = {int(i): label for i, label in id2label.items()}
    seqeval = _load_in_memory("seqeval")

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        predictions = _argmax(_first(eval_pred.predictions))
        labels = np.asarray(_first(eval_pred.label_ids))
        pred_tags, true_tags = [], []
        for pred_row, label_row in zip(predictions, labels):
            keep = label_row != IGNORE_INDEX
            if keep.any():
                pred_tags.append([tags[int(i)] for i in pred_row[keep]])
                true_tags.append([tags[int(i)] for i in label_row[keep]])
        return _floats(seqeval.compute(predictions=pred_tags, references=true_tags))

    return compute_metrics


def _load_all(names: Sequence[str]) -> dict[str, evaluate.EvaluationModule]:
    """Modules by requested name; the f1_<average> names share the f1 module."""
    return {name: _load_in_memory("f1" if name in _F1_VARIANTS else name) for name in names}


def _load_in_memory(name: str) -> evaluate.EvaluationModule:
    # keep_in_memory: no cache files, so several processes (DDP) cannot collide on them.
    return load_metric(name, keep_in_memory=True)


def _compute_all(
    modules: Mapping[str, evaluate.EvaluationModule],
    predictions: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
) -> dict[str, float]:
    """Run each classification metric; f1 averages follow the class count unless named."""
    results: dict[str, float] = {}
    for name, module in modules.items():
        kwargs: dict[str, Any] = {}
        if name == "f1":
            kwargs["average"] = "binary" if num_classes <= 2 else "macro"
        elif name in _F1_VARIANTS:
            kwargs["average"] = _F1_VARIANTS[name]
        output = _floats(module.compute(predictions=predictions, references=labels, **kwargs))
        if name in _F1_VARIANTS:
            output = {name: output["f1"]}
        results.update(output)
    return results


def _first(value: Any) -> Any:
    """Models with extra outputs (hidden states, ...) make Trainer return tuples: logits come first."""
    while isinstance(value, (tuple, list)):
        value = value[0]
    return value


def _argmax(predictions: Any) -> np.ndarray:
    """Logits (float, class axis last) to ids; already-argmaxed integer ids pass through."""
    array = np.asarray(predictions)
    return array.argmax(axis=-1) if np.issubdtype(array.dtype, np.floating) else array


def _is_regression_output(predictions: Any) -> bool:
    array = np.asarray(predictions)
    return np.issubdtype(array.dtype, np.floating) and (array.ndim == 1 or array.shape[-1] == 1)


def _num_classes(raw_predictions: Any, predictions: np.ndarray, labels: np.ndarray) -> int:
    """Logits width when logits were kept, else the largest id seen (may undercount: pass id2label)."""
    raw = np.asarray(_first(raw_predictions))
    if np.issubdtype(raw.dtype, np.floating):
        return int(raw.shape[-1])
    return int(max(predictions.max(initial=0), labels.max(initial=0))) + 1


def _floats(result: Mapping[str, Any] | None) -> dict[str, float]:
    """Scalar entries only: Trainer logs floats (seqeval's per_type dict stays out)."""
    return {key: float(value) for key, value in (result or {}).items() if np.isscalar(value)}
