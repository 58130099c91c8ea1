"""Staged distillation (TinyBERT): stage arithmetic, per-stage losses, one schedule, exact resume."""

from pathlib import Path

import pytest
import torch

from conftest import seq_cls_dataset, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.objective.stages import parse_stages, stage_boundaries, stage_index

BASE = {"alpha_ce": 0.5, "alpha_kd": 0.5, "alpha_hidden": 0.0, "alpha_attention": 0.0, "alpha_relation": 0.0}
INTERMEDIATE = {"alpha_hidden": 1.0, "alpha_attention": 1.0, "alpha_kd": 0.0, "alpha_ce": 0.0}
PREDICTION = {"alpha_kd": 1.0, "alpha_ce": 0.0}


def config(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, per_device_train_batch_size=8,
                    learning_rate=1e-3, logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True)
    return DistillationConfig(**{**defaults, **kw})


def test_stage_weights_override_the_top_level_ones_and_fill_the_rest():
    stages = parse_stages([{"max_steps": 3, **INTERMEDIATE}, {"max_steps": 2, "alpha_kd": 1.0}], BASE)
    assert stages[0] == {"max_steps": 3, **BASE, **INTERMEDIATE}
    assert stages[1] == {"max_steps": 2, **BASE, "alpha_kd": 1.0}


def test_boundaries_and_stage_of_each_step():
    stages = parse_stages([{"num_train_epochs": 2, **INTERMEDIATE}, {"num_train_epochs": 1, **PREDICTION}], BASE)
    assert stage_boundaries(stages, total_steps=12) == [8, 12]
    assert [stage_index(stages, step, 12) for step in range(12)] == [0] * 8 + [1] * 4
    assert stage_index(stages, 12, 12) == 1  # a final log after the last step


def test_run_length_is_the_sum_of_the_stages():
    args = config(Path("unused"), stages='[{"max_steps": 3, "alpha_hidden": 1}, {"max_steps": 2}]')
    assert args.max_steps == 5
    args = config(Path("unused"), stages=[{"num_train_epochs": 1.5}, {"num_train_epochs": 2}])
    assert args.num_train_epochs == 3.5 and args.max_steps == -1


@pytest.mark.parametrize(
    "stages,message",
    [
        ([], "non-empty list"),
        ("[{", "not JSON"),
        ([{"alpha_kd": 1.0}], "exactly one of"),
        ([{"max_steps": 2, "epochs": 1}], "unknown keys \\['epochs'\\]"),
        ([{"max_steps": 1.5}], "max_steps must be a positive integer"),
        ([{"num_train_epochs": 0}], "num_train_epochs must be a positive number"),
        ([{"max_steps": 2}, {"num_train_epochs": 1}], "mix max_steps and num_train_epochs"),
        ([{"max_steps": 2, "alpha_kd": 0, "alpha_ce": 0}], "stage 1: all loss weights .* are 0"),
        ([{"max_steps": 2, "alpha_kd": -1}], "stage 1: alpha_kd must be a finite number >= 0"),
    ],
)
def test_bad_stages_are_refused(stages, message):
    with pytest.raises(ValueError, match=message):
        config(Path("unused"), stages=stages)


def test_max_steps_that_disagree_with_the_stages_is_refused():
    with pytest.raises(ValueError, match="max_steps=7 disagrees with the stages' 4 steps"):
        config(Path("unused"), stages=[{"max_steps": 4}], max_steps=7)
    with pytest.raises(ValueError, match="would override the stages' 2.0 epochs"):
        config(Path("unused"), stages=[{"num_train_epochs": 2}], max_steps=7)


def staged_trainer(tmp_path, **kw):
    teacher, student = (m.double() for m in seq_cls_pair(student_hidden=16))  # float64: see the resume test
    args = config(tmp_path, stages=[{"max_steps": 2, **INTERMEDIATE}, {"max_steps": 2, **PREDICTION}],
                  include_embeddings=True, **kw)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=seq_cls_dataset(48))


def test_each_stage_trains_its_own_terms_under_one_schedule(tmp_path):
    trainer = staged_trainer(tmp_path)
    assert trainer.projections is not None and trainer.teacher.config._attn_implementation == "eager"
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["stage"] for h in logs] == [1, 1, 2, 2]
    assert all({"hidden_loss", "attention_loss"} <= set(h) and "kd_loss" not in h for h in logs[:2])
    assert all("kd_loss" in h and "hidden_loss" not in h and "ce_loss" not in h for h in logs[2:])
    # One linear schedule over 4 steps, not restarted at the boundary.
    assert [h["learning_rate"] for h in logs] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    assert "stages" in trainer.distillation_settings()


@pytest.mark.parametrize("checkpoint", [2, 3])
def test_resuming_at_or_right_after_the_stage_boundary_matches_an_uninterrupted_run(tmp_path, checkpoint):
    full = staged_trainer(tmp_path / "full")
    full.train()
    interrupted = staged_trainer(tmp_path / "ckpt", save_strategy="steps", save_steps=1)
    interrupted.train()
    resumed = staged_trainer(tmp_path / "ckpt")
    resumed.train(resume_from_checkpoint=str(tmp_path / "ckpt" / "run" / f"checkpoint-{checkpoint}"))
    expected, actual = full.model.state_dict(), resumed.model.state_dict()
    for key in expected:
        # Same operations replayed on bit-exact restored state (equal here); float64 keeps it so where a
        # kernel's result depends on where loaded tensors lie in memory (Adam amplifies a float32 ulp).
        assert expected[key].dtype in (torch.float64, torch.int64), key
        torch.testing.assert_close(actual[key], expected[key], atol=1e-6, rtol=0)
    logged = [h for h in resumed.state.log_history if "loss" in h]
    assert [h["stage"] for h in logged][-1] == 2
