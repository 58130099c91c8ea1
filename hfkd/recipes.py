"""What the recipe scripts and the `hfkd` console script run: fine-tune a teacher, distill a student.

Each entry point takes `(ModelArguments, DataArguments, TrainingArguments/DistillationConfig)` and
ends by writing the model (tokenizer included), `eval_results.json` and `all_results.json` in
`output_dir`. Multi-process runs come from `accelerate launch`; only the main process writes.
"""

from __future__ import annotations

import atexit
import logging
import sys
from typing import Any, Callable, Sequence

import torch
from transformers import AutoTokenizer, PreTrainedModel, Trainer, TrainingArguments, set_seed

from hfkd.arguments import ModelArguments, parse_args, resolve_model_path
from hfkd.config import DistillationConfig
from hfkd.data import (
    DataArguments,
    build_data_collator,
    load_raw_datasets,
    prepare_classification_datasets,
    prepare_lm_datasets,
    prepare_token_classification_datasets,
)
from hfkd.metrics import build_compute_metrics, perplexity_from_loss, preprocess_logits_for_metrics
from hfkd.student import create_student
from hfkd.trainer import DistillationTrainer
from hfkd.validation import TASK_AUTO_CLASSES

logger = logging.getLogger(__name__)
TASKS = tuple(TASK_AUTO_CLASSES)


def _auto_class(task: str):
    if task not in TASK_AUTO_CLASSES:
        raise ValueError(f"task={task!r} is not supported; use one of {list(TASKS)}.")
    return TASK_AUTO_CLASSES[task][1]


def _is_default_labels(id2label: dict) -> bool:
    return all(str(label) == f"LABEL_{i}" for i, label in id2label.items())


def prepare_task_data(
    task: str, raw: Any, tokenizer: Any, data_args: DataArguments, model_config: Any = None
) -> tuple[Any, list[str] | None]:
    """Tokenized splits for `task`, and the label names by id (classification tasks)."""
    if task == "sequence_classification":
        label2id = None
        if model_config is not None and not _is_default_labels(model_config.id2label):
            label2id = dict(model_config.label2id)
        return prepare_classification_datasets(raw, tokenizer, data_args, label2id=label2id)
    if task == "token_classification":
        if model_config is None or _is_default_labels(model_config.id2label):
            raise ValueError(
                "token classification needs the tag names: fine-tune the teacher with hfkd finetune "
                "(it stores id2label) or set the teacher config's id2label."
            )
        labels = [model_config.id2label[i] for i in range(len(model_config.id2label))]
        return prepare_token_classification_datasets(raw, tokenizer, data_args, labels), labels
    return prepare_lm_datasets(raw, tokenizer, data_args, task=task), None


def _trainer_kwargs(task: str, datasets: Any, tokenizer: Any, data_args: DataArguments, labels: Any) -> dict:
    id2label = dict(enumerate(labels)) if labels else None
    kwargs = dict(
        train_dataset=datasets.get("train"),
        eval_dataset=datasets.get("validation"),
        processing_class=tokenizer,
        data_collator=build_data_collator(tokenizer, data_args, task),
        compute_metrics=build_compute_metrics(task, id2label=id2label),
    )
    if task != "sequence_classification":
        kwargs["preprocess_logits_for_metrics"] = preprocess_logits_for_metrics
    return kwargs


def _finish(trainer: Trainer, task: str) -> dict[str, float]:
    """Train (resuming if asked), save the model and tokenizer, evaluate, write the results."""
    args = trainer.args
    if trainer.train_dataset is None:
        raise ValueError("no train split: set train_file (or dataset_name with a train split).")
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_metrics("train", result.metrics)
    metrics: dict[str, float] = {}
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        if task in ("masked_lm", "causal_lm"):
            metrics["eval_perplexity"] = perplexity_from_loss(metrics["eval_loss"])
        trainer.save_metrics("eval", metrics)
    trainer.save_state()
    return metrics


def run_finetune(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict:
    """Plain fine-tuning (teachers must often be made first): the same data path as distillation."""
    if not model_args.model_name_or_path:
        raise ValueError("finetune needs model_name_or_path (a checkpoint folder or Hub name).")
    set_seed(args.seed)
    task = model_args.task
    path = resolve_model_path(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)
    raw = load_raw_datasets(data_args)
    datasets, labels = prepare_task_data(task, raw, tokenizer, data_args)
    model_kwargs: dict[str, Any] = {"trust_remote_code": model_args.trust_remote_code,
                                    "ignore_mismatched_sizes": model_args.ignore_mismatched_sizes}
    if labels:
        model_kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    model = _auto_class(task).from_pretrained(path, **model_kwargs)
    trainer = Trainer(model=model, args=args, **_trainer_kwargs(task, datasets, tokenizer, data_args, labels))
    return _finish(trainer, task)


def build_student(model_args: ModelArguments, teacher: PreTrainedModel, task: str) -> PreTrainedModel:
    """Load the student checkpoint, or derive one from the teacher with `create_student`."""
    if model_args.student_model_name_or_path:
        path = resolve_model_path(model_args.student_model_name_or_path)
        kwargs: dict[str, Any] = {"trust_remote_code": model_args.trust_remote_code}
        if task in ("sequence_classification", "token_classification"):
            kwargs.update(num_labels=teacher.config.num_labels, id2label=teacher.config.id2label,
                          label2id=teacher.config.label2id)
        return _auto_class(task).from_pretrained(path, **kwargs)
    if not (model_args.student_num_layers or model_args.student_layer_indices or model_args.student_hidden_size):
        raise ValueError(
            "no student given: set student_model_name_or_path, or student_num_layers / "
            "student_layer_indices / student_hidden_size to build one from the teacher."
        )
    return create_student(
        teacher,
        num_layers=model_args.student_num_layers,
        layer_indices=model_args.student_layer_indices,
        hidden_size=model_args.student_hidden_size,
        intermediate_size=model_args.student_intermediate_size,
        num_attention_heads=model_args.student_num_attention_heads,
    )


def run_distillation(model_args: ModelArguments, data_args: DataArguments, args: DistillationConfig) -> dict:
    """Distill the teacher into a student on the task's data; returns the student's eval metrics."""
    if not model_args.teacher_model_name_or_path:
        raise ValueError("distillation needs teacher_model_name_or_path (a fine-tuned checkpoint).")
    set_seed(args.seed)
    task = model_args.task
    teacher_path = resolve_model_path(model_args.teacher_model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(teacher_path, trust_remote_code=model_args.trust_remote_code)
    teacher_kwargs: dict[str, Any] = {"trust_remote_code": model_args.trust_remote_code,
                                      **(args.teacher_model_init_kwargs or {})}
    if args.alpha_attention > 0:
        teacher_kwargs.setdefault("attn_implementation", "eager")
    teacher = _auto_class(task).from_pretrained(teacher_path, **teacher_kwargs)
    raw = load_raw_datasets(data_args)
    datasets, labels = prepare_task_data(task, raw, tokenizer, data_args, teacher.config)
    if labels and len(labels) != teacher.config.num_labels:
        raise ValueError(
            f"the data has {len(labels)} labels {labels} but the teacher has num_labels="
            f"{teacher.config.num_labels} ({teacher.config.id2label}); fine-tune the teacher on this label set."
        )
    if labels and _is_default_labels(teacher.config.id2label):
        # Name the teacher's classes after the data so the saved student carries real labels.
        teacher.config.id2label = dict(enumerate(labels))
        teacher.config.label2id = {label: i for i, label in enumerate(labels)}
    student = build_student(model_args, teacher, task)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        **_trainer_kwargs(task, datasets, tokenizer, data_args, labels),
    )
    return _finish(trainer, task)


def main(run: Callable, argv: Sequence[str] | None, config_class: type = DistillationConfig) -> dict:
    """Parse `[--config C.yaml] [flags]`, run, and turn setup errors into one line (unless --debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("hfkd").setLevel(logging.INFO)
    atexit.register(_destroy_process_group)  # at exit, so chained recipes share one process group
    try:
        model_args, data_args, train_args = parse_args([ModelArguments, DataArguments, config_class], argv)
        return run(model_args, data_args, train_args)
    except (ValueError, TypeError, OSError, FloatingPointError) as error:
        if debug:
            raise
        print(f"hfkd: error: {error}".splitlines()[0] + " (rerun with --debug for the traceback)",
              file=sys.stderr)
        raise SystemExit(2) from None


def _destroy_process_group() -> None:
    # Without this, processes started by `accelerate launch` abort at exit (SIGABRT).
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

