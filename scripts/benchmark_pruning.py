"""Does a pruned student start (and end) ahead of a random one of the same shape?

    python scripts/benchmark_pruning.py --teacher outputs/sst2/teacher [--train_samples 8000 --epochs 1]

1. Prunes the fine-tuned SST-2 teacher to `--layers` x `--hidden` (FFN `--intermediate`, heads
   hidden / head_dim) with `create_student(init="prune")` on `--calibration_samples` seeded training
   sentences, and builds a random student of the same shape (`init="random"`); reports parameters,
   the pruning time and both students' dev accuracy before any training.
2. With `--train_samples N`: distills both on the same N seeded sentences with
   recipes/configs/sst2_minilm_pruned.yaml (TinyBERT's two stages, shrunk to `--epochs` in total), the
   random student with `layer_mapping: uniform` (it was cut from no teacher layer). One seed: a smoke
   comparison, not a quality claim.

Writes pruning.json and pruning.md in --output_root.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from benchmarking import (  # first: it sets up the environment transformers reads on import
    CONFIGS, SST2_DIR, cpu_name, data_flags, done, load_sst2, quiet_libraries, trainer_settings, write_results,
)
import numpy as np
from transformers import (
    AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments,
)

from hfkd import create_student
from hfkd.app.recipes import main as run_recipe
from hfkd.app.recipes import run_distillation


def accuracy(model, dev, tokenizer, output_dir: str) -> float:
    """Dev accuracy through a plain `Trainer.evaluate`."""
    args = TrainingArguments(**trainer_settings(output_dir, 32, per_device_eval_batch_size=128))
    trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=lambda p: {"accuracy": float(np.mean(p.predictions.argmax(-1) == p.label_ids))})
    return trainer.evaluate(dev)["eval_accuracy"]


def shape_kwargs(args: argparse.Namespace) -> dict[str, int]:
    return {"num_layers": args.layers, "hidden_size": args.hidden, "intermediate_size": args.intermediate}


def before_training(args: argparse.Namespace) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)
    data = load_sst2(tokenizer, args.data_dir)
    calibration = data.train.shuffle(seed=42).select(range(args.calibration_samples))
    start = time.perf_counter()
    pruned = create_student(teacher, init="prune", calibration_dataset=calibration, **shape_kwargs(args))
    seconds = time.perf_counter() - start
    random = create_student(teacher, init="random", num_attention_heads=pruned.config.num_attention_heads,
                            **shape_kwargs(args))
    work = os.path.join(args.output_root, "eval")
    return {
        "teacher": {"params": teacher.num_parameters(), "accuracy": accuracy(teacher, data.dev, tokenizer, work)},
        "pruned": {"params": pruned.num_parameters(), "prune_seconds": round(seconds, 2),
                   "teacher_layers": pruned.config.hfkd_teacher_layers,
                   "accuracy": accuracy(pruned, data.dev, tokenizer, work)},
        "random": {"params": random.num_parameters(), "accuracy": accuracy(random, data.dev, tokenizer, work)},
    }


def distill(args: argparse.Namespace, init: str) -> float:
    """The pruned recipe on `--train_samples` sentences for `--epochs`; returns the dev accuracy."""
    output_dir = os.path.join(args.output_root, f"distilled_{init}")
    if not done(output_dir):
        half = args.epochs / 2
        stages = [{"num_train_epochs": half, "alpha_hidden": 1.0, "alpha_attention": 1.0, "alpha_kd": 0.0,
                   "alpha_ce": 0.0}, {"num_train_epochs": half, "alpha_kd": 1.0, "alpha_hidden": 0.0,
                                      "alpha_attention": 0.0, "alpha_ce": 0.0}]
        mapping = ["--layer_mapping", "uniform"] if init == "random" else []
        run_recipe(run_distillation, [
            "--config", os.path.join(CONFIGS, "sst2_minilm_pruned.yaml"), "--teacher_model_name_or_path",
            args.teacher, "--student_init", init, "--max_train_samples", str(args.train_samples),
            "--stages", json.dumps(stages), "--output_dir", output_dir, "--disable_tqdm", "true",
            *shape_flags(args), *mapping, *data_flags(args.data_dir)])
    with open(os.path.join(output_dir, "eval_results.json")) as f:
        return json.load(f)["eval_accuracy"]


def shape_flags(args: argparse.Namespace) -> list[str]:
    heads = args.hidden // 32  # MiniLM's head_dim; pruning keeps it
    return ["--student_num_layers", str(args.layers), "--student_hidden_size", str(args.hidden),
            "--student_intermediate_size", str(args.intermediate), "--student_num_attention_heads", str(heads)]


def markdown(results: dict) -> str:
    lines = [f"Teacher `{results['settings']['teacher']}` ({results['teacher']['params'] / 1e6:.1f}M, dev "
             f"{results['teacher']['accuracy']:.2%}); {results['settings']['cpu']}.", "",
             "| student | params | % of teacher | dev accuracy, untrained | after distillation |", "|---|---:|---:|---:|---:|"]
    for init in ("pruned", "random"):
        row = results[init]
        after = f"{row['distilled_accuracy']:.2%}" if "distilled_accuracy" in row else "–"
        lines.append(f"| {init} | {row['params'] / 1e6:.2f}M | {row['params'] / results['teacher']['params']:.1%} | "
                     f"{row['accuracy']:.2%} | {after} |")
    lines.append(f"\nPruning took {results['pruned']['prune_seconds']} s (importance on "
                 f"{results['settings']['calibration_samples']} sentences + slicing); kept teacher layers "
                 f"{results['pruned']['teacher_layers']}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="outputs/sst2/teacher", help="fine-tuned SST-2 teacher folder")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--intermediate", type=int, default=768)
    parser.add_argument("--calibration_samples", type=int, default=256)
    parser.add_argument("--train_samples", type=int, default=0, help="distill both students on N sentences (0: skip)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--data_dir", default=SST2_DIR)
    parser.add_argument("--output_root", default="outputs/pruning")
    args = parser.parse_args()
    quiet_libraries()
    results = before_training(args)
    results["settings"] = {"teacher": args.teacher, "calibration_samples": args.calibration_samples,
                           "train_samples": args.train_samples, "epochs": args.epochs,
                           "cpu": cpu_name()}
    print(json.dumps(results, indent=2))
    if args.train_samples:
        for init, name in (("prune", "pruned"), ("random", "random")):
            results[name]["distilled_accuracy"] = distill(args, init)
            print(f"{name}: distilled dev accuracy {results[name]['distilled_accuracy']:.2%}", flush=True)
    write_results(os.path.join(args.output_root, "pruning.json"), results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
