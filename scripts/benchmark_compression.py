"""Does distillation pay for a compact student, measured on what is deployed?

    python scripts/benchmark_compression.py --teacher_dir outputs/sst2/teacher \
        [--students pruned_4x192_kd pruned_4x192_tinybert l3_copied] [--seeds 1 2 3] [--train_samples 8000] \
        [--runs no_teacher distilled distilled+transfer] [--transfer_samples 16000] [--output_root outputs/compression]

For each student recipe and seed, the same start is trained through the recipes (`hfkd distill`):
its no-teacher twin (one labels-only stage, as many optimizer steps as the longest distilled run),
distilled with the recipe's objective on the labelled sentences, and distilled with N more SST-2
training sentences without their labels as a transfer set (a seeded sample of the whole train
split, so about N x 8,000 / 67,349 of them are also among the labelled ones). The last of these runs
then becomes the artifacts a user would ship: itself (PyTorch fp32), its vocabulary trimmed to the
training sentences (`hfkd trim-vocab`), and int8 ONNX of both (`hfkd export --quantize int8`,
kept even outside the export check's bound, which is recorded). `hfkd report` scores every artifact
by running it on the full dev set and gives parameters, bytes and DM by each; rows are mean ± std
over seeds. Writes compression.json and compression.md in --output_root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from benchmarking import CONFIGS, SST2_DIR, cpu_name, data_flags, ensure_teacher, quiet_libraries, write_results

from hfkd.app.export_cli import export_main
from hfkd.app.recipes import main as run_recipe
from hfkd.app.recipes import run_distillation
from hfkd.app.report_cli import main as report_main
from hfkd.app.trim_vocab import main as trim_main

STUDENTS = {"pruned_4x192_kd": "sst2_minilm_pruned_kd.yaml", "pruned_4x192_tinybert": "sst2_minilm_pruned.yaml",
            "l3_copied": "sst2_minilm_l3_tinybert.yaml"}
RUNS = ("no_teacher", "distilled", "distilled+transfer")
ALPHA = 0.5


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher_dir", default="outputs/sst2/teacher",
                        help="Fine-tuned teacher (trained like the main job's if missing).")
    parser.add_argument("--students", nargs="+", default=["pruned_4x192_kd"], choices=sorted(STUDENTS))
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS,
                        help="distilled+transfer needs --transfer_samples; the deployable artifacts are made of the "
                             "last run given.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--train_samples", type=int, default=8000, help="Labelled sentences (the main job's subsample).")
    parser.add_argument("--transfer_samples", type=int, default=0,
                        help="Unlabeled training sentences added in a third run (0: no transfer-set run).")
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs per latency measurement in the report.")
    parser.add_argument("--output_root", default="outputs/compression")
    return parser.parse_args()


def twin_stage(config_path: str, options: argparse.Namespace) -> str:
    """One CE-only stage as long as the recipe (its stages' sum, else its num_train_epochs) in optimizer
    steps: with a transfer-set run, as many steps as that run (whose epochs cover the unlabeled rows too)."""
    import yaml

    with open(config_path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    epochs = sum(s["num_train_epochs"] for s in config["stages"]) if config.get("stages") else config["num_train_epochs"]
    if "distilled+transfer" in options.runs:
        epochs *= (options.train_samples + options.transfer_samples) / options.train_samples
    return json.dumps([{"num_train_epochs": epochs, "alpha_ce": 1.0, "alpha_kd": 0.0, "alpha_hidden": 0.0,
                        "alpha_attention": 0.0}])


def train(config_path: str, output_dir: str, seed: int, options: argparse.Namespace, extra: list[str]) -> None:
    if os.path.isfile(os.path.join(output_dir, "eval_results.json")):
        return
    data = [*data_flags(SST2_DIR), "--max_train_samples", str(options.train_samples)]
    run_recipe(run_distillation, ["--config", config_path, "--teacher_model_name_or_path", options.teacher_dir,
                                  "--output_dir", output_dir, "--seed", str(seed),
                                  "--save_strategy", "no", *data, *extra])


def artifacts(model_dir: str, config_path: str) -> dict[str, str]:
    """The trained folder, its trimmed copy and int8 ONNX of both: name -> folder."""
    trimmed, made = f"{model_dir}_trimmed", {"fp32": model_dir}
    if not os.path.isfile(os.path.join(trimmed, "config.json")):
        trim_main(["--model", model_dir, "--texts", config_path, "--output_dir", trimmed])
    made["trimmed"] = trimmed
    for name, source in list(made.items()):
        onnx = f"{source}_onnx_int8"
        if not os.path.isfile(os.path.join(onnx, "hfkd_export.json")):
            export_main(["--model", source, "--format", "onnx", "--quantize", "int8", "--output_dir", onnx,
                         "--config", config_path, "--validation_file", os.path.join(SST2_DIR, "dev.tsv"),
                         "--allow_mismatch"])
        made[f"{name}+onnx_int8"] = onnx
    return made


def run_seed(student: str, seed: int, options: argparse.Namespace) -> list[dict]:
    config_path = os.path.join(CONFIGS, STUDENTS[student])
    root = os.path.join(options.output_root, f"{student}_seed{seed}")
    flags = {"no_teacher": ["--stages", twin_stage(config_path, options)], "distilled": [],
             "distilled+transfer": ["--unlabeled_file", os.path.join(SST2_DIR, "train.tsv"),
                                    "--max_unlabeled_samples", str(options.transfer_samples)]}
    runs = {run: flags[run] for run in options.runs}
    shipped = options.runs[-1]  # the deployable artifacts are made of the last run given only
    named = []
    for run, extra in runs.items():
        train(config_path, os.path.join(root, run), seed, options, extra)
        made = artifacts(os.path.join(root, run), config_path) if run == shipped else {"fp32": os.path.join(root, run)}
        named += [(f"{run}/{kind}", path) for kind, path in made.items()]
    report = report_main(["--teacher", options.teacher_dir, *[a for n, p in named for a in ("--artifact", f"{n}={p}")],
                          "--config", config_path, "--validation_file", os.path.join(SST2_DIR, "dev.tsv"),
                          "--repeats", str(options.repeats), "--alpha", str(ALPHA),
                          "--output_dir", os.path.join(root, "report")])
    return [{"student": student, "seed": seed, **{k: entry.get(k) for k in (
        "name", "format", "params", "size_bytes", "score", "distillation_metric", "distillation_metric_bytes",
        "speedup", "speedup_by_batch")}, "teacher_score": report["teacher"]["score"]} for entry in report["students"]]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list[dict], options: argparse.Namespace) -> str:
    from hfkd.report.render import markdown_table

    cells = []
    for student in dict.fromkeys(r["student"] for r in results):
        for name in dict.fromkeys(r["name"] for r in results if r["student"] == student):
            rows = [r for r in results if r["student"] == student and r["name"] == name]
            score, std = mean_std([100 * r["score"] for r in rows])
            dm, dm_bytes = (mean_std([r[k] for r in rows])[0] for k in ("distillation_metric", "distillation_metric_bytes"))
            kept = statistics.mean(r["score"] / r["teacher_score"] for r in rows)
            cells.append([student, name, f"{rows[0]['params'] / 1e6:.2f}M", f"{rows[0]['size_bytes'] / 1e6:.1f}",
                          f"{score:.2f} ± {std:.2f} ({len(rows)})", f"{100 * kept:.1f}%", f"{dm:.3f}", f"{dm_bytes:.3f}",
                          f"{rows[0]['speedup']:.2f}×"])
    teacher = results[0]["teacher_score"]
    header = (f"Teacher {options.teacher_dir}: {100 * teacher:.2f}% SST-2 dev. {options.train_samples:,} labelled "
              f"sentences; seeds {options.seeds}. CPU: {cpu_name()}.")
    return header + "\n\n" + markdown_table(
        ["student", "run / artifact", "params", "MB", "dev accuracy % (seeds)", "kept of teacher",
         f"DM (α={ALPHA}) by params", "DM by bytes", "batch-1 speed-up (seed 1)"], cells)


def main() -> None:
    options = parse()
    if "distilled+transfer" in options.runs and options.transfer_samples < 1:
        raise SystemExit("--runs distilled+transfer needs --transfer_samples N (N > 0).")
    quiet_libraries()
    ensure_teacher(options.teacher_dir, data_flags(SST2_DIR), train_samples=options.train_samples)
    results = [row for student in options.students for seed in options.seeds for row in run_seed(student, seed, options)]
    markdown = summarise(results, options)
    write_results(os.path.join(options.output_root, "compression.json"),
                  {"settings": vars(options), "results": results}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
