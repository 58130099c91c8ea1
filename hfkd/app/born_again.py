"""Self-distillation: born-again networks (Furlanello et al. 2018, "Born-Again Neural Networks").

Generation 0 is the given (fine-tuned) teacher; generation k is a fresh student distilled from
generation k-1, which it then replaces as the teacher of generation k+1. With a student of the
teacher's own architecture this is born-again training; the students of every generation start
from the same initialisation:

- `student_model_name_or_path`: that checkpoint, reloaded for every generation (e.g. the
  pretrained model the teacher was fine-tuned from);
- `student_num_layers` / `student_layer_indices` / `student_hidden_size`: `create_student` from
  generation 0 (a smaller student, distilled in a chain of generations);
- neither: the teacher's architecture, randomly re-initialised (seeded), as in the paper.

Generation k is saved in `output_dir/gen_k` (model, tokenizer, eval_results.json, as one set: a kill
leaves a generation complete or absent); the scores of every generation, the teacher's included, go
to `output_dir/born_again.json` and `born_again.md`. A rerun into an `output_dir` holding generations
is refused unless `--overwrite_output_dir` (like the other recipes; generations are not resumed).
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel, set_seed

from hfkd.config import option
from hfkd.app.arguments import ModelArguments
from hfkd.io import recover, staged
from hfkd.models import resolve_model_path
from hfkd.config import DistillationConfig
from hfkd.app.task_data import DataArguments, build_data_collator, load_raw_datasets
from hfkd.metrics import DEFAULT_METRIC, build_compute_metrics
from hfkd.app.recipes import (
    build_student,
    card_dataset_names,
    check_output_dir,
    check_sequence_length,
    load_teachers,
    match_teacher_labels,
    prepare_task_data,
    task_model_class,
    task_trainer_kwargs,
    train_and_save,
)
from hfkd.objective.projections import PROJECTIONS_ATTR
from hfkd.report.measure import evaluate_model
from hfkd.report.render import markdown_table
from hfkd.trainers.distillation import DistillationTrainer

GENERATION_DIR = "gen_{}"
SUMMARY_NAME = "born_again"


@dataclass
class BornAgainConfig(DistillationConfig):
    """`DistillationConfig` plus the number of born-again generations; every generation uses the
    same objective (alpha_* terms, temperature) and the same training budget."""

    generations: int = option(
        2,
        "Born-again generations to train after the teacher (generation 0); generation k is "
        "distilled from generation k-1 and saved in output_dir/gen_k.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.generations, int) or isinstance(self.generations, bool) or self.generations < 1:
            raise ValueError(f"generations must be an integer >= 1, got {self.generations!r}.")
        if self.teacher_cache_dir:
            raise ValueError(
                "teacher_cache_dir caches one fixed teacher, but each born-again generation has a new one: unset it."
            )


def generation_dir(output_dir: str, generation: int) -> str:
    return os.path.join(output_dir, GENERATION_DIR.format(generation))


def check_generations(args: BornAgainConfig, model_args: ModelArguments) -> None:
    """Refuse to train generations over an earlier born-again run's (they would silently replace its gen_k)."""
    out = args.output_dir
    if model_args.overwrite_output_dir or not os.path.isdir(out):
        return
    generations = [n for n in os.listdir(out) if re.fullmatch(GENERATION_DIR.format(r"\d+"), n)]
    for folder in [out, *(os.path.join(out, n) for n in generations)] if args.should_save else ():
        recover(folder)  # finish a save that a kill interrupted
    earlier = sorted(generations + [n for n in os.listdir(out) if n.startswith(SUMMARY_NAME + ".")])
    if earlier:
        raise ValueError(f"output_dir {out} already holds a born-again run ({', '.join(earlier[:3])}); pass "
                         "--overwrite_output_dir to replace it, or choose another output_dir.")


def run_born_again(model_args: ModelArguments, data_args: DataArguments, args: BornAgainConfig) -> dict[str, Any]:
    """Recipe: train `args.generations` generations; returns the summary (also written to output_dir)."""
    check_generations(args, model_args)
    check_output_dir(args, model_args)
    task = model_args.task
    teachers, tokenizer = load_teachers(model_args, args, "born-again training")
    if len(teachers) > 1:
        raise ValueError("born-again training starts from one teacher (generation 0): give one "
                         "teacher_model_name_or_path.")
    teacher = teachers[0]
    names = model_args.teacher_model_name_or_path
    teacher_path = resolve_model_path(names if isinstance(names, str) else names[0])
    datasets, labels = prepare_task_data(task, load_raw_datasets(data_args), tokenizer, data_args, teacher.config)
    match_teacher_labels([teacher], labels)
    check_sequence_length(data_args, teacher)
    metric = DEFAULT_METRIC[task]
    rows = []
    if "validation" in datasets:
        id2label = dict(enumerate(labels)) if labels else None
        scores = evaluate_model(teacher, datasets["validation"], build_data_collator(tokenizer, data_args, task),
                                build_compute_metrics(task, id2label=id2label), args.per_device_eval_batch_size)
        rows.append({"generation": 0, "path": teacher_path, "teacher": None,
                     **{f"eval_{k}": v for k, v in scores.items()}})

    gen0, teacher_name = teacher, teacher_path
    for generation in range(1, args.generations + 1):
        set_seed(args.seed)  # every generation's student starts from the same initialisation
        student = new_generation_student(model_args, gen0, task)
        gen_args = copy.deepcopy(args)
        gen_args.output_dir = generation_dir(args.output_dir, generation)
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=gen_args, dataset_names=card_dataset_names(data_args),
            **task_trainer_kwargs(task, datasets, tokenizer, data_args, labels),
        )
        metrics = train_and_save(trainer, task)
        rows.append({"generation": generation, "path": gen_args.output_dir, "teacher": teacher_name, **metrics})
        # The next generation distills from this one, as saved: without its width projections.
        if hasattr(student, PROJECTIONS_ATTR):
            delattr(student, PROJECTIONS_ATTR)
        teacher, teacher_name = student, gen_args.output_dir
        del trainer
    summary = {"metric": f"eval_{metric}", "generations": rows, "settings": {"generations": args.generations}}
    if args.should_save:
        write_summary(summary, args.output_dir)
    return summary


def new_generation_student(model_args: ModelArguments, teacher: PreTrainedModel, task: str) -> PreTrainedModel:
    """A fresh student: the given checkpoint or `create_student` spec, else the teacher's
    architecture re-initialised (call `set_seed` first for a reproducible initialisation)."""
    if (model_args.student_model_name_or_path or model_args.student_num_layers or model_args.student_layer_indices
            or model_args.student_hidden_size):
        return build_student(model_args, teacher, task)
    return task_model_class(task).from_config(copy.deepcopy(teacher.config))


def write_summary(summary: dict[str, Any], output_dir: str) -> None:
    """born_again.json and a Markdown table of the generations' scores."""
    metric = summary["metric"]
    rows = []
    for row in summary["generations"]:
        score = row.get(metric)
        teacher = "–" if row["teacher"] is None else os.path.basename(os.path.normpath(row["teacher"]))
        rows.append([row["generation"], teacher, "–" if score is None else f"{score:.4f}", row["path"]])
    table = markdown_table(["generation", "teacher", metric, "model"], rows)
    summary = {**summary, "markdown": table}
    with staged(output_dir) as folder:  # both files, or neither
        with open(os.path.join(folder, SUMMARY_NAME + ".json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        with open(os.path.join(folder, SUMMARY_NAME + ".md"), "w", encoding="utf-8") as handle:
            handle.write(summary["markdown"] + "\n")
