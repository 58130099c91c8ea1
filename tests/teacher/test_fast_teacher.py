"""Cheaper teacher forward passes: what they change, and the fidelity measurement that guards them."""

import pytest
import torch
import torch.nn.functional as F

from conftest import seq_cls_dataset, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.teacher.fast import speed_up_teacher, teacher_fidelity
from hfkd.models import DistillationSetupError
from tolerance import float32_bound, kl_magnitudes

INPUTS = ("input_ids", "attention_mask")


def batches(n=3, seed=0):
    for i in range(n):
        ds = seq_cls_dataset(8, 10, seed=seed + i)
        yield {k: torch.tensor(ds[k]) for k in ds.column_names}


def quantized_linears(model):
    return [m for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]


def test_fidelity_of_a_model_with_itself_is_perfect():
    teacher, _ = seq_cls_pair()
    teacher.eval()
    result = teacher_fidelity(teacher, teacher, batches(), accepted_inputs=INPUTS)
    assert result == {"argmax_agreement": 1.0, "mean_kl": 0.0, "max_abs_logit_diff": 0.0, "items": 24}


def test_fidelity_matches_an_independent_computation():
    a, _ = seq_cls_pair(seed=0)
    b, _ = seq_cls_pair(seed=1)
    a.eval(), b.eval()
    result = teacher_fidelity(a, b, batches(), accepted_inputs=INPUTS)
    with torch.no_grad():
        feed = [{k: v for k, v in x.items() if k in INPUTS} for x in batches()]
        za = torch.cat([a(**f).logits for f in feed])
        zb = torch.cat([b(**f).logits for f in feed])
    # The same float32 logits teacher_fidelity gets (same inputs and kernels): argmax and the largest
    # difference are exact by construction; the mean KL is float32, bounded by the terms it sums.
    log_a, log_b = za.double().log_softmax(-1), zb.double().log_softmax(-1)
    expected_kl = (log_a.exp() * (log_a - log_b)).sum(-1).mean()
    sizes = kl_magnitudes(log_a, log_b, za.double().logsumexp(-1), zb.double().logsumexp(-1)) / len(za)
    assert result["items"] == 24
    assert result["argmax_agreement"] == pytest.approx((za.argmax(-1) == zb.argmax(-1)).float().mean().item())
    assert result["mean_kl"] == pytest.approx(expected_kl.item(), abs=float32_bound(sizes, n=3))
    assert result["max_abs_logit_diff"] == pytest.approx((za - zb).abs().max().item(), rel=1e-6)


def test_int8_dynamic_quantizes_linear_layers_and_stays_close():
    teacher, _ = seq_cls_pair()
    teacher.eval()
    reference = seq_cls_pair()[0].eval()
    fast = speed_up_teacher(teacher, quantization="int8_dynamic")
    assert quantized_linears(fast) and not any(type(m) is torch.nn.Linear for m in fast.modules())
    result = teacher_fidelity(reference, fast, batches(), accepted_inputs=INPUTS)
    assert 0 < result["max_abs_logit_diff"] < 0.1 and result["mean_kl"] < 1e-3


def test_bad_options_are_refused():
    teacher, _ = seq_cls_pair()
    with pytest.raises(ValueError, match="float32 teacher"):
        speed_up_teacher(teacher, dtype=torch.bfloat16, quantization="int8_dynamic")
    with pytest.raises(ValueError, match="teacher_quantization"):
        DistillationConfig(output_dir="x", teacher_quantization="int4")


def trainer_for(tmp_path, **kw):
    teacher, student = seq_cls_pair()
    args = DistillationConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, alpha_kd=1.0, max_steps=2,
                              per_device_eval_batch_size=8, **kw)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args,
                               train_dataset=seq_cls_dataset(), eval_dataset=seq_cls_dataset(16, seed=5))


def test_trainer_measures_a_cheaper_teacher_and_the_card_says_so(tmp_path):
    trainer = trainer_for(tmp_path, teacher_quantization="int8_dynamic")
    assert trainer.teacher_fidelity["items"] == 16 and trainer.teacher_fidelity["argmax_agreement"] >= 0.99
    assert quantized_linears(trainer.teacher)
    assert "argmax agreement" in trainer.distillation_settings()["teacher_forward"]
    trainer.train()


def test_trainer_refuses_a_teacher_below_the_agreement_bound(tmp_path):
    trainer = trainer_for(tmp_path)
    other, _ = seq_cls_pair(seed=3)
    with pytest.raises(DistillationSetupError, match="agrees with the full teacher on .* below teacher_min_agreement"):
        trainer.teachers_side.measure_fidelity(trainer.teacher, other.eval(), trainer.fidelity_batches())


@pytest.mark.slow
def test_compiled_teacher_gives_the_same_logits():
    teacher, _ = seq_cls_pair()
    teacher.eval()
    reference = seq_cls_pair()[0].eval()
    result = teacher_fidelity(reference, speed_up_teacher(teacher, compile=True), batches(), accepted_inputs=INPUTS)
    assert result["argmax_agreement"] == 1.0 and result["max_abs_logit_diff"] < 1e-4


def test_a_bf16_cache_teacher_is_cast_in_place_with_its_fidelity_measured_against_float32():
    from hfkd.teacher.fast import cast_with_fidelity

    teacher, _ = seq_cls_pair()
    float32_logits = teacher.eval()(**{k: v for k, v in next(batches(1)).items() if k in INPUTS}).logits
    cast, fidelity = cast_with_fidelity(teacher, torch.bfloat16, lambda: batches(), min_agreement=0.0)
    assert cast is teacher and next(cast.parameters()).dtype == torch.bfloat16
    assert fidelity["items"] == 24 and 0.0 <= fidelity["argmax_agreement"] <= 1.0
    # Measured against the uncast float32 weights (a bf16 reference would give 0): the first batch is among those
    # compared, so the largest difference seen is at least that batch's.
    bf16_logits = cast(**{k: v for k, v in next(batches(1)).items() if k in INPUTS}).logits.float()
    assert fidelity["max_abs_logit_diff"] >= (float32_logits - bf16_logits).abs().max().item() - 1e-6
    assert cast_with_fidelity(teacher, None, lambda: batches(), min_agreement=1.0)[1] is None  # no cast, no check


def test_a_cache_teacher_below_the_agreement_bound_is_refused():
    from hfkd.teacher.fast import require_fidelity

    require_fidelity({"argmax_agreement": 0.99}, 0.99, "the teacher")
    with pytest.raises(DistillationSetupError, match="the teacher agrees with the full teacher on 98.0% .* "
                                                     "below teacher_min_agreement=0.99"):
        require_fidelity({"argmax_agreement": 0.98}, 0.99, "the teacher")


@pytest.mark.parametrize("native", [True, False])
def test_auto_teacher_dtype_runs_and_names_what_it_chose(tmp_path, monkeypatch, native):
    """teacher_dtype='auto': a bf16 teacher on a CPU with bf16 instructions, the fp32 one elsewhere; the
    model card names the choice, and says nothing of a cheaper teacher where there was none."""
    monkeypatch.setattr("hfkd.teacher.loading.native_bf16", lambda device: native)
    trainer = trainer_for(tmp_path, teacher_dtype="auto")
    assert next(trainer.teacher.parameters()).dtype == (torch.bfloat16 if native else torch.float32)
    settings = trainer.distillation_settings()
    if native:
        assert "teacher_dtype=auto (bfloat16)" in settings["teacher_forward"]
    else:
        assert "teacher_forward" not in settings
