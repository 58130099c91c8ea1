"""What a row costs when the student trains from the teacher cache with a transfer set, against its
labels-only twin: the main job's own two runs, cut to --steps optimizer steps.

    python scripts/benchmark_transfer_step.py [--root outputs/sst2] [--steps 400] [--repeats 3] \
        [--length_bucketing false] [--output outputs/bench/transfer_step.json]

Needs the main job's teacher and teacher cache (`make demo` leaves them in outputs/sst2). Each run is
`python -m hfkd distill` with the main job's config and flags in a fresh process: `cached` trains on the
8,000 labelled + 59,271 unlabeled rows from the cache (CE on the labelled, KD on all), `twin` on the
labelled rows with CE alone. Both use the same batch size, so seconds per step are seconds per 32
rows. The two alternate `--repeats` times (cached, twin, cached, ...) so a slow spell of the machine
hits both; the time is Trainer's `train_runtime` (model loading and evaluation left out). Run it
alone on the machine: the ratio is only as good as the quiet it was measured in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

from benchmarking import CONFIGS, ROOT, SST2_DIR, cpu_name, write_results

STUDENT_CONFIG = os.path.join(CONFIGS, "sst2_minilm_pruned_kd.yaml")


def run(kind: str, options: argparse.Namespace, work: str) -> float:
    """Seconds per optimizer step of one `cached` or `twin` run."""
    train = os.path.join(options.data_dir, "train.tsv")
    flags = ["--config", STUDENT_CONFIG, "--teacher_model_name_or_path", os.path.join(options.root, "teacher"),
             "--train_file", train, "--validation_file", os.path.join(options.data_dir, "dev.tsv"),
             "--max_train_samples", "8000", "--max_steps", str(options.steps), "--max_eval_samples", "64",
             "--length_bucketing", options.length_bucketing, "--logging_steps", "1000", "--disable_tqdm", "true",
             "--output_dir", os.path.join(work, kind), "--overwrite_output_dir"]
    if kind == "cached":
        flags += ["--unlabeled_file", train, "--teacher_cache_dir", os.path.join(options.root, "teacher_cache")]
    else:
        flags += ["--alpha_kd", "0", "--alpha_ce", "1"]
    subprocess.run([sys.executable, "-m", "hfkd", "distill", *flags], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(work, kind, "train_results.json"), encoding="utf-8") as handle:
        return json.load(handle)["train_runtime"] / options.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(ROOT, "outputs", "sst2"), help="The main job's output_root.")
    parser.add_argument("--data_dir", default=SST2_DIR)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--length_bucketing", default="false", choices=("true", "false"))
    parser.add_argument("--output", default=os.path.join(ROOT, "outputs", "bench", "transfer_step.json"))
    options = parser.parse_args()
    if not os.path.isfile(os.path.join(options.root, "teacher_cache", "fingerprint.json")):
        raise SystemExit(f"no teacher cache in {options.root}/teacher_cache: run `make demo` first.")
    seconds: dict[str, list[float]] = {"cached": [], "twin": []}
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(options.repeats):
            for kind in seconds:
                seconds[kind].append(run(kind, options, work))
                print(f"repeat {repeat + 1}: {kind} {1000 * seconds[kind][-1]:.1f} ms/step", flush=True)
    mean = {kind: statistics.mean(values) for kind, values in seconds.items()}
    spread = {kind: statistics.stdev(values) if len(values) > 1 else 0.0 for kind, values in seconds.items()}
    results = {"steps": options.steps, "repeats": options.repeats, "length_bucketing": options.length_bucketing,
               "cpu": cpu_name(), "threads": os.environ.get("OMP_NUM_THREADS", "default"),
               "python": platform.python_version(), "seconds_per_step": seconds,
               "ratio_cached_to_twin": mean["cached"] / mean["twin"]}
    lines = ["| run | ms per step (32 rows), mean ± std | per repeat |", "|---|---|---|"]
    for kind, values in seconds.items():
        lines.append(f"| {kind} | {1000 * mean[kind]:.1f} ± {1000 * spread[kind]:.1f} | "
                     + ", ".join(f"{1000 * v:.1f}" for v in values) + " |")
    markdown = "\n".join(lines) + (f"\n\ncached / twin: {results['ratio_cached_to_twin']:.3f}× "
                                   f"({options.steps} steps × {options.repeats} repeats, {results['cpu']})")
    print(markdown)
    write_results(options.output, results, markdown)


if __name__ == "__main__":
    main()
