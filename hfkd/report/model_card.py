"""README.md model cards for distilled students.

The Hub reads the YAML front matter (base model, datasets, model-index results) to link the student
to its teacher and show its scores, and people read the body: what was distilled and how, how it
compares with the teacher (the hfkd report table with the distillation metric), and how to load it.
The metadata is built with `huggingface_hub.ModelCardData`, so it follows the Hub's own schema.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from hfkd.report.io import atomic_write
from hfkd.report.render import markdown_table, report_to_markdown

# hfkd task names (hfkd.metrics.TASKS, with "_" or "-") and Hub pipeline tags
# -> (pipeline tag, Auto class to load with)
_TASKS = {
    "sequence-classification": ("text-classification", "AutoModelForSequenceClassification"),
    "sequence-regression": ("text-classification", "AutoModelForSequenceClassification"),
    "text-classification": ("text-classification", "AutoModelForSequenceClassification"),
    "token-classification": ("token-classification", "AutoModelForTokenClassification"),
    "question-answering": ("question-answering", "AutoModelForQuestionAnswering"),
    "multiple-choice": ("multiple-choice", "AutoModelForMultipleChoice"),
    "masked-lm": ("fill-mask", "AutoModelForMaskedLM"),
    "fill-mask": ("fill-mask", "AutoModelForMaskedLM"),
    "causal-lm": ("text-generation", "AutoModelForCausalLM"),
    "text-generation": ("text-generation", "AutoModelForCausalLM"),
    "seq2seq-lm": ("text2text-generation", "AutoModelForSeq2SeqLM"),
    "text2text-generation": ("text2text-generation", "AutoModelForSeq2SeqLM"),
    "summarization": ("summarization", "AutoModelForSeq2SeqLM"),
    "translation": ("translation", "AutoModelForSeq2SeqLM"),
}
# Trainer.evaluate() bookkeeping that is not a model-quality metric
_NOT_METRICS = {"runtime", "samples_per_second", "steps_per_second", "epoch", "loss"}
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def build_model_card(
    *,
    model_name: str,
    teacher_name: str,
    dataset_names: list[str],
    metrics: Mapping[str, float],
    task: str,
    distillation_settings: Mapping[str, Any],
    report: Mapping[str, Any] | None = None,
    license: str | None = None,
) -> str:
    """README.md text: Hub metadata (front matter) plus a body on the distillation and its results.

    `metrics` are scores on `dataset_names[0]` (the evaluation set); Trainer-style `eval_` prefixes
    and bookkeeping entries (runtime, loss, ...) are dropped. `task` is an hfkd task name or a Hub
    pipeline tag. `report` is `hfkd.report.build_report`'s output, rendered with its DM ranking.
    """
    if not dataset_names:
        raise ValueError("dataset_names must name at least the evaluation dataset.")
    pipeline_tag, auto_class = _TASKS.get(task.replace("_", "-"), (task, "AutoModel"))
    scores = _clean_metrics(metrics)
    card_data = _card_data(model_name, teacher_name, dataset_names, scores, pipeline_tag, license)
    teacher_ref = (
        f"[{teacher_name}](https://huggingface.co/{teacher_name})"
        if _HUB_ID.match(teacher_name) and not os.path.exists(teacher_name)
        else f"`{teacher_name}`"
    )
    sections = [
        f"# {model_name}",
        f"This model is a student distilled from {teacher_ref} with "
        "hfkd (knowledge distillation for the Hugging Face stack) for "
        f"{pipeline_tag} on {', '.join(f'`{d}`' for d in dataset_names)}.",
        "## Results\n\n"
        + markdown_table(("metric", "value"), [(k, _fmt(v)) for k, v in scores.items()])
        + f"\n\nEvaluated on `{dataset_names[0]}`.",
        "## Distillation settings\n\n"
        + markdown_table(
            ("setting", "value"), [(k, _fmt(v)) for k, v in distillation_settings.items()]
        ),
    ]
    if report is not None:
        sections.append("## Comparison with the teacher\n\n" + report_to_markdown(report).strip())
    sections.append(
        "## How to use\n\n"
        "```python\n"
        f"from transformers import {auto_class}, AutoTokenizer\n\n"
        f'model = {auto_class}.from_pretrained("{model_name}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{model_name}")\n'
        "```"
    )
    return f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


def _card_data(
    model_name: str,
    teacher_name: str,
    dataset_names: list[str],
    scores: Mapping[str, float],
    pipeline_tag: str,
    license: str | None,
) -> ModelCardData:
    """The front matter: the teacher as base model, and the scores as Hub eval results."""
    return ModelCardData(
        model_name=model_name,
        base_model=teacher_name,
        datasets=list(dataset_names),
        metrics=list(scores),
        tags=["hfkd", "distillation", "knowledge-distillation", pipeline_tag],
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        license=license,
        eval_results=[
            EvalResult(
                task_type=pipeline_tag,
                dataset_type=dataset_names[0],
                dataset_name=dataset_names[0],
                metric_type=name,
                metric_value=value,
            )
            for name, value in scores.items()
        ],
    )


def write_model_card(output_dir: str | os.PathLike, text: str) -> Path:
    """Write README.md into `output_dir` atomically (a kill never leaves a truncated card)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write(output_dir / "README.md", text)


def _clean_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    cleaned = {}
    for key, value in metrics.items():
        name = key.removeprefix("eval_")
        if name in _NOT_METRICS or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) or hasattr(value, "__float__"):
            value = float(value)
            if math.isfinite(value):
                cleaned[name] = value
    return cleaned


def _fmt(value: Any) -> str:
    """A setting or score as table text: floats to 4 significant digits, containers as JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)
