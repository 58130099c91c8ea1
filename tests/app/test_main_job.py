"""The main job (recipes/sst2_main_job.py): what it refuses before compute, and what it passes to the students."""

from __future__ import annotations

import runpy
import sys

import pytest

from conftest import REPO_ROOT

MAIN_JOB = str(REPO_ROOT / "recipes" / "sst2_main_job.py")


def test_teacher_dir_without_a_finished_teacher_is_refused_before_compute(tmp_path, monkeypatch):
    teacher = tmp_path / "my_teacher"
    teacher.mkdir()
    (teacher / "model.safetensors").write_bytes(b"the user's weights")
    output_root = tmp_path / "job"
    monkeypatch.setattr(sys, "argv", [MAIN_JOB, "--teacher_dir", str(teacher), "--output_root", str(output_root)])
    with pytest.raises(SystemExit, match="holds no finished teacher"):
        runpy.run_path(MAIN_JOB, run_name="__main__")
    assert (teacher / "model.safetensors").read_bytes() == b"the user's weights"
    assert sorted(p.name for p in teacher.iterdir()) == ["model.safetensors"]
    assert not output_root.exists()


def test_a_mistyped_student_flag_or_a_missing_mlm_is_refused_before_the_teacher_is_fine_tuned(tmp_path, monkeypatch,
                                                                                               capsys):
    import hfkd.app.recipes

    monkeypatch.setattr(hfkd.app.recipes, "main", lambda *a, **k: pytest.fail("compute started"))
    root = tmp_path / "job"
    monkeypatch.setattr(sys, "argv", [MAIN_JOB, "--output_root", str(root), "--lenght_bucketing", "false"])
    with pytest.raises(SystemExit):
        runpy.run_path(MAIN_JOB, run_name="__main__")
    assert "unrecognised arguments ['--lenght_bucketing', 'false']" in capsys.readouterr().err
    classifier = tmp_path / "classifier"
    classifier.mkdir()
    (classifier / "config.json").write_text('{"model_type": "bert", "architectures": ["BertForSequenceClassification"]}')
    monkeypatch.setattr(sys, "argv", [MAIN_JOB, "--output_root", str(root), "--augment_mlm", str(classifier)])
    with pytest.raises(SystemExit, match="not a masked LM"):
        runpy.run_path(MAIN_JOB, run_name="__main__")
    assert not root.exists()


def fake_main_job(tmp_path, monkeypatch, *flags: str, every_step: bool = False) -> list[tuple[str, list[str]]]:
    """Run the main job with every step replaced by a recorder; return the recipe runs (name, argv) in order
    (`every_step`: the trims, exports and report too)."""
    import json

    import hfkd.app.export_cli
    import hfkd.app.recipes
    import hfkd.app.report_cli
    import hfkd.app.trim_vocab

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "eval_results.json").write_text("{}")
    for name in ("data/train.tsv", "data/dev.tsv", "q/train_5500.label", "q/TREC_10.label"):  # checked to exist
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    runs = []

    def fake_recipe(run, argv, **_):
        runs.append((run.__name__, list(argv)))
        if "--output_dir" in argv:  # a student: the twin reads its step count
            folder = tmp_path / argv[argv.index("--output_dir") + 1]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": 7}))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hfkd.app.recipes, "main", fake_recipe)
    monkeypatch.setattr(hfkd.app.report_cli, "summarize", lambda *a, **k: {"markdown": ""})
    monkeypatch.setattr(hfkd.app.report_cli, "main", lambda argv: runs.append(("report", list(argv))))
    monkeypatch.setattr(hfkd.app.trim_vocab, "main", lambda argv: runs.append(("trim", list(argv))))
    monkeypatch.setattr(hfkd.app.export_cli, "export_main", lambda argv: runs.append(("export", list(argv))))
    monkeypatch.setattr(sys, "argv", [MAIN_JOB, "--teacher_dir", str(teacher), "--output_root", "job",
                                      *([] if every_step else ["--skip_report"]), "--data_dir", "data", *flags])
    runpy.run_path(MAIN_JOB, run_name="__main__")
    return runs if every_step else [(name, argv) for name, argv in runs if name.startswith("run_")]


def test_flags_the_job_does_not_define_reach_both_students_and_the_cache(tmp_path, monkeypatch):
    runs = fake_main_job(tmp_path, monkeypatch, "--length_bucketing", "false", "--num_train_epochs", "2")
    assert [name for name, _ in runs] == ["run_cache_teacher", "run_distillation", "run_distillation"]
    for _, argv in runs:
        assert argv[argv.index("--length_bucketing") + 1] == "false"
        assert argv[argv.index("--num_train_epochs") + 1] == "2"
    twin = runs[-1][1]
    # The twin's own settings come after the forwarded ones, so argparse keeps them.
    assert twin.index("--max_steps") > twin.index("--num_train_epochs")
    assert twin[twin.index("--max_steps") + 1] == "7" and twin[twin.index("--alpha_kd") + 1] == "0"


def test_the_twin_drops_every_teacher_term_the_students_flags_add(tmp_path, monkeypatch):
    from hfkd.app.arguments import parse_args
    from hfkd.app.recipes import ModelArguments
    from hfkd.app.task_data import DataArguments
    from hfkd.config import DistillationConfig

    runs = fake_main_job(tmp_path, monkeypatch, "--alpha_hidden", "1", "--layer_mapping", "skip")
    distilled, twin = runs[1][1], runs[2][1]
    assert distilled[distilled.index("--alpha_hidden") + 1] == "1"
    *_, twin_config = parse_args([ModelArguments, DataArguments, DistillationConfig], twin)
    assert not twin_config.needs_teacher and twin_config.alpha_ce == 1 and twin_config.max_steps == 7


def test_a_student_config_whose_stages_use_the_teacher_is_refused_before_compute(tmp_path, monkeypatch):
    import hfkd.app.recipes

    monkeypatch.setattr(hfkd.app.recipes, "main", lambda *a, **k: pytest.fail("compute started"))
    staged = REPO_ROOT / "recipes" / "configs" / "sst2_minilm_pruned.yaml"  # TinyBERT's two stages
    monkeypatch.setattr(sys, "argv", [MAIN_JOB, "--output_root", str(tmp_path / "job"), "--student_config", str(staged)])
    with pytest.raises(SystemExit, match="the no-teacher twin would still use the teacher"):
        runpy.run_path(MAIN_JOB, run_name="__main__")
    assert not (tmp_path / "job").exists()


def test_augmented_copies_go_unlabeled_to_the_cache_and_the_distilled_student_not_the_twin(tmp_path, monkeypatch):
    from transformers import BertConfig, BertForMaskedLM

    mlm = tmp_path / "mlm"
    BertForMaskedLM(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=16)).save_pretrained(mlm)
    runs = fake_main_job(tmp_path, monkeypatch, "--full", "--augment_mlm", str(mlm), "--augment_copies", "2")
    cache, distilled, twin = (argv for _, argv in runs)
    for argv in (cache, distilled):
        assert argv[argv.index("--augment_mlm") + 1] == str(mlm) and argv[argv.index("--augment_copies") + 1] == "2"
        assert argv[argv.index("--augment_unlabeled") + 1] == "true"
    assert not any(flag.startswith("--augment") for flag in twin)


def test_crops_go_to_the_cache_and_the_distilled_student_not_the_twin(tmp_path, monkeypatch, capsys):
    runs = fake_main_job(tmp_path, monkeypatch, "--full", "--crops", "1.5")
    cache, distilled, twin = (argv for _, argv in runs)
    for argv in (cache, distilled):
        assert argv[argv.index("--unlabeled_crops") + 1] == "1.5"
    assert "--unlabeled_crops" not in twin
    monkeypatch.setattr(sys, "argv", [MAIN_JOB, "--crops", "-1"])
    with pytest.raises(SystemExit):
        runpy.run_path(MAIN_JOB, run_name="__main__")
    assert "--crops -1.0: give a number >= 0" in capsys.readouterr().err


def test_trim_twin_ships_the_twin_as_the_distilled_student_is_shipped(tmp_path, monkeypatch):
    def shipped(*flags):
        root = tmp_path / ("with" if flags else "without")
        root.mkdir()
        steps = fake_main_job(root, monkeypatch, *flags, every_step=True)
        trims = [argv[argv.index("--model") + 1] for name, argv in steps if name == "trim"]
        exports = [argv[argv.index("--model") + 1] for name, argv in steps if name == "export"]
        report = next(argv for name, argv in steps if name == "report")
        return trims, exports, [report[i + 1] for i, flag in enumerate(report) if flag == "--artifact"]

    trims, exports, artifacts = shipped()
    assert trims == ["job/student_pruned"]
    assert exports == ["job/student_pruned", "job/student_pruned_trimmed"]
    assert artifacts == ["distilled-onnx-int8=job/student_pruned_onnx_int8",
                         "distilled-trimmed-onnx-int8=job/student_pruned_trimmed_onnx_int8"]
    trims, exports, artifacts = shipped("--trim_twin")
    assert trims == ["job/student_pruned", "job/student_pruned_no_teacher"]
    assert exports[-1] == "job/student_pruned_no_teacher_trimmed"
    assert artifacts[-1] == "no-teacher-trimmed-onnx-int8=job/student_pruned_no_teacher_trimmed_onnx_int8"


def test_named_data_files_replace_the_data_dir_for_every_step(tmp_path, monkeypatch):
    runs = fake_main_job(tmp_path, monkeypatch, "--full", "--train_file", "q/train_5500.label",
                         "--validation_file", "q/TREC_10.label")
    for _, argv in runs:
        assert argv[argv.index("--train_file") + 1] == "q/train_5500.label"
        assert argv[argv.index("--validation_file") + 1] == "q/TREC_10.label"


def test_a_missing_data_file_is_refused_before_compute(tmp_path, monkeypatch):
    import hfkd.app.recipes

    monkeypatch.setattr(hfkd.app.recipes, "main", lambda *a, **k: pytest.fail("compute started"))
    monkeypatch.setattr(sys, "argv", [MAIN_JOB, "--output_root", str(tmp_path / "job"),
                                      "--train_file", str(tmp_path / "train_5500.label")])
    with pytest.raises(SystemExit, match=r"no such data file: --train_file .*train_5500\.label: give --data_dir"):
        runpy.run_path(MAIN_JOB, run_name="__main__")
    assert not (tmp_path / "job").exists()
