"""`student_init: prune` in the distill recipe: a seeded calibration sample of the training set."""

import json

import pytest
from transformers import AutoModelForSequenceClassification

from conftest import LABELS, make_text_classification_workspace, needs_example_checkpoint
from hfkd.app.recipes import main, run_distillation

pytestmark = needs_example_checkpoint  # the workspace tokenizes with the real tokenizer


def test_distill_recipe_prunes_the_student_from_the_teacher(tmp_path):
    root = make_text_classification_workspace(tmp_path)
    main(run_distillation, [
        "--teacher_model_name_or_path", str(root / "teacher6"), "--student_init", "prune",
        "--student_num_layers", "1", "--student_hidden_size", "16", "--student_intermediate_size", "24",
        "--student_calibration_samples", "32", "--alpha_kd", "1", "--alpha_hidden", "1", "--layer_mapping", "skip",
        "--train_file", str(root / "train.csv"), "--validation_file", str(root / "dev.csv"),
        "--output_dir", str(root / "student"), "--per_device_train_batch_size", "8", "--max_steps", "2",
        "--report_to", "none", "--use_cpu", "--save_strategy", "no", "--disable_tqdm", "true",
        "--max_seq_length", "32"])
    config = json.loads((root / "student" / "config.json").read_text())
    assert config["hfkd_student_init"] == {"init": "prune", "calibration_samples": 32}
    assert (config["hidden_size"], config["num_attention_heads"], config["intermediate_size"]) == (16, 2, 24)
    assert len(config["hfkd_teacher_layers"]) == 1
    student = AutoModelForSequenceClassification.from_pretrained(root / "student")
    assert student.config.id2label[0] == "abbr"


def test_prune_with_too_few_training_rows_is_refused(tmp_path, capsys):
    root = make_text_classification_workspace(tmp_path)
    (root / "tiny.csv").write_text("text,label\n" + "".join(f"what is it {i},{label}\n" for i, label in enumerate(LABELS)))
    with pytest.raises(SystemExit) as exit_info:
        main(run_distillation, [
            "--teacher_model_name_or_path", str(root / "teacher6"), "--student_init", "prune",
            "--student_hidden_size", "16", "--train_file", str(root / "tiny.csv"), "--output_dir",
            str(root / "student"), "--report_to", "none", "--use_cpu", "--max_seq_length", "32"])
    assert exit_info.value.code == 2
    assert "calibration_samples=6 (calibration_dataset has 6 rows): importance needs at least 8 rows" in (
        capsys.readouterr().err)
