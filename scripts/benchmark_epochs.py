"""Three epochs of distillation end to end: hfkd (online, cached) against the naive Trainer and TextBrewer.

    python scripts/benchmark_epochs.py [--train_rows 8000] [--epochs 3] [--output outputs/speed/epochs.json]

Measured, not extrapolated: every variant trains the same 3-layer student (layers 0, 2, 4 of the
fine-tuned teacher, `hfkd.create_student`) for `--epochs` epochs on the same `--train_rows` SST-2
training sentences (0 = all 67,349), with the same objective (0.8·T²·KL(teacher‖student) at T = 2 +
0.2·CE), optimizer (AdamW, lr 1e-4, weight decay 0.01, linear decay after 6% warm-up), batch 32,
dynamic padding (max 64 tokens) and seed, then is scored on the full SST-2 dev set. Variants:

    online          hfkd DistillationTrainer, the teacher run every step
    cached          hfkd: build the teacher-output cache (timed), then train from it without a teacher
    cached_grouped  as cached, with length-grouped batches (train_sampling_strategy="group_by_length")
    naive           the forum Trainer subclass (teacher inside compute_loss, output_hidden_states=True)
    textbrewer      TextBrewer's GeneralDistiller (kd_loss_weight = 0.8·T², soft CE as its KD loss)

The wall time of a variant counts everything after the tokenized data is in memory: loading the
models, building the cache where there is one, and training; evaluation is not counted. Variants run
one after another, each in a forked child (scripts/benchmarking.py's `in_child`), alone on the
machine. The teacher defaults to the main job's (`make demo` writes outputs/sst2/teacher).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from typing import Any

from benchmarking import (  # first: it sets up the environment transformers reads on import
    ALPHA_KD, KD_SETTINGS, LEARNING_RATE, ROOT, SST2_DIR, STUDENT_LAYERS, TEMPERATURE, NaiveDistillationTrainer,
    device, in_child, load_classifier, load_sst2, quiet_libraries, skip_textbrewer, textbrewer_distiller,
    trainer_settings, write_results,
)
import torch
import transformers
from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments, get_linear_schedule_with_warmup

from hfkd import DistillationConfig, DistillationTrainer, create_student
from hfkd.metrics import build_compute_metrics
from hfkd.report.measure import evaluate_model
from hfkd.report.render import markdown_table
from hfkd.teacher.cache import build_teacher_cache

VARIANTS = ("online", "cached", "cached_grouped", "naive", "textbrewer")
WARMUP_RATIO = 0.06


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=os.path.join(ROOT, "outputs", "sst2", "teacher"))
    parser.add_argument("--data_dir", default=SST2_DIR)
    parser.add_argument("--train_rows", type=int, default=8000, help="SST-2 training sentences (0 = all).")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_steps", type=int, default=-1, help="Cap on steps (smoke runs only).")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", default=None, help="Write JSON here (and Markdown beside it).")
    options = parser.parse_args()
    options.variants = [v for v in options.variants.split(",") if v]
    if set(options.variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(set(options.variants) - set(VARIANTS))}; choose from {VARIANTS}")
    if not os.path.isfile(os.path.join(options.teacher, "config.json")):
        parser.error(f"no teacher in {options.teacher}: run `make demo` first or pass --teacher")
    return options


def train_variant(variant: str, work_dir: str, train: Any, dev: Any, tokenizer: Any,
                  options: argparse.Namespace) -> dict:
    """Train one variant from scratch; return its wall time (models loaded, cache built, trained) and dev score."""
    torch.set_num_threads(options.threads)
    collator = DataCollatorWithPadding(tokenizer)
    started = time.perf_counter()
    teacher = load_classifier(options.teacher)
    student = create_student(teacher, layer_indices=STUDENT_LAYERS)
    steps = options.max_steps if options.max_steps > 0 else options.epochs * math.ceil(len(train) / options.batch_size)
    common = trainer_settings(os.path.join(work_dir, variant), options.batch_size, num_train_epochs=options.epochs,
                              max_steps=options.max_steps, warmup_steps=WARMUP_RATIO, logging_steps=100)
    cache_seconds = None
    if variant == "textbrewer":
        _train_with_textbrewer(teacher, student, train, collator, options, steps, work_dir)
    else:
        if variant == "naive":
            trainer = NaiveDistillationTrainer(model=student, args=TrainingArguments(**common),
                                               teacher_model=teacher, train_dataset=train, data_collator=collator)
        elif variant == "online":
            trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                          args=DistillationConfig(**common, **KD_SETTINGS),
                                          train_dataset=train, data_collator=collator)
        else:
            cache_started = time.perf_counter()
            cached = build_teacher_cache(teacher.to(student.device), train, collator, os.path.join(work_dir, "cache"))
            cache_seconds = time.perf_counter() - cache_started
            del teacher
            grouped = {"train_sampling_strategy": "group_by_length"} if variant == "cached_grouped" else {}
            trainer = DistillationTrainer(model=student, teacher_model=None,
                                          args=DistillationConfig(**common, **KD_SETTINGS, **grouped),
                                          train_dataset=cached, data_collator=collator)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    seconds = time.perf_counter() - started
    score = evaluate_model(student, dev, collator, build_compute_metrics("sequence_classification"), batch_size=128)
    return {"seconds": round(seconds, 1), "cache_build_seconds": round(cache_seconds, 1) if cache_seconds else None,
            "steps": steps, "dev_accuracy": round(score["accuracy"], 4)}


def _train_with_textbrewer(teacher: Any, student: Any, train: Any, collator: Any, options: argparse.Namespace,
                           steps: int, work_dir: str) -> None:
    from torch.utils.data import DataLoader

    # A plain dict: TextBrewer calls model(*batch) on anything else, BatchEncoding included.
    loader = DataLoader(train, batch_size=options.batch_size, shuffle=True, collate_fn=lambda rows: dict(collator(rows)),
                        generator=torch.Generator().manual_seed(42))
    distiller = textbrewer_distiller(teacher, student, os.path.join(work_dir, "textbrewer"),
                                     kd_loss_weight=ALPHA_KD * TEMPERATURE**2, ckpt_frequency=1, ckpt_steps=steps)
    decay = [p for n, p in student.named_parameters() if not any(k in n for k in ("bias", "LayerNorm"))]
    rest = [p for n, p in student.named_parameters() if any(k in n for k in ("bias", "LayerNorm"))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                  lr=LEARNING_RATE)
    schedule = {"num_warmup_steps": math.ceil(WARMUP_RATIO * steps), "num_training_steps": steps}
    with distiller:
        if options.max_steps > 0:
            distiller.train(optimizer, loader, num_steps=steps, max_grad_norm=1.0,
                            scheduler_class=get_linear_schedule_with_warmup, scheduler_args=schedule)
        else:
            distiller.train(optimizer, loader, num_epochs=options.epochs, max_grad_norm=1.0,
                            scheduler_class=get_linear_schedule_with_warmup, scheduler_args=schedule)


def markdown(report: dict) -> str:
    rows = []
    for name, run in report["runs"].items():
        cache = run["cache_build_seconds"] if run["cache_build_seconds"] is not None else "–"
        vs = report["cached_speedup_over"].get(name)
        rows.append([name, run["seconds"], cache, run["steps"], f"{run['dev_accuracy']:.2%}",
                     f"{vs:.2f}x" if vs else "–"])
    headers = ["variant", "wall time (s)", "of which cache build (s)", "steps", "SST-2 dev accuracy",
               "speed-up of hfkd cached"]
    return markdown_table(headers, rows)


def main() -> None:
    options = parse()
    quiet_libraries()
    tokenizer = transformers.AutoTokenizer.from_pretrained(options.teacher)
    data = load_sst2(tokenizer, options.data_dir, train_rows=options.train_rows or None)
    train, dev = data.train, data.dev
    variants = list(options.variants)
    skipped = skip_textbrewer(variants, "textbrewer")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="hfkd-epochs-") as work_dir:
        for variant in variants:
            runs[variant] = in_child(train_variant, variant, work_dir, train, dev, tokenizer, options)
            print(f"{variant}: {runs[variant]}", flush=True)
    best_cached = min((runs[v]["seconds"] for v in ("cached", "cached_grouped") if v in runs), default=None)
    report = {
        "runs": runs, "skipped": skipped,
        "cached_speedup_over": {v: round(r["seconds"] / best_cached, 3) for v, r in runs.items()} if best_cached else {},
        "settings": {"train_rows": len(train), "epochs": options.epochs, "batch_size": options.batch_size,
                     "threads": options.threads, "teacher": options.teacher, "torch": torch.__version__,
                     "device": device(), "max_steps": options.max_steps},
    }
    table = markdown(report)
    print(table)
    if options.output:
        write_results(options.output, report, table)


if __name__ == "__main__":
    main()
