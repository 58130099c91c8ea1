"""How the cost of distillation grows: step time and peak memory against sequence length and batch size,
cache build time and disk size against rows, each next to what the models' FLOPs predict.

    python scripts/benchmark_scaling.py [--steps 4] [--output outputs/speed/scaling.json]
        (writes scaling.md and scaling.png beside the JSON)
    python scripts/benchmark_scaling.py --steps 1 --lengths 16,32 --batch_sizes 4,8 --cache_rows 64,128  (smoke)
    python scripts/benchmark_scaling.py --sections padding --output outputs/speed/padding.json  (counts only: seconds)

Models as in scripts/benchmark_speed.py: MiniLM-L6 (6 layers, hidden 384) with a seeded random 2-label
head → its layers 0, 2, 4. Inputs are random token ids of exactly the length asked (no padding), so
each point measures one shape. Variants: S (the student alone, transformers.Trainer, CE), O (hfkd
online KD + CE), OH (O + hidden-state MSE, uniform map), C (hfkd from the teacher cache, KD + CE,
cache built beforehand and not timed here). Sweeps: `--lengths` at `--batch_size`, `--batch_sizes` at
`--length`. A step is the wall time between Trainer `on_step_end` callbacks after `--warmup` steps,
mean of `--steps`; each (variant, shape) runs in its own forked child, whose peak RSS growth is its
peak memory. The cache sweep builds the cache of the first `--cache_rows` SST-2 training sentences
(dynamic padding, max 64 tokens) and reports the build time (teacher loaded beforehand) and the
cache folder's size on disk. The padding section counts, without any model, the tokens one epoch
of batches (batch `--batch_size`) feeds the model on the first `max(--cache_rows)` sentences with
random batches (Trainer's default), `length_bucketing` (hfkd) and `group_by_length` (transformers'
LengthGroupedSampler), 3 epochs each: a count, the same on every machine.

FLOPs prediction (multiply-adds × 2, the matmuls only): a BERT layer costs 24·h² FLOPs per token in
its linear layers plus 4·L·h in attention (QKᵀ and AV), so a forward pass of B sequences of L tokens
costs B·n_layers·(24·h²·L + 4·h·L²); a training step ≈ 3 × the student's forward (backward ≈ 2×)
+ the teacher's forward for O and OH. The "predicted" column is `a + b·FLOPs` fitted per variant on
its three smallest shapes (a: the per-step cost no shape changes, the optimizer over all 17M
parameters first), extrapolated to the larger ones: measured ÷ predicted above 1 is growth beyond
the FLOPs (memory traffic of the L² attention probabilities, caches overflowing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from typing import Any

from benchmarking import (  # first: it sets up the environment transformers reads on import
    KD_SETTINGS, cpu_name, SST2_DIR, device, in_child, load_sst2, quiet_libraries, trainer_settings, write_results,
)
import numpy as np
import torch
from datasets import Dataset
from transformers import AutoTokenizer, DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

from benchmark_speed import HIDDEN, MODEL_DIR, StepTimes, _load, prepare_models
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.report.render import markdown_table
from hfkd.teacher.cache import build_teacher_cache
from hfkd.trainers.sampling import LengthBucketedSampler, row_lengths

VARIANTS = ("S", "O", "OH", "C")
TEACHER_LAYERS, STUDENT_LAYERS_COUNT, HIDDEN_SIZE = 6, 3, 384


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="Timed steps per (variant, shape).")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--lengths", default="32,64,128,256,512")
    parser.add_argument("--batch_size", type=int, default=32, help="Batch size of the length sweep.")
    parser.add_argument("--batch_sizes", default="8,16,32,64,128")
    parser.add_argument("--length", type=int, default=64, help="Sequence length of the batch-size sweep.")
    parser.add_argument("--cache_rows", default="1000,2000,4000,8000,16000")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--sections", default="length,batch_size,cache,padding")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data_dir", default=SST2_DIR)
    parser.add_argument("--output", default=None, help="Write JSON here (Markdown and PNG beside it).")
    options = parser.parse_args()
    options.lengths = [int(x) for x in options.lengths.split(",") if x]
    options.batch_sizes = [int(x) for x in options.batch_sizes.split(",") if x]
    options.cache_rows = [int(x) for x in options.cache_rows.split(",") if x]
    options.variants = [v for v in options.variants.split(",") if v]
    options.sections = [v for v in options.sections.split(",") if v]
    if set(options.variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(set(options.variants) - set(VARIANTS))}; choose from {VARIANTS}")
    return options


def forward_flops(layers: int, batch: int, length: int, hidden: int = HIDDEN_SIZE) -> float:
    """Matmul FLOPs of one forward pass of a BERT encoder (linear layers + attention scores and mixing)."""
    return batch * layers * (24 * hidden**2 * length + 4 * hidden * length**2)


def step_flops(variant: str, batch: int, length: int) -> float:
    student = 3 * forward_flops(STUDENT_LAYERS_COUNT, batch, length)
    return student + (forward_flops(TEACHER_LAYERS, batch, length) if variant in ("O", "OH") else 0.0)


def _rows(batch: int, length: int, steps: int, teacher_logits: bool) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    rows = batch * steps
    ids = torch.randint(1000, 29000, (rows, length), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    columns = {"input_ids": ids.tolist(), "attention_mask": [[1] * length] * rows,
               "labels": torch.randint(0, 2, (rows,), generator=generator).tolist()}
    if teacher_logits:  # C reads logits from the cache's column; their values do not change the cost
        columns["teacher_logits"] = torch.randn(rows, 2, generator=generator).tolist()
    return Dataset.from_dict(columns)


def time_steps(variant: str, work_dir: str, batch: int, length: int, options: argparse.Namespace) -> dict:
    """Train `variant` for warmup + steps steps on batches of exactly (batch, length); the timed steps' mean."""
    torch.set_num_threads(options.threads)
    total = options.warmup + options.steps
    timer = StepTimes()
    common = trainer_settings(os.path.join(work_dir, f"run-{variant}"), batch, max_steps=total, logging_steps=1000)
    data = _rows(batch, length, total, variant == "C")
    student = _load(work_dir, "student")
    if variant == "S":
        trainer = Trainer(model=student, args=TrainingArguments(**common), train_dataset=data, callbacks=[timer])
    else:
        teacher = None if variant == "C" else _load(work_dir, "teacher")
        args = DistillationConfig(**common, **KD_SETTINGS, **(HIDDEN if variant == "OH" else {}))
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                      callbacks=[timer])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    steps = [b[0] - a[0] for a, b in zip(timer.ends, timer.ends[1:])][-options.steps:]
    return {"step_seconds": statistics.fmean(steps)}


def build_cache(work_dir: str, train: Any, tokenizer: Any, rows: int, options: argparse.Namespace) -> dict:
    """Build the cache of the first `rows` sentences; its build time and size on disk."""
    torch.set_num_threads(options.threads)
    teacher = _load(work_dir, "teacher")
    cache_dir = os.path.join(work_dir, f"cache-{rows}")
    started = time.perf_counter()
    build_teacher_cache(teacher, train.select(range(rows)), DataCollatorWithPadding(tokenizer), cache_dir)
    seconds = time.perf_counter() - started
    size = int(subprocess.run(["du", "-sb", cache_dir], capture_output=True, text=True, check=True).stdout.split()[0])
    return {"build_seconds": seconds, "disk_mb": size / 2**20}


def _with_prediction(points: list[dict], fitted_on: int = 3) -> list[dict]:
    """Each point's predicted time `a + b·FLOPs`, a and b fitted per variant on its `fitted_on` smallest shapes.

    `a` is what a step costs whatever the shape (the optimizer over all parameters, the embedding
    matrix's dense gradient, Trainer's bookkeeping); a point above the line grows faster than its FLOPs.
    """
    for variant in {p["variant"] for p in points}:
        own = sorted((p for p in points if p["variant"] == variant), key=lambda p: p["flops"])
        base = own[:max(2, fitted_on)]
        slope, fixed = np.polyfit([p["flops"] for p in base], [p["step_seconds"] for p in base], 1)
        for point in own:
            point["predicted_seconds"] = float(fixed + slope * point["flops"])
            point["fixed_seconds"] = float(fixed)
    return points


def sweep(name: str, shapes: list[tuple[int, int]], work_dir: str, options: argparse.Namespace) -> list[dict]:
    points = []
    for batch, length in shapes:
        for variant in options.variants:
            run = in_child(time_steps, variant, work_dir, batch, length, options)
            points.append({"variant": variant, "batch_size": batch, "length": length,
                           "step_seconds": run["step_seconds"], "peak_memory_mb": run["peak_memory_mb"],
                           "flops": step_flops(variant, batch, length)})
            print(f"{name}: {variant} batch {batch} length {length}: {run['step_seconds']:.3f} s/step, "
                  f"{run['peak_memory_mb']:.0f} MB", flush=True)
    return _with_prediction(points)


def padding(lengths: list[int], batch_size: int, epochs: int = 3) -> list[dict]:
    """Tokens per epoch (each batch padded to its longest row) under each sampler, and the share that is padding."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    def fed(order: list[int]) -> int:
        return sum(max(lengths[i] for i in order[s:s + batch_size]) * len(order[s:s + batch_size])
                   for s in range(0, len(order), batch_size))

    bucketed = LengthBucketedSampler(lengths, batch_size, 50, seed=42)
    samplers = {"random": lambda epoch: torch.randperm(len(lengths), generator=torch.Generator().manual_seed(epoch)
                                                       ).tolist(),
                "length_bucketing": lambda epoch: (bucketed.set_epoch(epoch), list(bucketed))[1],
                "group_by_length": lambda epoch: list(LengthGroupedSampler(
                    batch_size, lengths=lengths, generator=torch.Generator().manual_seed(epoch)))}
    real = sum(lengths)
    rows = []
    for name, order_of in samplers.items():
        tokens = statistics.fmean(fed(order_of(epoch)) for epoch in range(epochs))
        rows.append({"sampler": name, "tokens_per_epoch": tokens, "padding_share": 1 - real / tokens})
    for row in rows:
        row["tokens_vs_random"] = row["tokens_per_epoch"] / rows[0]["tokens_per_epoch"]
    return rows


def markdown(report: dict) -> str:
    lines = []
    if report.get("padding"):
        rows = [[p["sampler"], f"{p['tokens_per_epoch']:.0f}", f"{p['padding_share']:.1%}",
                 f"{p['tokens_vs_random']:.2f}"] for p in report["padding"]]
        lines += [f"Tokens per epoch fed to the model ({report['settings']['padding_rows']} SST-2 sentences, "
                  f"batch {report['settings']['batch_size']}, mean of 3 epochs):", "",
                  markdown_table(["sampler", "tokens per epoch", "padding", "vs random"], rows), ""]
    for name, key in (("sequence length", "length"), ("batch size", "batch_size")):
        if not report[key]:
            continue
        rows = [[p["variant"], p[key], f"{p['step_seconds']:.3f}", f"{p['predicted_seconds']:.3f}",
                 f"{p['step_seconds'] / p['predicted_seconds']:.2f}", f"{p['peak_memory_mb']:.0f}"]
                for p in sorted(report[key], key=lambda p: (p["variant"], p[key]))]
        lines += [f"Step time against {name}:", "",
                  markdown_table(["variant", name, "step (s)", "FLOPs-predicted (s)", "measured ÷ predicted",
                                  "peak memory (MB)"], rows), ""]
    rows = [[c["rows"], f"{c['build_seconds']:.2f}", f"{c['predicted_seconds']:.2f}", f"{c['disk_mb']:.2f}"]
            for c in report["cache"]]
    if rows:
        lines += ["Teacher cache against rows:", "",
                  markdown_table(["rows", "build (s)", "linear prediction (s)", "disk (MB)"], rows)]
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for axis, key, label in ((axes[0], "length", "sequence length"), (axes[1], "batch_size", "batch size")):
        for variant in report["settings"]["variants"]:
            points = sorted((p for p in report[key] if p["variant"] == variant), key=lambda p: p[key])
            line, = axis.plot([p[key] for p in points], [p["step_seconds"] for p in points], "o-", label=variant)
            axis.plot([p[key] for p in points], [p["predicted_seconds"] for p in points], ":", color=line.get_color())
            axes[2].plot([p[key] for p in points], [p["peak_memory_mb"] for p in points], "o-" if key == "length"
                         else "s--", color=line.get_color(), label=f"{variant} vs {label}")
        axis.set(xscale="log", yscale="log", xlabel=label, ylabel="step (s)",
                 title=f"step time vs {label} (dotted: FLOPs-predicted)")
        axis.legend()
    axes[2].set(xscale="log", xlabel="length (o) / batch size (s)", ylabel="peak memory (MB)", title="peak memory")
    axes[2].legend(fontsize=7)
    cache = report["cache"]
    axes[3].plot([c["rows"] for c in cache], [c["build_seconds"] for c in cache], "o-", label="build (s)")
    axes[3].plot([c["rows"] for c in cache], [c["disk_mb"] for c in cache], "s-", label="disk (MB)")
    axes[3].set(xscale="log", yscale="log", xlabel="rows", title="teacher cache")
    axes[3].legend()
    figure.suptitle(f"hfkd cost growth, MiniLM-L6 → 3 layers, {report['settings']['threads']} threads "
                    f"({report['settings']['cpu']})")
    figure.tight_layout()
    staging = path + ".tmp.png"
    figure.savefig(staging, dpi=90)
    os.replace(staging, path)  # atomic, like the JSON and Markdown


def main() -> None:
    options = parse()
    quiet_libraries()
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    train = load_sst2(tokenizer, options.data_dir, train_rows=max(options.cache_rows)).train
    wanted = set(options.sections)
    with tempfile.TemporaryDirectory(prefix="hfkd-scaling-") as work_dir:
        if wanted & {"length", "batch_size", "cache"}:
            in_child(prepare_models, work_dir)
        by_length = sweep("length", [(options.batch_size, n) for n in options.lengths], work_dir, options) \
            if "length" in wanted else []
        by_batch = sweep("batch", [(b, options.length) for b in options.batch_sizes], work_dir, options) \
            if "batch_size" in wanted else []
        cache = [{"rows": rows, **in_child(build_cache, work_dir, train, tokenizer, rows, options)}
                 for rows in options.cache_rows] if "cache" in wanted else []
    for entry in cache:  # linear in rows from the smallest build
        entry["predicted_seconds"] = cache[0]["build_seconds"] * entry["rows"] / cache[0]["rows"]
    pads = padding(row_lengths(train), options.batch_size) if "padding" in wanted else []
    report = {"length": by_length, "batch_size": by_batch, "cache": cache, "padding": pads,
              "settings": {"steps": options.steps, "warmup": options.warmup, "batch_size": options.batch_size,
                           "length": options.length, "threads": options.threads, "variants": options.variants,
                           "padding_rows": len(train),
                           "device": device(), "cpu": cpu_name(), "torch": torch.__version__}}
    table = markdown(report)
    print(table)
    if options.output:
        write_results(options.output, report, table)
        if by_length and by_batch and cache:
            plot(report, os.path.splitext(options.output)[0] + ".png")


if __name__ == "__main__":
    main()
