"""Each loss against hand-computed values and an independent formula."""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import jensenshannon

from hfkd import losses
from hfkd.losses import ATTENTION_LOSSES, HIDDEN_LOSSES, KD_LOSSES


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_kl_hand_computed_two_classes():
    # teacher logits [0, ln 3] -> p_t = [1/4, 3/4]; student uniform -> p_s = [1/2, 1/2]; T = 1
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, math.log(3.0)]])
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert losses.kl_loss(s, t, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)
    # T = 2 divides the logits and multiplies by T**2 = 4.
    p_t = torch.softmax(t / 2, -1)[0]
    expected_t2 = 4 * float((p_t * (p_t / 0.5).log()).sum())
    assert losses.kl_loss(s, t, temperature=2.0).item() == pytest.approx(expected_t2, abs=1e-6)
    assert losses.kl_loss(s, t, temperature=2.0, scale_by_t2=False).item() == pytest.approx(expected_t2 / 4, abs=1e-6)


def test_kl_matches_torch_kl_div_batchmean():
    s, t, temp = _logits(8, 5), _logits(8, 5, seed=1), 3.0
    reference = F.kl_div(F.log_softmax(s / temp, -1), F.softmax(t / temp, -1), reduction="batchmean") * temp**2
    assert losses.kl_loss(s, t, temperature=temp).item() == pytest.approx(reference.item(), rel=1e-5)
    assert losses.kl_loss(s, t, temp, reduction="sum").item() == pytest.approx(8 * reference.item(), rel=1e-5)


def test_token_level_kl_ignores_masked_positions():
    s, t = _logits(2, 4, 7), _logits(2, 4, 7, seed=1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    kept = F.kl_div(F.log_softmax(s[mask], -1), F.softmax(t[mask], -1), reduction="batchmean")
    assert losses.kl_loss(s, t, 1.0, mask=mask).item() == pytest.approx(kept.item(), rel=1e-5)
    # Garbage at masked positions changes nothing.
    s2 = s.clone()
    s2[~mask] = 1e4
    assert losses.kl_loss(s2, t, 1.0, mask=mask).item() == pytest.approx(kept.item(), rel=1e-5)


def test_empty_mask_gives_zero_not_nan():
    s, t = _logits(1, 3, 4), _logits(1, 3, 4, seed=1)
    value = losses.kl_loss(s, t, 1.0, mask=torch.zeros(1, 3, dtype=torch.bool))
    assert value.item() == 0.0


def test_reverse_kl_is_kl_with_roles_swapped():
    s, t = _logits(6, 4), _logits(6, 4, seed=1)
    assert losses.reverse_kl_loss(s, t, 2.0).item() == pytest.approx(losses.kl_loss(t, s, 2.0).item(), rel=1e-5)


def test_jsd_matches_scipy_and_limits():
    s, t = _logits(5, 6), _logits(5, 6, seed=1)
    p_s, p_t = F.softmax(s, -1).numpy(), F.softmax(t, -1).numpy()
    reference = sum(jensenshannon(p_t[i], p_s[i]) ** 2 for i in range(5)) / 5
    value = losses.jsd_loss(s, t, 1.0, beta=0.5, scale_by_t2=False)
    assert value.item() == pytest.approx(reference, rel=1e-4)
    assert losses.jsd_loss(s, t, 2.0, beta=0.0).item() == pytest.approx(losses.kl_loss(s, t, 2.0).item(), rel=1e-6)
    assert losses.jsd_loss(s, t, 2.0, beta=1.0).item() == pytest.approx(
        losses.reverse_kl_loss(s, t, 2.0).item(), rel=1e-6
    )


def test_soft_ce_is_kl_plus_teacher_entropy():
    s, t = _logits(4, 3), _logits(4, 3, seed=1)
    p_t = F.softmax(t, -1)
    entropy = -(p_t * p_t.log()).sum(-1).mean()
    assert losses.soft_ce_loss(s, t, 1.0).item() == pytest.approx((losses.kl_loss(s, t, 1.0) + entropy).item(), rel=1e-5)


def test_logit_mse_matches_f_mse():
    s, t = _logits(4, 3), _logits(4, 3, seed=1)
    assert losses.logit_mse_loss(s, t, 5.0).item() == pytest.approx(F.mse_loss(s, t).item(), rel=1e-6)


def test_hidden_losses_match_independent_formulas():
    s, t = _logits(2, 5, 8), _logits(2, 5, 8, seed=1)
    assert losses.hidden_mse_loss(s, t).item() == pytest.approx(F.mse_loss(s, t).item(), rel=1e-5)
    cosine = (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    assert losses.hidden_cosine_loss(s, t).item() == pytest.approx(cosine.item(), rel=1e-5)
    pkd = F.mse_loss(s / s.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True))
    assert losses.hidden_pkd_loss(s, t).item() == pytest.approx(pkd.item(), rel=1e-5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert losses.hidden_mse_loss(s, t, mask).item() == pytest.approx(F.mse_loss(s[mask], t[mask]).item(), rel=1e-5)


def _attention(batch=2, heads=2, length=4, seed=0):
    return torch.softmax(_logits(batch, heads, length, length, seed=seed), -1)


def test_attention_losses_match_independent_formulas():
    s, t = _attention(), _attention(seed=1)
    assert losses.attention_mse_loss(s, t).item() == pytest.approx(F.mse_loss(s, t).item(), rel=1e-5)
    kl = F.kl_div(s.log(), t, reduction="sum") / (2 * 2 * 4)
    assert losses.attention_kl_loss(s, t).item() == pytest.approx(kl.item(), rel=1e-5)
    assert losses.attention_kl_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    # Masked query rows do not count.
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    rows = F.kl_div(s.log(), t, reduction="none").sum(-1).permute(0, 2, 1)[mask]
    assert losses.attention_kl_loss(s, t, mask).item() == pytest.approx(rows.mean().item(), rel=1e-5)


def test_attention_head_count_mismatch_compares_head_means():
    s, t = _attention(heads=2), _attention(heads=4, seed=1)
    expected = F.mse_loss(s.mean(1), t.mean(1))
    assert losses.attention_mse_loss(s, t).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", sorted(KD_LOSSES))
def test_kd_losses_backprop_through_inference_mode_teacher(name):
    s = _logits(3, 2, 5).requires_grad_()
    with torch.inference_mode():
        t = _logits(3, 2, 5, seed=1) * 1.0
    KD_LOSSES[name](s, t, temperature=2.0, mask=torch.ones(3, 2, dtype=torch.bool)).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("registry,make", [(HIDDEN_LOSSES, lambda seed: _logits(2, 3, 4, seed=seed)),
                                           (ATTENTION_LOSSES, lambda seed: _attention(seed=seed))])
def test_representation_losses_backprop_through_inference_mode_teacher(registry, make):
    for fn in registry.values():
        s = make(0).requires_grad_()
        with torch.inference_mode():
            t = make(1) * 1.0
        fn(s, t).backward()
        assert s.grad is not None and torch.isfinite(s.grad).all()


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        losses.kl_loss(_logits(2, 3), _logits(2, 4))


def test_task_ce_ignores_minus_100():
    logits, labels = _logits(2, 3, 4), torch.tensor([[1, -100, 2], [-100, -100, 0]])
    expected = F.cross_entropy(logits.reshape(-1, 4), labels.reshape(-1), ignore_index=-100, reduction="sum")
    assert losses.task_ce_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
