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
import os

from benchmarking import (  # first: it sets up the environment transformers reads on import
    CONFIGS, PRETRAINED, SST2_DIR, STUDENT_LAYERS, data_flags, done, ensure_teacher, save_layer_student,
    write_results,
)
import torch
from transformers import AutoModelForSequenceClassification, TrainingArguments

from hfkd.models import resolve_model_path
from hfkd.app.recipes import main as run_recipe
from hfkd.app.recipes import run_distillation, run_finetune
from hfkd.app.report_cli import summarize


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=SST2_DIR)
    parser.add_argument("--output_root", default="outputs/quality")
    parser.add_argument("--teacher_train_samples", type=int, default=None, help="Default: the full train set.")
    parser.add_argument("--student_train_samples", type=int, default=20000)
    parser.add_argument("--student_epochs", type=float, default=2.0)
    return parser.parse_args()


def pretrained_layers_student(path: str, teacher_dir: str) -> None:
    """Layers 0, 2, 4 of the pretrained checkpoint with a seeded head and the teacher's labels."""
    teacher_config = AutoModelForSequenceClassification.from_pretrained(teacher_dir).config
    torch.manual_seed(0)
    pretrained = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(PRETRAINED), num_labels=teacher_config.num_labels,
        id2label=teacher_config.id2label, label2id=teacher_config.label2id)
    save_layer_student(path, pretrained, STUDENT_LAYERS, teacher_dir)


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
    write_results(os.path.join(root, "quality.json"), table, table["markdown"])
    print(table["markdown"])


if __name__ == "__main__":
    main()
