"""SST-2 transfer-set benchmark: what do unlabeled in-domain sentences, labelled by the teacher, buy a student?

    python scripts/benchmark_transfer.py --teacher_dir /work/teachers/sst2_8k [--students tiny l3] \
        [--rows no_teacher kd kd_transfer kd_augment kd_both] [--seeds 1 2 3] [--transfer_samples 20000] \
        [--epochs 1] [--augment_mlm PATH] [--output_root outputs/transfer]

Labelled set: the 8,000 sentences `--max_train_samples 8000` gives the recipes (first 8,000 of the
train split shuffled with subset_seed 42: the teacher's own training set). Transfer set: the rest of
the train split (~59k) with its labels dropped, or a seeded `--transfer_samples` of it (with a teacher
fine-tuned on more rows, `--teacher_rows N`, only rows it never saw labelled). Students:
`tiny` (recipes/configs/sst2_minilm_tiny.yaml: 3 × 192, random init) and `l3` (sst2_minilm_l3.yaml:
teacher layers 0, 2, 4), or any `name=config.yaml`. Rows:

- no_teacher: the labelled set, CE only (same hyper-parameters);
- kd: the labelled set, the config's CE + KD weights (logit terms: the teacher runs once, into a cache);
- kd_transfer: kd plus the transfer set (CE on the labelled rows, KD on all);
- kd_augment / kd_both: kd (plus the transfer set) plus TinyBERT augmentation of the labelled set
  (`--augment_copies` copies by `--augment_mlm`; the rows are skipped without an MLM). No masked LM
  ships offline; BENCHMARKS.md fits one with `hfkd finetune --task masked_lm` on the SST-2 train text.

One teacher cache (`hfkd.teacher.cache`) holds every row used, so each run trains from it. Each run's
result is saved as it finishes (a rerun skips finished runs); the table gives mean ± std of dev
accuracy over the seeds, DM (α = 0.5, from the mean), and train time. Writes transfer.json and
transfer.md in output_root.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import platform
import statistics
from typing import Any

from benchmarking import CONFIGS, SST2_DIR, write_results  # first: it sets up the environment transformers reads
import datasets
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

from hfkd import DistillationConfig, DistillationTrainer
from hfkd.app.arguments import ModelArguments, parse_args
from hfkd.app.recipes import build_student, task_trainer_kwargs
from hfkd.app.report_cli import saved_parameter_count
from hfkd.app.task_data import DataArguments, load_raw_datasets, prepare_classification_datasets
from hfkd.report.metric import distillation_metric
from hfkd.report.render import markdown_table
from hfkd.teacher.cache import build_teacher_cache, cache_exists, load_teacher_cache, teacher_cache_fingerprint
from hfkd.transfer.unlabeled import mark_unlabeled, mix_unlabeled

STUDENTS = {"tiny": "sst2_minilm_tiny.yaml", "l3": "sst2_minilm_l3.yaml"}
ROWS = ("no_teacher", "kd", "kd_transfer", "kd_augment", "kd_both")
ROW_NAMES = {"no_teacher": "no teacher (8k labels)", "kd": "KD on 8k", "kd_transfer": "KD on 8k + transfer set",
             "kd_augment": "KD on 8k + augmentation", "kd_both": "KD on 8k + transfer + augmentation"}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher_dir", default="/work/teachers/sst2_8k")
    parser.add_argument("--data_dir", default=SST2_DIR)
    parser.add_argument("--output_root", default="outputs/transfer")
    parser.add_argument("--students", nargs="+", default=["tiny", "l3"],
                        help="tiny, l3, or name=path/to/config.yaml (e.g. a pruned student's recipe).")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--labelled_samples", type=int, default=8000)
    parser.add_argument("--transfer_samples", type=int, default=None, help="Default: the whole rest of train.")
    parser.add_argument("--teacher_rows", type=int, default=None,
                        help="Rows the teacher was fine-tuned on (the first N of the same shuffle: `hfkd finetune "
                             "--max_train_samples N`) when it saw more than the labelled set: the transfer set is "
                             "then drawn from the rows after them, which the teacher never saw labelled.")
    parser.add_argument("--epochs", type=float, default=None, help="Default: each config's num_train_epochs.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Default: all 872 dev sentences.")
    parser.add_argument("--augment_mlm", default=None)
    parser.add_argument("--augment_copies", type=int, default=2)
    parser.add_argument("--twin_steps", choices=("equal", "config"), default="equal",
                        help="equal (default): the no-teacher row trains as many optimizer steps as the largest KD "
                             "row run with it (its epochs cover the transfer set too); config: the config's epochs "
                             "over the labelled set.")
    parser.add_argument("--override", default="",
                        help='Extra recipe flags for every row, e.g. "--learning_rate 2e-4 --temperature 4".')
    parser.add_argument("--cache_dir", default=None, help="Default: output_root/teacher_cache.")
    return parser.parse_args()


def student_configs(names: list[str]) -> dict[str, str]:
    configs = {}
    for name in names:
        key, _, path = name.partition("=")
        configs[key] = path or os.path.join(CONFIGS, STUDENTS[key])
    return configs


def load_data(options: argparse.Namespace, tokenizer: Any) -> dict[str, datasets.Dataset]:
    """Tokenized labelled set, dev set, transfer set (marked unlabeled) and, with an MLM, the augmented set."""
    data_args = DataArguments(train_file=os.path.join(options.data_dir, "train.tsv"),
                              validation_file=os.path.join(options.data_dir, "dev.tsv"), text_column="sentence",
                              label_column="label", max_seq_length=64, max_eval_samples=options.max_eval_samples)
    raw = load_raw_datasets(data_args)
    shuffled = raw["train"].shuffle(seed=data_args.subset_seed)  # the order behind --max_train_samples
    labelled = shuffled.select(range(options.labelled_samples))
    first_unseen = max(options.labelled_samples, options.teacher_rows or 0)
    rest = shuffled.select(range(first_unseen, len(shuffled))).remove_columns("label")
    if options.transfer_samples is not None:
        rest = rest.shuffle(seed=0).select(range(min(options.transfer_samples, len(rest))))
    splits = datasets.DatasetDict(train=labelled, validation=raw["validation"])
    tokenized, labels = prepare_classification_datasets(splits, tokenizer, data_args)
    transfer = rest.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=64), batched=True,
                        remove_columns=rest.column_names, desc="Tokenizing the transfer set")
    data = {"labelled": tokenized["train"], "dev": tokenized["validation"], "transfer": mark_unlabeled(transfer)}
    if options.augment_mlm:
        augment_args = DataArguments(**{**vars(data_args), "augment_copies": options.augment_copies,
                                        "augment_mlm": options.augment_mlm})
        augmented, _ = prepare_classification_datasets(datasets.DatasetDict(train=labelled), tokenizer, augment_args)
        data["augmented"] = augmented["train"].remove_columns(
            [c for c in augmented["train"].column_names if c not in data["labelled"].column_names])
    data["labels"] = labels
    return data


def cached_union(options: argparse.Namespace, teacher: Any, data: dict, collator: Any) -> datasets.Dataset:
    """One teacher cache over labelled + transfer (+ augmented extra) rows, built once, reused by every run."""
    parts = [data["labelled"], data["transfer"]] + ([data["augmented"].select(
        range(len(data["labelled"]), len(data["augmented"])))] if "augmented" in data else [])
    union = datasets.concatenate_datasets([p.cast(data["labelled"].features) for p in parts])
    cache_dir = options.cache_dir or os.path.join(options.output_root, "teacher_cache")
    expected = teacher_cache_fingerprint(teacher, union)
    if cache_exists(cache_dir):
        try:
            return load_teacher_cache(cache_dir, expected)
        except ValueError:
            pass  # another subsample: rebuild (the folder is an hfkd cache)
    return build_teacher_cache(teacher, union, collator, cache_dir, batch_size=128)


def row_dataset(row: str, cached: datasets.Dataset, data: dict) -> datasets.Dataset:
    n, t = len(data["labelled"]), len(data["transfer"])
    augmented = range(n + t, len(cached))
    indices = {"no_teacher": range(n), "kd": range(n), "kd_transfer": range(n + t),
               "kd_augment": [*range(n), *augmented], "kd_both": range(len(cached))}[row]
    return cached.select(indices)


def twin_max_steps(args: DistillationConfig, rows: list[str], cached: datasets.Dataset, data: dict) -> int:
    """Optimizer steps of the largest KD row in this run (what an equal-step no-teacher twin trains)."""
    largest = max(len(row_dataset(row, cached, data)) for row in rows)
    batches = math.ceil(largest / (args.per_device_train_batch_size * max(1, args.world_size)))
    return math.ceil(args.num_train_epochs * math.ceil(batches / args.gradient_accumulation_steps))


def run_one(options: argparse.Namespace, student_name: str, config_path: str, row: str, seed: int,
            teacher: Any, tokenizer: Any, cached: datasets.Dataset, data: dict, rows: list[str]) -> dict:
    output_dir = os.path.join(options.output_root, "runs", f"{student_name}_{row}_seed{seed}")
    overrides = ["--output_dir", output_dir, "--seed", str(seed), "--teacher_model_name_or_path", options.teacher_dir,
                 "--alpha_hidden", "0", "--alpha_attention", "0", "--save_strategy", "no", "--logging_steps", "100",
                 *shlex.split(options.override)]
    if options.epochs is not None:
        overrides += ["--num_train_epochs", str(options.epochs)]
    model_args, _, args = parse_args((ModelArguments, DataArguments, DistillationConfig),
                                     ["--config", config_path, *overrides])
    if row == "no_teacher":
        twin = ["--alpha_kd", "0", "--alpha_ce", "1"]
        if options.twin_steps == "equal":
            twin += ["--max_steps", str(twin_max_steps(args, [r for r in rows if r != "no_teacher"] or [row],
                                                       cached, data))]
        model_args, _, args = parse_args((ModelArguments, DataArguments, DistillationConfig),
                                         ["--config", config_path, *overrides, *twin])
    set_seed(seed)  # the student's random parts (all of the tiny one; the l3 one's head) follow the seed
    student = build_student(model_args, teacher, "sequence_classification", data["labelled"], seed)
    train = row_dataset(row, cached, data)
    if row == "no_teacher":
        train = train.remove_columns("teacher_logits")
    kwargs = task_trainer_kwargs("sequence_classification", {"validation": data["dev"]}, tokenizer,
                                 DataArguments(train_file="x", max_seq_length=64), data["labels"])
    kwargs["train_dataset"] = train
    trainer = DistillationTrainer(model=student, teacher_model=None, args=args, **kwargs)
    result = trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(output_dir)
    return {"student": student_name, "row": row, "seed": seed, "train_rows": len(train),
            "optimizer_steps": trainer.state.global_step,
            "eval_accuracy": metrics["eval_accuracy"], "train_seconds": result.metrics["train_runtime"],
            "params": saved_parameter_count(output_dir)}


def summary(results: list[dict], teacher: dict, options: argparse.Namespace) -> dict:
    rows, cells = [], []
    for student in dict.fromkeys(r["student"] for r in results):
        for row in ROWS:
            runs = [r for r in results if r["student"] == student and r["row"] == row]
            if not runs:
                continue
            scores = [r["eval_accuracy"] for r in runs]
            mean = statistics.mean(scores)
            std = statistics.stdev(scores) if len(scores) > 1 else 0.0
            dm = distillation_metric(runs[0]["params"], teacher["params"], mean, teacher["score"], 0.5)
            seconds = statistics.mean(r["train_seconds"] for r in runs)
            rows.append({"student": student, "row": row, "seeds": [r["seed"] for r in runs], "scores": scores,
                         "mean": mean, "std": std, "dm": dm, "train_seconds": seconds,
                         "train_rows": runs[0]["train_rows"], "params": runs[0]["params"],
                         "optimizer_steps": runs[0].get("optimizer_steps")})
            cells.append([student, ROW_NAMES[row], f"{runs[0]['train_rows']:,}", f"{runs[0].get('optimizer_steps')}",
                          f"{100 * mean:.2f} ± {100 * std:.2f} ({len(runs)} seeds)", f"{dm:.3f}", f"{seconds:.0f}"])
    table = markdown_table(["student", "training data", "rows", "steps", "dev accuracy %", "DM (α=0.5)", "train s"], cells)
    header = (f"Teacher {options.teacher_dir}: {100 * teacher['score']:.2f}% dev, {teacher['params']:,} params. "
              f"CPU: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}.")
    return {"teacher": teacher, "rows": rows, "runs": results, "settings": vars(options),
            "markdown": header + "\n\n" + table}


def main() -> None:
    options = parse()
    os.makedirs(os.path.join(options.output_root, "runs"), exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(options.teacher_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(options.teacher_dir).eval()
    with open(os.path.join(options.teacher_dir, "eval_results.json"), encoding="utf-8") as handle:
        teacher_info = {"score": json.load(handle)["eval_accuracy"], "params": saved_parameter_count(options.teacher_dir)}
    data = load_data(options, tokenizer)
    collator = task_trainer_kwargs("sequence_classification", {}, tokenizer,
                                   DataArguments(train_file="x", max_seq_length=64), None)["data_collator"]
    cached = cached_union(options, teacher, data, collator)
    rows = [r for r in options.rows if "augment" not in r and r != "kd_both" or "augmented" in data]
    results = []
    for student_name, config_path in student_configs(options.students).items():
        for seed in options.seeds:
            for row in rows:
                path = os.path.join(options.output_root, "runs", f"{student_name}_{row}_seed{seed}.json")
                if not os.path.isfile(path):
                    result = run_one(options, student_name, config_path, row, seed, teacher, tokenizer, cached, data,
                                     rows)
                    write_results(path, result, json.dumps(result))
                with open(path, encoding="utf-8") as handle:
                    results.append(json.load(handle))
                table = summary(results, teacher_info, options)
                write_results(os.path.join(options.output_root, "transfer.json"), table, table["markdown"])
    print(table["markdown"])


if __name__ == "__main__":
    main()
