"""The README's main job: fine-tune a MiniLM-L6 teacher on SST-2, distill a 3-layer student,
evaluate both on the full SST-2 dev set and print a teacher-vs-student table.

    python recipes/sst2_main_job.py            # ~7 min on 2 CPU cores: 8,000 training sentences
    python recipes/sst2_main_job.py --full     # all 67,349 training sentences

Each step is the plain recipe with its YAML config (recipes/configs/sst2_teacher.yaml,
recipes/configs/sst2_minilm_l3.yaml); this script only chains them and reports.
"""

from __future__ import annotations

import argparse
import json
import os

from transformers import TrainingArguments

from hfkd.app.recipes import main as run_recipe
from hfkd.app.recipes import finish_process, run_distillation, run_finetune
from hfkd.app.report_cli import main as report_main
from hfkd.app.report_cli import summarize

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "configs")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="Train on the whole SST-2 train set.")
    parser.add_argument("--train_samples", type=int, default=8000, help="Training sentences when not --full.")
    parser.add_argument("--data_dir", default=os.path.join(HERE, "..", "..", "shared", "data", "sst2"),
                        help="Folder with SST-2 train.tsv and dev.tsv (GLUE format).")
    parser.add_argument("--output_root", default="outputs/sst2")
    parser.add_argument("--skip_report", action="store_true", help="Skip the latency/DM report at the end.")
    parser.add_argument("--reuse_teacher", action="store_true",
                        help="Skip fine-tuning when output_root/teacher already holds a finished teacher.")
    return parser.parse_args()


def main() -> None:
    options = parse()
    data = ["--train_file", os.path.join(options.data_dir, "train.tsv"),
            "--validation_file", os.path.join(options.data_dir, "dev.tsv")]
    if not options.full:
        data += ["--max_train_samples", str(options.train_samples)]
    teacher_dir = os.path.join(options.output_root, "teacher")
    student_dir = os.path.join(options.output_root, "student_l3")
    subset = "all 67,349" if options.full else f"a seeded subsample of {options.train_samples:,} of 67,349"
    print(f"hfkd main job: SST-2, training on {subset} train sentences; evaluation on the full dev set (872).",
          flush=True)

    if not (options.reuse_teacher and os.path.isfile(os.path.join(teacher_dir, "eval_results.json"))):
        print("[1/2] fine-tuning the teacher (MiniLM-L6-H384, 6 layers)", flush=True)
        run_recipe(run_finetune, ["--config", os.path.join(CONFIGS, "sst2_teacher.yaml"),
                                  "--output_dir", teacher_dir, "--overwrite_output_dir", *data],
                   config_class=TrainingArguments)
    print("[2/2] distilling a 3-layer student (teacher layers 0, 2, 4)", flush=True)
    run_recipe(run_distillation, ["--config", os.path.join(CONFIGS, "sst2_minilm_l3.yaml"),
                                  "--teacher_model_name_or_path", teacher_dir, "--output_dir", student_dir,
                                  "--overwrite_output_dir", *data])

    table = summarize(teacher_dir, {"student_l3": student_dir}, metric="eval_accuracy")
    with open(os.path.join(options.output_root, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(table, handle, indent=2)
    print("\nSST-2 dev (872 sentences):\n" + table["markdown"], flush=True)
    if not options.skip_report:
        print("\nMeasuring size, latency and the distillation metric (hfkd report):", flush=True)
        report_main(["--teacher", teacher_dir, "--student", student_dir,
                     "--config", os.path.join(CONFIGS, "sst2_minilm_l3.yaml"),
                     "--validation_file", os.path.join(options.data_dir, "dev.tsv"),
                     "--repeats", "10", "--output_dir", os.path.join(options.output_root, "report")])


if __name__ == "__main__":
    main()
    finish_process()
