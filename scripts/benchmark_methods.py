"""Distillation families against plain logit KD: same 3-layer student, same data, same steps.

    python scripts/benchmark_methods.py --task sst2 [--train_size 20000] [--epochs 2] [--output_root outputs/methods]
    python scripts/benchmark_methods.py --task mrpc          # or rte: the full train split by default

Every student starts from layers 0, 2, 4 of the fine-tuned MiniLM-L6 teacher (like
recipes/configs/sst2_minilm_l3.yaml) and trains for the same number of optimizer steps with the
same hyper-parameters (that config's), on the same seeded subsample:

- no_teacher: fine-tuning alone (CE);            - logit_kd: 0.2·CE + 0.8·KD(T=2), the reference;
- mutual: deep mutual learning with a second 3-layer peer (teacher layers 1, 3, 5), no teacher (T=1, as DML);
- online_teacher: a 6-layer MiniLM *not* fine-tuned, trained alongside the student (mutual learning, T=1);
- born_again: 2 generations of the 3-layer student, generation 0 being no_teacher (same architecture);
- augment_kd: logit KD on TinyBERT-augmented data (`--augment_copies` copies per example; the MLM is
  `--augment_mlm`, by default MiniLM-L6 with an MLM head fitted on WikiText-2, built here). Building
  the copies costs one MLM forward per replaced word (cached by `datasets` for reruns);
- `--method NAME="--flag value ..."`: logit KD plus any DistillationConfig overrides (e.g. the
  relation, two-stage or preset options); `config_override_methods` below holds the relation
  (MiniLMv2), DistilBERT-style hidden cosine, PKD and two-stage TinyBERT rows.

Writes methods.json and methods.md (dev score, parameters, size, DM and the difference to plain KD)
in output_root/<task>; finished runs are reused on a rerun. Nothing is tuned on the dev set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
from typing import Any, Callable

from benchmarking import (  # first: it sets up the environment transformers reads on import
    CONFIGS, DATA_DIR, PRETRAINED, data_flags, done, ensure_teacher, save_layer_student, write_results,
)
from transformers import AutoModelForSequenceClassification, TrainingArguments

from hfkd.app.born_again import BornAgainConfig, generation_dir, run_born_again
from hfkd.trainers.mutual import MutualDistillationConfig
from hfkd.app.recipes import main as run_recipe
from hfkd.app.recipes import run_distillation, run_finetune, run_mutual_learning
from hfkd.report.measure import safetensors_size
from hfkd.report.render import markdown_table
from hfkd.app.report_cli import eval_results, summarize

# Column flags per GLUE task (the recipe configs are SST-2's); train_size None = the full train split.
# The pair tasks get 128 tokens (two sentences) and a teacher fine-tuned for 3 epochs: one epoch of
# MRPC/RTE (115/78 steps) leaves MiniLM near the majority class.
TASKS: dict[str, dict[str, Any]] = {
    "sst2": {"columns": ["--text_column", "sentence", "--label_column", "label"], "train_size": 20000,
             "teacher_epochs": 1},
    "mrpc": {"columns": ["--text_column", "#1 String", "--text_pair_column", "#2 String", "--label_column",
                         "Quality", "--max_seq_length", "128"], "train_size": None, "teacher_epochs": 3},
    "rte": {"columns": ["--text_column", "sentence1", "--text_pair_column", "sentence2", "--label_column",
                        "label", "--max_seq_length", "128"], "train_size": None, "teacher_epochs": 3},
}


def config_override_methods(steps: int) -> dict[str, list[str]]:
    """Rows that are the logit-KD run plus DistillationConfig flags (the published settings of each
    family, hfkd.objective.presets, on top of the same student, data and `steps`)."""
    first = steps // 2
    stages = [  # TinyBERT: intermediate layers (+ embeddings) first, then the prediction layer at T=1
        {"max_steps": first, "alpha_hidden": 1.0, "alpha_attention": 1.0, "alpha_kd": 0.0, "alpha_ce": 0.0},
        {"max_steps": steps - first, "alpha_hidden": 0.0, "alpha_attention": 0.0, "alpha_kd": 1.0, "alpha_ce": 0.0},
    ]
    return {
        "relation_minilmv2": ["--alpha_relation", "1.0", "--relations", "qq,kk,vv"],
        "hidden_cosine_distilbert": ["--alpha_hidden", "1.0", "--hidden_loss", "cosine", "--layer_mapping", "last"],
        "pkd": ["--alpha_kd", "0.5", "--alpha_ce", "0.5", "--temperature", "10", "--alpha_hidden", "100",
                "--hidden_loss", "pkd_cls", "--layer_mapping", "pkd_skip"],
        "two_stage_tinybert": ["--stages", json.dumps(stages), "--kd_loss", "ce", "--temperature", "1",
                               "--hidden_loss", "mse", "--attention_loss", "mse", "--include_embeddings", "true",
                               "--layer_mapping", "uniform"],
    }


INIT, PEER_INIT = "init_l3_024", "init_l3_135"  # the student's and the mutual peer's starting points
STEPS_NOTE = {"two_stage_tinybert": "half the steps on hidden+attention, half on logits", "mutual": "2 models trained", "online_teacher": "6-layer teacher trained too",
              "born_again": "2 generations: 2x the steps", "augment_kd": "augmented data"}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="sst2")
    parser.add_argument("--data_dir", default=None, help="GLUE folder with train.tsv/dev.tsv (default: shared data).")
    parser.add_argument("--output_root", default="outputs/methods")
    parser.add_argument("--teacher_dir", default=None, help="A fine-tuned teacher (default: fine-tune one here).")
    parser.add_argument("--teacher_train_samples", type=int, default=None, help="Default: the full train split.")
    parser.add_argument("--teacher_epochs", type=float, default=None, help="Default: 1 for SST-2, 3 for MRPC/RTE.")
    parser.add_argument("--train_size", type=int, default=None, help="Student training examples (task default).")
    parser.add_argument("--epochs", type=float, default=2.0, help="Sets the step count: epochs over train_size.")
    parser.add_argument("--max_steps", type=int, default=None, help="Overrides --epochs.")
    parser.add_argument("--methods", nargs="+", default=None, help="Run only these rows (default: all).")
    parser.add_argument("--method", action="append", default=[], metavar='NAME="--flag value ..."',
                        help="Extra row: logit KD plus these DistillationConfig flags (repeatable).")
    parser.add_argument("--augment_mlm", default=None, help="Masked LM for augment_kd (default: built here).")
    parser.add_argument("--augment_copies", type=int, default=4)
    parser.add_argument("--mlm_steps", type=int, default=300, help="Steps of the MLM-head fit when building one.")
    parser.add_argument("--seed", type=int, default=42, help="Student seed (order of the data, new heads); give "
                        "another --output_root and the same --teacher_dir to measure the seed-to-seed spread.")
    parser.add_argument("--alpha", type=float, default=0.5, help="alpha of the distillation metric.")
    return parser.parse_args()


def save_layers_student(path: str, teacher_dir: str, layers: list[int]) -> None:
    """A 3-layer student: the given layers and the head of the fine-tuned teacher (create_student)."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return
    save_layer_student(path, AutoModelForSequenceClassification.from_pretrained(teacher_dir), layers, teacher_dir)


def build_mlm(path: str, steps: int) -> str:
    """MiniLM-L6 with an MLM head fitted on WikiText-2 (no masked LM ships offline with hfkd)."""
    if not done(path):
        run_recipe(run_finetune, [
            "--task", "masked_lm", "--model_name_or_path", PRETRAINED, "--output_dir", path, "--overwrite_output_dir",
            "--train_file", os.path.join(DATA_DIR, "wikitext2", "valid.txt"),
            "--validation_file", os.path.join(DATA_DIR, "wikitext2", "test.txt"), "--max_eval_samples", "200",
            "--max_seq_length", "128", "--max_steps", str(steps), "--per_device_train_batch_size", "32",
            "--learning_rate", "5e-4", "--warmup_steps", "0.06", "--report_to", "none", "--save_strategy", "no",
            "--logging_steps", "50"], config_class=TrainingArguments)
    return path


def main() -> None:
    options = parse()
    task = TASKS[options.task]
    root = os.path.join(options.output_root, options.task)
    data = [*data_flags(options.data_dir or os.path.join(DATA_DIR, options.task)), *task["columns"]]
    teacher_dir = options.teacher_dir or os.path.join(root, "teacher")
    ensure_teacher(teacher_dir, [*data, "--num_train_epochs", str(options.teacher_epochs or task["teacher_epochs"])],
                   options.teacher_train_samples)
    save_layers_student(os.path.join(root, INIT), teacher_dir, [0, 2, 4])
    save_layers_student(os.path.join(root, PEER_INIT), teacher_dir, [1, 3, 5])

    train_size = options.train_size or task["train_size"]
    rows = train_size or _train_rows(data)
    steps = options.max_steps or math.ceil(options.epochs * math.ceil(rows / 32))
    student = [*data, "--max_steps", str(steps), "--seed", str(options.seed),
               *(["--max_train_samples", str(train_size)] if train_size else [])]
    extra_methods = {**config_override_methods(steps), **dict(_method_option(m) for m in options.method)}
    methods = method_runners(options, root, teacher_dir, student, extra_methods)
    chosen = options.methods or list(methods)
    unknown = sorted(set(chosen) - set(methods) - {"teacher"})
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {sorted(methods)}")
    paths = {}
    for name in chosen:
        path = generation_dir(os.path.join(root, name), 2) if name == "born_again" else os.path.join(root, name)
        paths[name] = path if done(path) else methods[name]()

    table = compare(teacher_dir, paths, options.alpha)
    table["settings"] = {**vars(options), "steps": steps, "train_size": train_size}
    write_results(os.path.join(root, "methods.json"), table, table["markdown"])
    print(table["markdown"])


def method_runners(options: argparse.Namespace, root: str, teacher_dir: str, student: list[str],
                   extra_methods: dict[str, list[str]]) -> dict[str, Callable[[], str]]:
    """One callable per row: it trains that row's student and returns the folder to score."""
    init, peer_init = os.path.join(root, INIT), os.path.join(root, PEER_INIT)
    kd = ["--config", os.path.join(CONFIGS, "sst2_minilm_l3.yaml"), "--teacher_model_name_or_path", teacher_dir,
          "--student_model_name_or_path", init, "--alpha_hidden", "0", *student]
    out = {name: os.path.join(root, name) for name in ("no_teacher", "mutual", "online_teacher", "born_again")}

    def no_teacher() -> str:
        run_recipe(run_finetune, ["--config", os.path.join(CONFIGS, "sst2_teacher.yaml"), "--model_name_or_path",
                                  init, "--output_dir", out["no_teacher"], *student], config_class=TrainingArguments)
        return out["no_teacher"]

    def distill(name: str, extra: list[str]) -> Callable[[], str]:
        def run() -> str:
            run_recipe(run_distillation, [*kd, "--output_dir", os.path.join(root, name), *extra])
            return os.path.join(root, name)
        return run

    def mutual(name: str, extra: list[str]) -> Callable[[], str]:
        def run() -> str:
            run_recipe(run_mutual_learning, [*kd, "--output_dir", out[name], *extra],
                       config_class=MutualDistillationConfig)
            return out[name]
        return run

    def born_again() -> str:
        # Generation 0 is the no-teacher twin: born-again training never sees the 6-layer teacher.
        if not done(out["no_teacher"]):
            no_teacher()
        flags = [*kd, "--teacher_model_name_or_path", out["no_teacher"], "--generations", "2",
                 "--output_dir", out["born_again"]]
        run_recipe(run_born_again, flags, config_class=BornAgainConfig)
        return generation_dir(out["born_again"], 2)

    def augment_kd() -> str:
        mlm = options.augment_mlm or build_mlm(os.path.join(options.output_root, "mlm_minilm_wikitext2"),
                                               options.mlm_steps)
        return distill("augment_kd", ["--augment_copies", str(options.augment_copies), "--augment_mlm", mlm])()

    return {
        "no_teacher": no_teacher,
        "logit_kd": distill("logit_kd", []),
        "mutual": mutual("mutual", ["--peer_model_name_or_path", peer_init, "--temperature", "1"]),
        "online_teacher": mutual("online_teacher", ["--teacher_model_name_or_path", PRETRAINED,
                                                    "--train_teacher_alongside", "--temperature", "1"]),
        "born_again": born_again,
        "augment_kd": augment_kd,
        **{name: distill(name, flags) for name, flags in extra_methods.items()},
    }


def compare(teacher_dir: str, students: dict[str, str], alpha: float, metric: str = "eval_accuracy") -> dict:
    """`summarize`'s score and DM of each student, plus its F1, size and difference to plain logit KD (points)."""
    summary = summarize(teacher_dir, students, metric, alpha)
    for row in summary["models"]:
        row["f1"] = eval_results(row["path"]).get("eval_f1")
        row["size_mb"] = safetensors_size(row["path"]) / 2**20
    reference = next((row["score"] for row in summary["models"] if row["name"] == "logit_kd"), None)
    headers = ["method", "params", "size (MB)", metric, "F1", "vs logit KD (points)", f"DM (α={alpha})", "note"]
    table = markdown_table(headers, [_compare_cells(row, reference) for row in summary["models"]])
    return {**summary, "markdown": table}


def _compare_cells(row: dict, reference: float | None) -> list[str]:
    delta = "–" if reference is None or row["name"] == "teacher" else f"{100 * (row['score'] - reference):+.2f}"
    dm = "–" if row["distillation_metric"] is None else f"{row['distillation_metric']:.4f}"
    f1 = "–" if row["f1"] is None else f"{100 * row['f1']:.2f}"
    return [row["name"], f"{row['params'] / 1e6:.1f}M", f"{row['size_mb']:.1f}", f"{100 * row['score']:.2f}%", f1,
            delta, dm, STEPS_NOTE.get(row["name"], "")]


def _method_option(value: str) -> tuple[str, list[str]]:
    name, sep, flags = value.partition("=")
    if not sep or not name:
        raise SystemExit(f'--method {value!r}: write NAME="--flag value ..."')
    return name, shlex.split(flags)


def _train_rows(data: list[str]) -> int:
    """Rows of the train file (header excluded) when the whole split is used."""
    with open(data[data.index("--train_file") + 1], encoding="utf-8-sig") as handle:
        return sum(1 for line in handle if line.strip()) - 1


if __name__ == "__main__":
    main()
