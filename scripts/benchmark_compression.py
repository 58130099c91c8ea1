"""Does distillation pay for a compact student, measured on what is deployed? The main job, over seeds.

    python scripts/benchmark_compression.py [--full] [--seeds 1 2 3] [--output_root outputs/compression] \
        [any recipes/sst2_main_job.py flag, e.g. --student_config ... --train_samples 8000]

Each seed runs the README's main job (recipes/sst2_main_job.py) with that seed: the compact student
(the teacher pruned, distilled from the teacher cache, its last fifth int8-aware), its no-teacher twin
(the same pruned start and optimizer steps, labels only), trimmed-vocabulary copies of both (the
main job's `--trim_twin`: the trimmed student's own twin), int8 ONNX of the distilled student and of
both trimmed copies, and `hfkd report`, which scores every artifact by running it on the whole dev
set. The teacher is fine-tuned once (its config's seed) and the cache built once: every seed reuses
both, so the seeds differ only in the students' runs (pruning sample, head, batch order).
`--full` labels the whole train split (the full-train teacher, no transfer set); without it, the
main job's 8,000 labelled sentences and the rest of the split as an unlabeled transfer set.

The header gives the per-seed gaps: distilled minus twin, trimmed int8 minus trimmed int8 twin, and
int8 minus its fp32 source. Rows: mean ± std over the seeds of each artifact's measured score, its
share of the teacher's, DM (α = 0.5) with size = parameters and with size = bytes on disk, and the
batch-1 speed-up. A seed whose report exists is not rerun. Writes compression.json and compression.md
in --output_root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarking import ROOT, cpu_name, mean_std, write_results

from hfkd.report.render import markdown_table

MAIN_JOB = os.path.join(ROOT, "recipes", "sst2_main_job.py")
# The main job's report rows, in the order the table shows them.
ROWS = {"student_pruned": "distilled (PyTorch fp32)", "distilled-onnx-int8": "distilled, int8 ONNX",
        "distilled-trimmed-onnx-int8": "distilled, vocabulary trimmed, int8 ONNX",
        "student_pruned_no_teacher": "no-teacher twin (PyTorch fp32)",
        "no-teacher-trimmed-onnx-int8": "no-teacher twin, vocabulary trimmed, int8 ONNX"}
# (student, its twin) pairs whose per-seed gap the header prints, when both rows are there.
GAPS = {"distilled minus twin": ("student_pruned", "student_pruned_no_teacher"),
        "trimmed int8 distilled minus trimmed int8 twin": ("distilled-trimmed-onnx-int8",
                                                           "no-teacher-trimmed-onnx-int8"),
        "int8 ONNX minus its fp32 source": ("distilled-onnx-int8", "student_pruned")}


def parse() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--output_root", default="outputs/compression")
    options, job_flags = parser.parse_known_args()
    taken = {"--output_root", "--seed", "--teacher_dir", "--cache_dir", "--skip_report"}
    clash = sorted(taken & {flag.partition("=")[0] for flag in job_flags})
    if clash:
        parser.error(f"{', '.join(clash)} are set per seed by this script: leave them out.")
    return options, job_flags


def run_seed(seed: int, options: argparse.Namespace, job_flags: list[str]) -> dict:
    """The main job with `seed` (skipped when its report exists); returns the report."""
    root = os.path.join(options.output_root, f"seed{seed}")
    report = os.path.join(root, "report", "report.json")
    if not os.path.isfile(report):
        subprocess.run([sys.executable, MAIN_JOB, *job_flags, "--trim_twin", "--seed", str(seed),
                        "--output_root", root, "--teacher_dir", os.path.join(options.output_root, "teacher"),
                        "--cache_dir", os.path.join(options.output_root, "teacher_cache")], check=True)
    with open(report, encoding="utf-8") as handle:
        return json.load(handle)


def summarise(reports: dict[int, dict], job_flags: list[str]) -> tuple[list[dict], str]:
    """One row per artifact over the seeds (mean ± std), and its Markdown table."""
    teacher = next(iter(reports.values()))["teacher"]
    rows, cells = [], []
    for name, label in ROWS.items():
        entries = {seed: next((e for e in report["students"] if e["name"] == name), None)
                   for seed, report in reports.items()}
        if None in entries.values():  # a row a seed's report lacks (e.g. made before --trim_twin) is left out
            continue
        scores = [100 * e["score"] for e in entries.values()]
        score, std = mean_std(scores)
        dm, dm_std = mean_std([e["distillation_metric"] for e in entries.values()])
        dm_bytes, dm_bytes_std = mean_std([e["distillation_metric_bytes"] for e in entries.values()])
        first = next(iter(entries.values()))
        speedup, kept = first.get("speedup"), score / (100 * teacher["score"])
        rows.append({"artifact": name, "scores": dict(zip(entries, scores)), "mean": score, "std": std,
                     "kept_of_teacher": kept, "dm": dm, "dm_std": dm_std, "dm_bytes": dm_bytes,
                     "dm_bytes_std": dm_bytes_std, "params": first["params"], "size_bytes": first["size_bytes"],
                     "speedup": speedup})
        cells.append([label, f"{first['params'] / 1e6:.2f}", f"{first['size_bytes'] / 1e6:.2f}",
                      f"{score:.2f} ± {std:.2f}", ", ".join(f"{s:.2f}" for s in scores),
                      f"{100 * kept:.1f}%", f"{dm:.4f} ± {dm_std:.4f}",
                      f"{dm_bytes:.4f} ± {dm_bytes_std:.4f}", "–" if speedup is None else f"{speedup:.2f}×"])
    by_artifact = {row["artifact"]: row["scores"] for row in rows}
    gaps = []
    for title, (first_name, second_name) in GAPS.items():
        if first_name in by_artifact and second_name in by_artifact:
            gap = [by_artifact[first_name][s] - by_artifact[second_name][s] for s in reports]
            gaps.append(f"{title} per seed: {', '.join(f'{g:+.2f}' for g in gap)} (mean {statistics.mean(gap):+.2f})")
    header = (f"Teacher {100 * teacher['score']:.2f}% ({teacher['params'] / 1e6:.2f}M parameters, "
              f"{teacher['size_bytes'] / 1e6:.2f} MB); main job flags {job_flags or 'none'}; seeds {list(reports)}; "
              f"CPU: {cpu_name()}.\n" + "; ".join(gaps) + ".")
    table = markdown_table(["artifact", "params (M)", "MB", "dev accuracy % (mean ± std)", "per seed",
                            "kept of teacher", "DM (α=0.5) by params", "DM by bytes", "batch-1 speed-up (first seed)"],
                           cells)
    return rows, header + "\n\n" + table


def main() -> None:
    options, job_flags = parse()
    reports = {seed: run_seed(seed, options, job_flags) for seed in options.seeds}
    rows, markdown = summarise(reports, job_flags)
    write_results(os.path.join(options.output_root, "compression.json"),
                  {"settings": {**vars(options), "main_job_flags": job_flags}, "rows": rows}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
