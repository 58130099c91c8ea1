"""Each loss against hand-computed values and an independent formula."""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import jensenshannon

from hfkd.objective import losses
from hfkd.objective.losses import ATTENTION_LOSSES, HIDDEN_LOSSES, KD_LOSSES


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


# ---------------------------------------------------------------- chunked rows (large vocabularies)


@pytest.mark.parametrize("name", sorted(KD_LOSSES))
def test_chunked_kd_equals_plain_autograd(name, monkeypatch):
    """Above CHUNK_ELEMENTS the rows run in chunks with their gradients kept: same values, same grads."""
    base = _logits(3, 6, 11)
    s_view = lambda leaf: leaf[:, :-1]  # noqa: E731 - a non-contiguous causal-LM-style view
    t = _logits(3, 6, 11, seed=1)[:, :-1]
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(2)) > 0.3
    results = []
    for budget in (10**9, 2 * 11):  # one piece; two rows per chunk
        monkeypatch.setattr(losses, "CHUNK_ELEMENTS", budget)
        leaf = base.clone().requires_grad_()
        value = KD_LOSSES[name](s_view(leaf), t, temperature=2.0, mask=mask, reduction="sum", beta=0.3)
        (value * 1.7).backward()
        results.append((value.detach(), leaf.grad))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-6, rtol=1e-6)
    assert results[1][1][:, -1].abs().sum() == 0  # the shifted-off position gets no gradient


def test_chunked_kd_without_grad_and_with_inference_teacher(monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 5)
    s = _logits(4, 3, 5)
    with torch.inference_mode():
        t = _logits(4, 3, 5, seed=1) * 1.0
    with torch.no_grad():
        expected = F.kl_div(F.log_softmax(s, -1), F.softmax(t.clone(), -1), reduction="sum").item()
        assert losses.kl_loss(s, t, 1.0, reduction="sum").item() == pytest.approx(expected, rel=1e-5)
    leaf = s.clone().requires_grad_()
    losses.kl_loss(leaf, t, 1.0).backward()
    assert torch.isfinite(leaf.grad).all()


# ---------------------------------------------------------------- top-k teacher targets


def _topk_target(teacher_logits, k, temperature):
    """What a top-k teacher cache stores: top-k log-probs at T plus the log of the rest, and their ids."""
    log_p = F.log_softmax(teacher_logits / temperature, -1)
    values, indices = log_p.topk(k, dim=-1)
    rest = torch.log1p(-values.exp().sum(-1, keepdim=True).clamp(max=1.0)) if k < log_p.shape[-1] else \
        torch.full_like(values[..., :1], -math.inf)
    return torch.cat([values, rest], -1), indices.int()


@pytest.mark.parametrize("dense,topk", [(losses.kl_loss, losses.topk_kl_loss),
                                        (losses.soft_ce_loss, losses.topk_soft_ce_loss)])
def test_topk_with_k_equal_vocab_is_the_dense_loss(dense, topk):
    s, t, temp = _logits(2, 5, 9), _logits(2, 5, 9, seed=1), 2.0
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    logprobs, indices = _topk_target(t, 9, temp)
    grads = []
    for fn, target in ((dense, (t,)), (topk, (logprobs, indices))):
        leaf = s.clone().requires_grad_()
        value = fn(leaf, *target, temperature=temp, mask=mask, reduction="sum")
        value.backward()
        grads.append((value.detach(), leaf.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-6, rtol=1e-6)


def test_topk_kl_equals_the_bucketed_kl_by_hand():
    s, t, temp, k = _logits(6, 20), _logits(6, 20, seed=1) * 3, 1.5, 4
    logprobs, indices = _topk_target(t, k, temp)
    p_t, p_s = F.softmax(t.double() / temp, -1), F.softmax(s.double() / temp, -1)
    expected_kl, expected_ce = 0.0, 0.0
    for row in range(6):
        top = indices[row].long()
        buckets_t = torch.cat([p_t[row, top], 1 - p_t[row, top].sum().reshape(1)])
        buckets_s = torch.cat([p_s[row, top], 1 - p_s[row, top].sum().reshape(1)])
        expected_kl += float((buckets_t * (buckets_t / buckets_s).log()).sum())
        expected_ce += float(-(buckets_t * buckets_s.log()).sum())
    value = losses.topk_kl_loss(s, logprobs, indices, temperature=temp, reduction="sum", scale_by_t2=False)
    assert value.item() == pytest.approx(expected_kl, rel=1e-4)
    assert losses.topk_kl_loss(s, logprobs, indices, temp).item() == pytest.approx(expected_kl / 6 * temp**2, rel=1e-4)
    assert losses.topk_soft_ce_loss(s, logprobs, indices, temp, reduction="sum", scale_by_t2=False).item() == \
        pytest.approx(expected_ce, rel=1e-4)
    # Merging classes cannot increase a KL: the top-k KL is a lower bound of the full one.
    assert value.item() <= losses.kl_loss(s, t, temp, reduction="sum", scale_by_t2=False).item()


def test_topk_rest_bucket_is_stable_for_peaked_students(monkeypatch):
    """A student with ~all mass in the top-k: its rest is tiny but exact (no 1 - sum cancellation)."""
    s = torch.tensor([[30.0, 0.0, 0.0, 0.0]])
    logprobs, indices = _topk_target(torch.tensor([[5.0, 1.0, 0.0, 0.0]]), 1, 1.0)
    p_rest_s = 3 / (math.exp(30) + 3)  # 1 - p_top would round to 0 in float32
    p_t = torch.softmax(torch.tensor([5.0, 1.0, 0.0, 0.0], dtype=torch.float64), -1)
    q_t = 1 - float(p_t[0])
    expected = float(p_t[0]) * math.log(float(p_t[0]) / (1 - p_rest_s)) + q_t * math.log(q_t / p_rest_s)
    assert losses.topk_kl_loss(s, logprobs, indices, 1.0).item() == pytest.approx(expected, rel=1e-4)
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 1)  # the chunked path agrees
    assert losses.topk_kl_loss(s, logprobs, indices, 1.0).item() == pytest.approx(expected, rel=1e-4)


def test_topk_backprop_through_inference_teacher_is_finite_with_k_equal_vocab():
    s = _logits(3, 2, 5).requires_grad_()
    with torch.inference_mode():
        logprobs, indices = _topk_target(_logits(3, 2, 5, seed=1), 5, 2.0)
    losses.topk_kl_loss(s, logprobs, indices, 2.0, mask=torch.ones(3, 2, dtype=torch.bool)).backward()
    assert torch.isfinite(s.grad).all()


def test_topk_shape_errors_name_the_problem():
    logprobs, indices = _topk_target(_logits(2, 5), 3, 1.0)
    with pytest.raises(ValueError, match=r"must be \[\.\.\., k\+1\]"):
        losses.topk_kl_loss(_logits(2, 5), logprobs[:, :-1], indices)
    with pytest.raises(ValueError, match="same vocabulary"):
        losses.topk_kl_loss(_logits(2, 2), logprobs, indices)
