"""Temperature and loss-weight schedules: the documented formulas, in the loss, in the logs, across a resume."""

import math

import pytest

from conftest import seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.objective.schedules import schedule_value
from tolerance import float32_bound


def config(tmp_path, **kw):
    defaults = dict(
        output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, per_device_train_batch_size=8,
        max_steps=4, learning_rate=1e-3, logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True,
        alpha_kd=1.0, alpha_ce=0.5, temperature=4.0,
        temperature_schedule="linear", temperature_end=1.0,
        loss_weight_schedule="cosine", loss_weights_end={"alpha_kd": 0.2, "alpha_ce": 1.0},
    )
    return DistillationConfig(**{**defaults, **kw})


def expected_at(step, max_steps=4):
    """Values for the optimizer step that starts after `step` completed steps (module docstring)."""
    p = step / max_steps
    cosine = (1 + math.cos(math.pi * p)) / 2
    return {"temperature": 4.0 + (1.0 - 4.0) * p, "alpha_kd": 0.2 + (1.0 - 0.2) * cosine,
            "alpha_ce": 1.0 + (0.5 - 1.0) * cosine}


def test_schedule_formulas():
    assert schedule_value("constant", 3.0, 9.0, 0.7) == 3.0
    assert schedule_value("linear", 4.0, 1.0, 0.25) == pytest.approx(3.25)
    assert schedule_value("cosine", 1.0, 0.0, 0.0) == pytest.approx(1.0)
    assert schedule_value("cosine", 1.0, 0.0, 0.5) == pytest.approx(0.5)
    assert schedule_value("cosine", 1.0, 0.0, 1.0) == pytest.approx(0.0)
    assert schedule_value("linear", 4.0, 1.0, 1.5) == pytest.approx(1.0)  # clamped


def _logged(trainer):
    return {h["step"]: h for h in trainer.state.log_history if "loss" in h}


def test_scheduled_values_are_used_in_the_loss_and_logged_every_step(tmp_path, tiny_dataset):
    teacher, student = seq_cls_pair()
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path), train_dataset=tiny_dataset)
    trainer.train()
    logged = _logged(trainer)
    assert sorted(logged) == [1, 2, 3, 4]
    for step, entry in logged.items():
        values = expected_at(step - 1)
        assert set(values) <= set(entry) and "alpha_hidden" not in entry  # constant weights are not logged
        for name, value in values.items():
            assert entry[name] == pytest.approx(value, rel=1e-9)
        # The loss of that step is the weighted sum with the scheduled weights: the terms are logged
        # rounded to 6 decimals, the loss is their float32 sum.
        weighted = [values["alpha_kd"] * entry["kd_loss"], values["alpha_ce"] * entry["ce_loss"]]
        bound = 0.5e-6 * (values["alpha_kd"] + values["alpha_ce"]) + float32_bound(weighted)
        assert entry["loss"] == pytest.approx(sum(weighted), abs=bound)
    settings = trainer.distillation_settings()["schedules"]
    assert "temperature linear 4→1" in settings and "alpha_kd cosine 1→0.2" in settings


def test_resume_continues_the_schedule(tmp_path, tiny_dataset):
    teacher, student = seq_cls_pair()
    args = config(tmp_path, save_strategy="steps", save_steps=2)
    DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=tiny_dataset).train()
    _, fresh = seq_cls_pair(seed=1)
    resumed = DistillationTrainer(model=fresh, teacher_model=teacher, args=args, train_dataset=tiny_dataset)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    logged = _logged(resumed)
    for step in (3, 4):
        assert logged[step]["temperature"] == pytest.approx(expected_at(step - 1)["temperature"])
        assert logged[step]["alpha_kd"] == pytest.approx(expected_at(step - 1)["alpha_kd"])


def test_constant_schedules_change_and_log_nothing(tmp_path, tiny_pair, tiny_dataset):
    teacher, student = tiny_pair
    args = config(tmp_path, temperature_schedule="constant", temperature_end=None,
                  loss_weight_schedule="constant", loss_weights_end=None, max_steps=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=tiny_dataset)
    trainer.train()
    assert trainer.schedule.current == {"temperature": 4.0, "alpha_kd": 1.0, "alpha_ce": 0.5,
                                        "alpha_hidden": 0.0, "alpha_attention": 0.0, "alpha_relation": 0.0}
    assert not any("temperature" in h for h in trainer.state.log_history)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(temperature_end=None), "linear or cosine schedule needs temperature_end"),
        (dict(temperature_schedule="constant"), "a constant one takes none"),
        (dict(temperature_schedule="step"), "temperature_schedule='step' is not supported"),
        (dict(temperature_end=0.0), "temperature_end must be a finite number > 0"),
        (dict(loss_weights_end=None), "needs loss_weights_end"),
        (dict(loss_weights_end={"alpha_xx": 1.0}), "loss_weights_end must map some of"),
        (dict(loss_weights_end={"alpha_hidden": 1.0}), "alpha_hidden=0 switches that term off"),
        (dict(loss_weights_end={"alpha_kd": 0.0, "alpha_ce": 0.0}), "takes every loss weight to 0"),
        (dict(loss_weights_end="{alpha_kd: 1}"), "is not JSON"),
    ],
)
def test_bad_schedules_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **overrides)


def test_loss_weights_end_accepts_json(tmp_path):
    assert config(tmp_path, loss_weights_end='{"alpha_kd": 0.1}').loss_weights_end == {"alpha_kd": 0.1}
