"""SST-2 quality benchmark: does distillation pay over plain fine-tuning of the same student?

    python scripts/benchmark_quality.py [--student_train_samples 20000] [--output_root outputs/quality]

1. Teacher: MiniLM-L6-H384 fine-tuned on the full SST-2 train set (recipes/configs/sst2_teacher.yaml).
2. One 3-layer initialisation: layers 0, 2, 4 of the *pretrained* checkpoint, with one seeded head.
   (a) distilled with hfkd (recipes/configs/sst2_minilm_l3.yaml: KD + CE + hidden states),
   (b) fine-tuned without a teacher — same data, steps, hyper-parameters and initialisation.
3. The narrower TinyBERT-style student (recipes/configs/sst2_minilm_tiny.yaml).
All scores are on the SST-2 dev set, which no setting here was tuned on. Writes quality.json and
quality.md (the table for BENCHMARKS.md) in output_root; finished steps are reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

from hfkd import create_student
from hfkd.models import resolve_model_path
from hfkd.app.recipes import main as run_recipe
from hfkd.app.recipes import run_distillation, run_finetune
from hfkd.app.report_cli import summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "recipes", "configs")
PRETRAINED = "sentence-transformers/all-MiniLM-L6-v2"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "data", "sst2"))
    parser.add_argument("--output_root", default="outputs/quality")
    parser.add_argument("--teacher_train_samples", type=int, default=None, help="Default: the full train set.")
    parser.add_argument("--student_train_samples", type=int, default=20000)
    parser.add_argument("--student_epochs", type=float, default=2.0)
    return parser.parse_args()


def done(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "eval_results.json"))


def pretrained_layers_student(path: str, teacher_dir: str) -> None:
    """Layers 0, 2, 4 of the pretrained checkpoint with a seeded head and the teacher's labels."""
    teacher_config = AutoModelForSequenceClassification.from_pretrained(teacher_dir).config
    torch.manual_seed(0)
    pretrained = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(PRETRAINED), num_labels=teacher_config.num_labels,
        id2label=teacher_config.id2label, label2id=teacher_config.label2id)
    create_student(pretrained, layer_indices=[0, 2, 4]).save_pretrained(path)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(path)


def data_flags(data_dir: str) -> list[str]:
    """Recipe flags for a GLUE folder's train.tsv/dev.tsv (runs are overwritten, finished ones skipped)."""
    return ["--train_file", os.path.join(data_dir, "train.tsv"),
            "--validation_file", os.path.join(data_dir, "dev.tsv"), "--overwrite_output_dir"]


def ensure_teacher(teacher_dir: str, data: list[str], train_samples: int | None = None) -> None:
    """Fine-tune the MiniLM-L6 teacher (recipes/configs/sst2_teacher.yaml) unless already done."""
    if done(teacher_dir):
        return
    extra = ["--max_train_samples", str(train_samples)] if train_samples else []
    run_recipe(run_finetune, ["--config", os.path.join(CONFIGS, "sst2_teacher.yaml"), "--output_dir",
                              teacher_dir, *data, *extra], config_class=TrainingArguments)


def main() -> None:
    options = parse()
    root = options.output_root
    data = data_flags(options.data_dir)
    teacher_dir = os.path.join(root, "teacher")
    ensure_teacher(teacher_dir, data, options.teacher_train_samples)

    init_dir = os.path.join(root, "init_pretrained_l3")
    if not os.path.isfile(os.path.join(init_dir, "config.json")):
        pretrained_layers_student(init_dir, teacher_dir)
    student_data = [*data, "--max_train_samples", str(options.student_train_samples),
                    "--num_train_epochs", str(options.student_epochs)]
    distilled, plain, tiny = (os.path.join(root, name) for name in ("l3_distilled", "l3_no_teacher", "tiny_distilled"))
    if not done(distilled):
        run_recipe(run_distillation, ["--config", os.path.join(CONFIGS, "sst2_minilm_l3.yaml"),
                                      "--teacher_model_name_or_path", teacher_dir,
                                      "--student_model_name_or_path", init_dir,  # skip map: its layers 0, 2, 4
                                      "--output_dir", distilled, *student_data])
    if not done(plain):
        # Same hyper-parameters as the distilled run (lr, warmup, decay, batch, epochs), no teacher.
        run_recipe(run_finetune, ["--config", os.path.join(CONFIGS, "sst2_teacher.yaml"),
                                  "--model_name_or_path", init_dir, "--output_dir", plain, *student_data],
                   config_class=TrainingArguments)
    if not done(tiny):
        run_recipe(run_distillation, ["--config", os.path.join(CONFIGS, "sst2_minilm_tiny.yaml"),
                                      "--teacher_model_name_or_path", teacher_dir, "--output_dir", tiny,
                                      *student_data])

    table = summarize(teacher_dir, {"3-layer distilled (a)": distilled, "3-layer no teacher (b)": plain,
                                    "3x192 TinyBERT-style distilled": tiny})
    table["settings"] = vars(options)
    with open(os.path.join(root, "quality.json"), "w", encoding="utf-8") as handle:
        json.dump(table, handle, indent=2)
    with open(os.path.join(root, "quality.md"), "w", encoding="utf-8") as handle:
        handle.write(table["markdown"] + "\n")
    print(table["markdown"])


if __name__ == "__main__":
    main()
