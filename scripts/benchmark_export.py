"""Deployable artifacts of an SST-2 teacher and its 3-layer student: bytes, accuracy and latency of each.

    python scripts/benchmark_export.py --teacher_dir outputs/sst2/teacher \
        --output_root outputs/export_bench

Builds the student with `create_student(teacher, num_layers=3)` (no training unless --student_dir
names a trained one), exports student and teacher with `hfkd export` (ONNX fp32, ONNX int8, PyTorch
int8; every export checked against its source on SST-2 dev; an earlier run's passing export of the
same source is reused), then runs `hfkd report` over all of
them: each row's accuracy is measured by running that artifact over SST-2 dev (872 sentences), and
batch-1 / batch-32 latency is timed interleaved, in one process, ONNX Runtime with torch's thread
count. Prints and writes results.json + results.md in --output_root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

from benchmarking import DATA_DIR, quiet_libraries, write_results  # noqa: I001 (first: sets the Hub offline)

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from hfkd import create_student  # noqa: E402
from hfkd.app.export_cli import export_main  # noqa: E402
from hfkd.app.report_cli import main as report_main  # noqa: E402
from hfkd.deploy.runtime import read_manifest  # noqa: E402
from hfkd.report.render import markdown_table  # noqa: E402

EXPORTS = {"onnx-fp32": ("onnx", None), "onnx-int8": ("onnx", "int8"), "torch-int8": ("torch", "int8")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher_dir", default="outputs/sst2/teacher")
    parser.add_argument("--student_dir", help="A trained student folder (default: a 3-layer copy of the teacher).")
    parser.add_argument("--output_root", default="outputs/export_bench")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Fewer dev rows, for a smoke run.")
    parser.add_argument("--exports_only", action="store_true",
                        help="Stop after the (checked) exports; a later run reuses them and measures.")
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    os.makedirs(args.output_root, exist_ok=True)
    config = os.path.join(args.output_root, "sst2_dev.yaml")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(f"task: sequence_classification\nvalidation_file: {os.path.join(DATA_DIR, 'sst2', 'dev.tsv')}\n"
                     "text_column: sentence\nlabel_column: label\nmax_seq_length: 64\n")
    student_dir = args.student_dir or _copied_student(args.teacher_dir, os.path.join(args.output_root, "student_l3"))
    artifacts, refusals = [], {}
    for owner, source in (("student", student_dir), ("teacher", args.teacher_dir)):
        for name, (fmt, quantize) in EXPORTS.items():
            if owner == "teacher" and name == "torch-int8":
                continue
            out = os.path.join(args.output_root, f"{owner}_{name}")
            refused = _export(source, out, fmt, quantize, config)
            if refused:  # kept with --allow_mismatch so what the refused artifact costs is measured too
                refusals[f"{owner}-{name}"] = refused
            artifacts.append(f"{owner}-{name}{'-refused' if refused else ''}={out}")
    if args.exports_only:
        return
    argv = ["--teacher", args.teacher_dir, "--artifact", f"student-pytorch-fp32={student_dir}", "--config", config,
            "--output_dir", os.path.join(args.output_root, "report"), "--repeats", str(args.repeats)]
    argv += [flag for spec in artifacts for flag in ("--artifact", spec)]
    if args.max_eval_samples:
        argv += ["--max_eval_samples", str(args.max_eval_samples)]
    report = report_main(argv)
    results, markdown = _summary(report, args, refusals)
    write_results(os.path.join(args.output_root, "results.json"), results, markdown)
    print(markdown)


def _export(source: str, out: str, fmt: str, quantize: str | None, config: str) -> str | None:
    """`hfkd export` into `out`, unless an earlier run exported this very source there (exports are
    deterministic: a rerun repeats only the measurement). A refused export is redone with
    --allow_mismatch; returns the refusal (None when the check passed)."""
    manifest = read_manifest(out)
    if not (manifest and manifest["source"] == os.path.abspath(source)):
        argv = ["--model", source, "--format", fmt, "--config", config, "--output_dir", out,
                *(["--quantize", quantize] if quantize else [])]
        try:
            export_main(argv)
        except SystemExit:  # refused, one line printed: keep it anyway, to measure it
            export_main([*argv, "--allow_mismatch"])
        manifest = read_manifest(out)
    if manifest["check_passed"]:
        return None
    with open(os.path.join(out, "export_check.json"), encoding="utf-8") as handle:
        failed = [c for c in json.load(handle)["checks"] if not c["passed"]][0]
    return (f"{failed['artifact']}: argmax agreement {failed['argmax_agreement']:.2%}, max |Δlogit| "
            f"{failed['max_abs_logit_diff']:.3g} on {failed['positions']} dev sentences")


def _copied_student(teacher_dir: str, out: str) -> str:
    """The 3-layer student `create_student` makes from the teacher (layers copied, no training)."""
    if os.path.isfile(os.path.join(out, "model.safetensors")):
        return out  # deterministic: the same copy an earlier run made
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    create_student(teacher, num_layers=3).save_pretrained(out)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(out)
    return out


def _summary(report: dict, args: argparse.Namespace, refusals: dict[str, str]) -> tuple[dict, str]:
    rows = [report["teacher"], *report["students"]]
    teacher = report["teacher"]
    by_name = {r["name"]: r for r in rows}
    int8 = by_name.get("student-onnx-int8") or by_name["student-onnx-int8-refused"]
    ratios = {b: teacher["latency_ms"][b]["p50"] / int8["latency_ms"][b]["p50"] for b in teacher["latency_ms"]}
    table = markdown_table(
        ["artifact", "format", "params (M)", "MB on disk", "dev accuracy", "p50 batch 1 (ms)", "p50 batch 32 (ms)",
         "DM by params", "DM by bytes"],
        [[r["name"], r["format"], f"{r['params'] / 1e6:.1f}", f"{r['size_bytes'] / 1e6:.1f}", f"{100 * r['score']:.2f}%",
          f"{r['latency_ms']['batch_1']['p50']:.2f}", f"{r['latency_ms']['batch_32']['p50']:.1f}",
          "—" if r is teacher else f"{r['distillation_metric']:.3f}",
          "—" if r is teacher else f"{r['distillation_metric_bytes']:.3f}"] for r in rows])
    cpu = report["device"]
    lines = [
        table, "",
        f"ONNX int8 student vs fp32 PyTorch teacher, p50 latency ratio: batch 1 {ratios['batch_1']:.2f}×, "
        f"batch 32 {ratios['batch_32']:.2f}× (target ≥ 4×).",
        "int8 minus its fp32 source, dev accuracy (points): " + ", ".join(
            f"{row['name']} {100 * (row['score'] - source['score']):+.2f}"
            for row, source in ((by_name.get(name) or by_name[f"{name}-refused"], source)
                                for name, source in (("student-onnx-int8", by_name["student-pytorch-fp32"]),
                                                     ("student-torch-int8", by_name["student-pytorch-fp32"]),
                                                     ("teacher-onnx-int8", teacher)))
        ) + ".",
        *(f"Refused by the export check (kept with --allow_mismatch, row `{name}-refused`): {why}."
          for name, why in refusals.items()),
        f"{report['eval_examples']} SST-2 dev sentences; {report['threads']} threads (torch and ONNX Runtime); {cpu}; "
        f"torch {torch.__version__}, Python {platform.python_version()}. DM at α = {report['alpha']:g}. "
        f"Student: {args.student_dir or 'a 3-layer copy of the teacher (create_student, untrained)'}.",
    ]
    results = {"rows": rows, "latency_ratio_onnx_int8_student_vs_torch_teacher": ratios, "device": cpu,
               "refused_exports": refusals,
               "threads": report["threads"], "teacher_dir": args.teacher_dir, "student_dir": args.student_dir,
               "command": "python scripts/benchmark_export.py " + " ".join(
                   f"--{k}" if v is True else f"--{k} {v}" for k, v in vars(args).items() if v not in (None, False))}
    return json.loads(json.dumps(results)), "\n".join(lines)


if __name__ == "__main__":
    main()
