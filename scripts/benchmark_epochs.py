"""Three epochs of distillation end to end, over several seeds: hfkd's variants against the naive Trainer and TextBrewer.

    python scripts/benchmark_epochs.py [--train_rows 8000] [--epochs 3] [--seeds 3] [--output outputs/speed/epochs.json]

Measured, not extrapolated: every variant trains the same 3-layer student (layers 0, 2, 4 of the
fine-tuned teacher, `hfkd.create_student`) for `--epochs` epochs on the same `--train_rows` SST-2
training sentences (0 = all 67,349), with the same objective (0.8·T²·KL(teacher‖student) at T = 2 +
0.2·CE), optimizer (AdamW, lr 1e-4, weight decay 0.01, linear decay after 6% warm-up), batch 32,
dynamic padding (max 64 tokens), then is scored on the full SST-2 dev set. `--seeds N` repeats it
with seeds 42, 43, ... (the training seed: batch order, dropout; the sentences stay the same), the
variants interleaved within each seed. Variants:

    online                hfkd DistillationTrainer, the teacher run every step
    cached                hfkd: build the teacher-output cache (timed), then train from it without a teacher
    cached_bucketed       as cached, with length_bucketing (random, seed-determined length-homogeneous batches)
    cached_bucketed_bf16  as cached_bucketed, the cache built by a bfloat16 teacher and the student trained
                          under CPU bf16 autocast (bf16=True)
    cached_grouped        as cached, with transformers' train_sampling_strategy="group_by_length" (not default)
    naive                 the forum Trainer subclass (teacher inside compute_loss, output_hidden_states=True)
    textbrewer            TextBrewer's GeneralDistiller (kd_loss_weight = 0.8·T², soft CE as its KD loss)

The wall time of a variant counts everything after the tokenized data is in memory: loading the
models, building the cache where there is one, and training; evaluation is not counted. Variants run
one after another, each in a forked child (scripts/benchmarking.py's `in_child`). The JSON has
`variants: {name: {seconds: [...], accuracy: [...], ...}}` (one entry per seed), mean ± std, and
each variant's speed-up over the faster peer (naive or TextBrewer, by mean time) and its accuracy
difference to the peers' mean. It is rewritten after every run, so a cut-short run keeps what it did.
The teacher defaults to the main job's (`make demo` writes outputs/sst2/teacher).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from typing import Any

from benchmarking import (  # first: it sets up the environment transformers reads on import
    ALPHA_KD, KD_SETTINGS, LEARNING_RATE, ROOT, SST2_DIR, STUDENT_LAYERS, TEMPERATURE, NaiveDistillationTrainer,
    cpu_name, device, in_child, load_classifier, load_sst2, mean_std, quiet_libraries, skip_textbrewer,
    textbrewer_distiller, trainer_settings, write_results,
)
import torch
import transformers
from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments, get_linear_schedule_with_warmup

from hfkd import DistillationConfig, DistillationTrainer, create_student
from hfkd.metrics import build_compute_metrics
from hfkd.report.measure import evaluate_model
from hfkd.report.render import markdown_table
from hfkd.teacher.cache import build_teacher_cache
from hfkd.teacher.fast import teacher_fidelity

VARIANTS = ("online", "cached", "cached_bucketed", "cached_bucketed_bf16", "naive", "textbrewer", "cached_grouped")
DEFAULT_VARIANTS = VARIANTS[:-1]
PEERS = ("naive", "textbrewer")
# What each cached variant changes in DistillationConfig.
CACHED_SETTINGS = {
    "cached": {},
    "cached_bucketed": {"length_bucketing": True},
    "cached_bucketed_bf16": {"length_bucketing": True, "bf16": True},
    "cached_grouped": {"train_sampling_strategy": "group_by_length"},
}
WARMUP_RATIO = 0.06
FIRST_SEED = 42


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=os.path.join(ROOT, "outputs", "sst2", "teacher"))
    parser.add_argument("--data_dir", default=SST2_DIR)
    parser.add_argument("--train_rows", type=int, default=8000, help="SST-2 training sentences (0 = all).")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_steps", type=int, default=-1, help="Cap on steps (smoke runs only).")
    parser.add_argument("--seeds", type=int, default=1, help=f"Repeat with seeds {FIRST_SEED}, {FIRST_SEED + 1}, ...")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", default=None, help="Write JSON here (and Markdown beside it).")
    options = parser.parse_args()
    options.variants = [v for v in options.variants.split(",") if v]
    if set(options.variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(set(options.variants) - set(VARIANTS))}; choose from {VARIANTS}")
    if not os.path.isfile(os.path.join(options.teacher, "config.json")):
        parser.error(f"no teacher in {options.teacher}: run `make demo` first or pass --teacher")
    return options


def train_variant(variant: str, seed: int, work_dir: str, train: Any, dev: Any, tokenizer: Any,
                  options: argparse.Namespace) -> dict:
    """Train one variant from scratch; return its wall time (models loaded, cache built, trained) and dev score."""
    torch.set_num_threads(options.threads)
    torch.manual_seed(seed)
    collator = DataCollatorWithPadding(tokenizer)
    started = time.perf_counter()
    teacher = load_classifier(options.teacher)
    student = create_student(teacher, layer_indices=STUDENT_LAYERS)
    steps = options.max_steps if options.max_steps > 0 else options.epochs * math.ceil(len(train) / options.batch_size)
    common = trainer_settings(os.path.join(work_dir, variant), options.batch_size, num_train_epochs=options.epochs,
                              max_steps=options.max_steps, warmup_steps=WARMUP_RATIO, logging_steps=100, seed=seed)
    cache_seconds, fidelity, cheaper_teacher = None, None, None
    if variant == "textbrewer":
        _train_with_textbrewer(teacher, student, train, collator, options, steps, work_dir, seed)
    else:
        if variant == "naive":
            trainer = NaiveDistillationTrainer(model=student, args=TrainingArguments(**common),
                                               teacher_model=teacher, train_dataset=train, data_collator=collator)
        elif variant == "online":
            trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                          args=DistillationConfig(**common, **KD_SETTINGS),
                                          train_dataset=train, data_collator=collator)
        else:
            settings = CACHED_SETTINGS[variant]
            cache_started = time.perf_counter()
            builder = teacher.to(student.device, dtype=torch.bfloat16 if settings.get("bf16") else None)
            cached = build_teacher_cache(builder, train, collator, os.path.join(work_dir, f"cache-{variant}-{seed}"))
            cache_seconds = time.perf_counter() - cache_started
            if builder.dtype != torch.float32:  # kept for the (untimed) fidelity check after training
                cheaper_teacher = builder
            del teacher, builder
            trainer = DistillationTrainer(model=student, teacher_model=None,
                                          args=DistillationConfig(**common, **KD_SETTINGS, **settings),
                                          train_dataset=cached, data_collator=collator)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    seconds = time.perf_counter() - started
    if cheaper_teacher is not None:  # how far the cache's teacher is from the float32 one, on dev
        fidelity = _fidelity(cheaper_teacher, options.teacher, dev, collator)
    score = evaluate_model(student, dev, collator, build_compute_metrics("sequence_classification"), batch_size=128)
    return {"seconds": round(seconds, 1), "cache_build_seconds": round(cache_seconds, 1) if cache_seconds else None,
            "steps": steps, "dev_accuracy": round(score["accuracy"], 4), "cache_teacher_fidelity": fidelity}


def _fidelity(teacher: Any, reference_dir: str, dev: Any, collator: Any) -> dict:
    """Argmax agreement and mean KL of the (cheaper) cache teacher against the float32 one, on the dev set."""
    inputs = ("input_ids", "attention_mask", "token_type_ids")
    rows = dev.select_columns([c for c in dev.column_names if c in inputs])
    batches = [collator([rows[i] for i in range(start, min(start + 128, len(rows)))]) for start in range(0, len(rows), 128)]
    return teacher_fidelity(load_classifier(reference_dir), teacher, batches, accepted_inputs=inputs,
                            max_rows=len(rows))


def _train_with_textbrewer(teacher: Any, student: Any, train: Any, collator: Any, options: argparse.Namespace,
                           steps: int, work_dir: str, seed: int) -> None:
    from torch.utils.data import DataLoader

    # A plain dict: TextBrewer calls model(*batch) on anything else, BatchEncoding included.
    loader = DataLoader(train, batch_size=options.batch_size, shuffle=True, collate_fn=lambda rows: dict(collator(rows)),
                        generator=torch.Generator().manual_seed(seed))
    distiller = textbrewer_distiller(teacher, student, os.path.join(work_dir, f"textbrewer-{seed}"),
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


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per variant: the per-seed lists, mean ± std, speed-up over the faster peer and accuracy vs the peers' mean."""
    variants = {name: {"seconds": [r["seconds"] for r in rs], "accuracy": [r["dev_accuracy"] for r in rs],
                       "cache_build_seconds": [r["cache_build_seconds"] for r in rs],
                       "peak_memory_mb": [r.get("peak_memory_mb") for r in rs],
                       "cache_teacher_fidelity": [r["cache_teacher_fidelity"] for r in rs]}
                for name, rs in runs.items()}
    for entry in variants.values():
        (entry["seconds_mean"], entry["seconds_std"]) = (round(v, 1) for v in mean_std(entry["seconds"]))
        (entry["accuracy_mean"], entry["accuracy_std"]) = (round(v, 4) for v in mean_std(entry["accuracy"]))
    peers = [p for p in PEERS if p in variants]
    faster = min(peers, key=lambda p: variants[p]["seconds_mean"]) if peers else None
    peers_accuracy = statistics.fmean(a for p in peers for a in variants[p]["accuracy"]) if peers else None
    for entry in variants.values():
        entry["speedup_over_faster_peer"] = round(variants[faster]["seconds_mean"] / entry["seconds_mean"], 2) \
            if faster else None
        entry["accuracy_points_vs_peers"] = round(100 * (entry["accuracy_mean"] - peers_accuracy), 2) \
            if peers else None
    return {"variants": variants, "faster_peer": faster,
            "peers_accuracy_mean": round(peers_accuracy, 4) if peers else None}


def markdown(report: dict) -> str:
    rows = []
    for name, entry in report["variants"].items():
        cache = [c for c in entry["cache_build_seconds"] if c is not None]
        rows.append([name, len(entry["seconds"]), f"{entry['seconds_mean']} ± {entry['seconds_std']}",
                     f"{statistics.fmean(cache):.1f}" if cache else "–",
                     f"{100 * entry['accuracy_mean']:.2f} ± {100 * entry['accuracy_std']:.2f}",
                     f"{entry['speedup_over_faster_peer']:.2f}x" if entry["speedup_over_faster_peer"] else "–",
                     f"{entry['accuracy_points_vs_peers']:+.2f}" if entry["accuracy_points_vs_peers"] is not None
                     else "–"])
    headers = ["variant", "seeds", "wall time (s)", "of which cache build (s)", "SST-2 dev accuracy (%)",
               f"faster peer ({report['faster_peer'] or 'none run'}) ÷ variant", "vs peers' mean accuracy (points)"]
    return f"CPU: {report['settings']['cpu']}; {report['settings']['threads']} threads.\n\n" + markdown_table(headers, rows)


def main() -> None:
    options = parse()
    quiet_libraries()
    tokenizer = transformers.AutoTokenizer.from_pretrained(options.teacher)
    data = load_sst2(tokenizer, options.data_dir, train_rows=options.train_rows or None)
    train, dev = data.train, data.dev
    variants = list(options.variants)
    skipped = skip_textbrewer(variants, "textbrewer")
    seeds = list(range(FIRST_SEED, FIRST_SEED + options.seeds))
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    settings = {"train_rows": len(train), "epochs": options.epochs, "batch_size": options.batch_size,
                "threads": options.threads, "teacher": options.teacher, "torch": torch.__version__,
                "device": device(), "cpu": cpu_name(), "max_steps": options.max_steps, "seeds": seeds}
    with tempfile.TemporaryDirectory(prefix="hfkd-epochs-") as work_dir:
        for seed in seeds:
            for variant in variants:
                runs[variant].append(in_child(train_variant, variant, seed, work_dir, train, dev, tokenizer, options))
                print(f"seed {seed} {variant}: {runs[variant][-1]}", flush=True)
                report = {**summarize({v: r for v, r in runs.items() if r}), "skipped": skipped, "settings": settings}
                if options.output:
                    write_results(options.output, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
