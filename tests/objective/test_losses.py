"""Each loss against hand-computed values and an independent formula."""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import jensenshannon

from hfkd.objective import losses
from hfkd.objective.losses import ATTENTION_LOSSES, HIDDEN_LOSSES, KD_LOSSES
from tolerance import assert_within, float32_bound, kl_magnitudes

# References are float64 and compared within the error of hfkd's float32 arithmetic (tests/tolerance.py).


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _log_softmax64(logits, temperature=1.0):
    """Exact log-probabilities at T and the normaliser logsumexp(z / T) a float32 log-softmax rounds with."""
    z = logits.double() / temperature
    return z.log_softmax(-1), z.logsumexp(-1)


def _kl64(s, t, temperature=1.0):
    """Exact per-item KL(p_t || p_s) at T, and the magnitudes its float32 computation sums (per item)."""
    (log_s, norm_s), (log_t, norm_t) = _log_softmax64(s, temperature), _log_softmax64(t, temperature)
    return (log_t.exp() * (log_t - log_s)).sum(-1), kl_magnitudes(log_t, log_s, norm_t, norm_s)


def _kd_sizes(s, t, temperature):
    """Per item, a size bound for every KD loss in KD_LOSSES (kl, reverse_kl, jsd, ce: p|log p| + p|log q|
    both ways plus the normalisers, times T^2; |log m| of a mixture lies between; mse: the mean square)."""
    (log_s, norm_s), (log_t, norm_t) = _log_softmax64(s, temperature), _log_softmax64(t, temperature)
    kl_sizes = kl_magnitudes(log_t, log_s, norm_t, norm_s) + kl_magnitudes(log_s, log_t)
    return kl_sizes * temperature**2 + (s.double() - t.double()).pow(2).mean(-1)


def _kd_grad_sizes(s, t, temperature):
    """Per logit, a size bound for the float32 gradient of those losses: T (p + q) times the log-probabilities
    and normalisers the softmax backward multiplies them with, plus mse's 2 |s - t| / classes."""
    (log_s, norm_s), (log_t, norm_t) = _log_softmax64(s, temperature), _log_softmax64(t, temperature)
    logs = 1 + log_s.abs() + log_t.abs() + (norm_s.abs() + norm_t.abs()).unsqueeze(-1)
    return temperature * (log_s.exp() + log_t.exp()) * logs + 2 * (s.double() - t.double()).abs() / s.shape[-1]


def _squares_bound(values, n):
    """A mean of n float32 squared differences: positive terms, so a few ulps of the result itself."""
    return float32_bound(values, n=n)


def test_kl_hand_computed_two_classes():
    # teacher logits [0, ln 3] -> p_t = [1/4, 3/4]; student uniform -> p_s = [1/2, 1/2]; T = 1
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, math.log(3.0)]])
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    bound = float32_bound(_kl64(s, t)[1], n=2)
    assert losses.kl_loss(s, t, temperature=1.0).item() == pytest.approx(expected, abs=bound)
    # T = 2 divides the logits and multiplies by T**2 = 4.
    p_t = torch.softmax(t.double() / 2, -1)[0]
    expected_t2 = 4 * float((p_t * (p_t / 0.5).log()).sum())
    bound = float32_bound(_kl64(s, t, 2.0)[1], n=2)
    assert losses.kl_loss(s, t, temperature=2.0).item() == pytest.approx(expected_t2, abs=4 * bound)
    assert losses.kl_loss(s, t, temperature=2.0, scale_by_t2=False).item() == pytest.approx(expected_t2 / 4, abs=bound)


def test_kl_matches_torch_kl_div_batchmean():
    s, t, temp = _logits(8, 5).double(), _logits(8, 5, seed=1).double(), 3.0
    reference = F.kl_div(F.log_softmax(s / temp, -1), F.softmax(t / temp, -1), reduction="batchmean") * temp**2
    bound = float32_bound(_kl64(s, t, temp)[1] * temp**2, n=5)  # of the sum over the 8 items
    assert losses.kl_loss(s.float(), t.float(), temperature=temp).item() == pytest.approx(reference.item(), abs=bound / 8)
    assert losses.kl_loss(s.float(), t.float(), temp, reduction="sum").item() == pytest.approx(8 * reference.item(),
                                                                                              abs=bound)


def test_token_level_kl_ignores_masked_positions():
    s, t = _logits(2, 4, 7), _logits(2, 4, 7, seed=1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    kept = F.kl_div(F.log_softmax(s[mask].double(), -1), F.softmax(t[mask].double(), -1), reduction="batchmean")
    bound = float32_bound(_kl64(s[mask], t[mask])[1] / int(mask.sum()), n=7)
    assert losses.kl_loss(s, t, 1.0, mask=mask).item() == pytest.approx(kept.item(), abs=bound)
    # Garbage at masked positions changes nothing.
    s2 = s.clone()
    s2[~mask] = 1e4
    assert losses.kl_loss(s2, t, 1.0, mask=mask).item() == pytest.approx(kept.item(), abs=bound)


def test_empty_mask_gives_zero_not_nan():
    s, t = _logits(1, 3, 4), _logits(1, 3, 4, seed=1)
    value = losses.kl_loss(s, t, 1.0, mask=torch.zeros(1, 3, dtype=torch.bool))
    assert value.item() == 0.0


def test_reverse_kl_is_kl_with_roles_swapped():
    s, t = _logits(6, 4), _logits(6, 4, seed=1)
    # Exact by construction: the same float32 operations on the same values.
    assert losses.reverse_kl_loss(s, t, 2.0).item() == pytest.approx(losses.kl_loss(t, s, 2.0).item(), rel=1e-5)


def test_jsd_matches_scipy_and_limits():
    s, t = _logits(5, 6), _logits(5, 6, seed=1)
    (log_s, norm_s), (log_t, norm_t) = _log_softmax64(s), _log_softmax64(t)
    reference = sum(jensenshannon(log_t[i].exp().numpy(), log_s[i].exp().numpy()) ** 2 for i in range(5)) / 5
    # 0.5 KL(p_t || m) + 0.5 KL(p_s || m), each log-prob rounded with its normaliser.
    log_m = torch.logaddexp(log_t, log_s) - math.log(2)
    sizes = 0.5 * (kl_magnitudes(log_t, log_m, norm_t) + kl_magnitudes(log_s, log_m, norm_s)) + norm_t.abs() + norm_s.abs()
    value = losses.jsd_loss(s, t, 1.0, beta=0.5, scale_by_t2=False)
    assert value.item() == pytest.approx(reference, abs=float32_bound(sizes / 5, n=6))
    # beta 0 and 1 call kl_loss and reverse_kl_loss: exact by construction.
    assert losses.jsd_loss(s, t, 2.0, beta=0.0).item() == pytest.approx(losses.kl_loss(s, t, 2.0).item(), rel=1e-6)
    assert losses.jsd_loss(s, t, 2.0, beta=1.0).item() == pytest.approx(
        losses.reverse_kl_loss(s, t, 2.0).item(), rel=1e-6
    )


def test_jsd_tends_to_forward_and_reverse_kl_near_its_ends():
    """Near beta = 0, GKD's JSD(beta)/beta = KL(p_t||p_s) - beta chi2/2 + beta^2 S3/6 + O(beta^3), with x = p_t/p_s - 1,
    chi2 = sum p_s x^2, S3 = sum p_s x^3 (Taylor expansion of both KLs to the mixture); mirrored near 1 with
    reverse KL. So the ends computed exactly (beta 0/1 -> kl/reverse_kl) are the continuous limits."""
    s, t = _logits(5, 6), _logits(5, 6, seed=1)
    sizes = _kd_sizes(s, t, 1.0).sum() / 5
    for log_a, log_b, beta, limit in (
        (*(_log_softmax64(x)[0] for x in (t, s)), 0.05, losses.kl_loss),
        (*(_log_softmax64(x)[0] for x in (s, t)), 0.95, losses.reverse_kl_loss),
    ):
        near = min(beta, 1 - beta)
        x = (log_a - log_b).exp() - 1
        chi2 = (log_b.exp() * x**2).sum(-1).mean().item()
        third = (log_b.exp() * x.abs() ** 3).sum(-1).mean().item()
        value = losses.jsd_loss(s, t, 1.0, beta=beta, scale_by_t2=False).item() / near
        expected = limit(s, t, 1.0, scale_by_t2=False).item() - near * chi2 / 2
        # The beta^2 term, twice over for the rest of the series, and float32 rounding divided by `near`.
        assert value == pytest.approx(expected, abs=2 * near**2 * third / 6 + 2 * float32_bound(sizes, n=6) / near)
        assert abs(value - limit(s, t, 1.0, scale_by_t2=False).item()) > near * chi2 / 4  # the beta term is seen


def test_soft_ce_is_kl_plus_teacher_entropy():
    s, t = _logits(4, 3), _logits(4, 3, seed=1)
    kl, sizes = _kl64(s, t)
    log_t = _log_softmax64(t)[0]
    entropy = -(log_t.exp() * log_t).sum(-1)
    assert losses.soft_ce_loss(s, t, 1.0).item() == pytest.approx(float((kl + entropy).mean()),
                                                                  abs=float32_bound(sizes / 4, n=3))


def test_logit_mse_matches_f_mse():
    s, t = _logits(4, 3), _logits(4, 3, seed=1)
    expected = F.mse_loss(s.double(), t.double()).item()
    assert losses.logit_mse_loss(s, t, 5.0).item() == pytest.approx(expected, abs=_squares_bound(expected, n=12))


def test_hidden_losses_match_independent_formulas():
    s, t = _logits(2, 5, 8), _logits(2, 5, 8, seed=1)
    s64, t64 = s.double(), t.double()
    mse = F.mse_loss(s64, t64).item()
    assert losses.hidden_mse_loss(s, t).item() == pytest.approx(mse, abs=_squares_bound(mse, n=80))
    # Unit vectors: each product (or squared difference) of entries is at most (|s_i| + |t_i|)^2, 4 per
    # vector in all; normalising first costs as many roundings again (ulps=2).
    unit_s, unit_t = F.normalize(s64, dim=-1), F.normalize(t64, dim=-1)
    per_vector = ((unit_s.abs() + unit_t.abs()) ** 2).sum(-1)  # [2, 5]
    cosine = (1 - F.cosine_similarity(s64, t64, dim=-1)).mean()
    bound = float32_bound((1 + per_vector) / 10, n=8, ulps=2)  # 1 - sum s_i t_i, mean over 10 positions
    assert losses.hidden_cosine_loss(s, t).item() == pytest.approx(cosine.item(), abs=bound)
    pkd = F.mse_loss(unit_s, unit_t)
    bound = float32_bound(per_vector / 80, n=8, ulps=2)  # mean over 10 positions x 8 features
    assert losses.hidden_pkd_loss(s, t).item() == pytest.approx(pkd.item(), abs=bound)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    masked = F.mse_loss(s64[mask], t64[mask]).item()
    assert losses.hidden_mse_loss(s, t, mask).item() == pytest.approx(masked, abs=_squares_bound(masked, n=40))


def _attention(batch=2, heads=2, length=4, seed=0):
    return torch.softmax(_logits(batch, heads, length, length, seed=seed), -1)


def test_attention_losses_match_independent_formulas():
    s, t = _attention(), _attention(seed=1)  # float32 probabilities, as models give them
    s64, t64 = s.double(), t.double()
    mse = F.mse_loss(s64, t64).item()
    assert losses.attention_mse_loss(s, t).item() == pytest.approx(mse, abs=_squares_bound(mse, n=64))
    # Rows of given probabilities: sum t (log t - log s), logs taken in float32 (no normaliser).
    sizes = kl_magnitudes(t64.log(), s64.log())  # [batch, heads, query]
    kl = F.kl_div(s64.log(), t64, reduction="sum") / (2 * 2 * 4)
    assert losses.attention_kl_loss(s, t).item() == pytest.approx(kl.item(), abs=float32_bound(sizes / 16, n=4))
    assert losses.attention_kl_loss(t, t).item() == pytest.approx(0.0, abs=float32_bound(kl_magnitudes(
        t64.log(), t64.log()) / 16, n=4))
    # Masked query rows do not count.
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    rows = F.kl_div(s64.log(), t64, reduction="none").sum(-1).permute(0, 2, 1)[mask]
    bound = float32_bound(sizes.permute(0, 2, 1)[mask] / rows.numel(), n=4)
    assert losses.attention_kl_loss(s, t, mask).item() == pytest.approx(rows.mean().item(), abs=bound)


def test_attention_head_count_mismatch_compares_head_means():
    s, t = _attention(heads=2), _attention(heads=4, seed=1)
    s64, t64 = s.double(), t.double()
    expected = F.mse_loss(s64.mean(1), t64.mean(1)).item()
    # The head means are sums of positive probabilities: a few ulps of the squared terms (<= 1 each) they form.
    sizes = ((s64.mean(1) + t64.mean(1)) ** 2).mean()
    assert losses.attention_mse_loss(s, t).item() == pytest.approx(expected, abs=float32_bound(sizes, n=32, ulps=2))


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
    # Exact by construction: the same float32 call on the same values.
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
    # Both are float32 computations of the same value: each within the float32 bound of the exact one.
    sizes = _kd_sizes(base[:, :-1][mask], t[mask], 2.0)
    assert_within(results[1][0], results[0][0], 2 * float32_bound(sizes, n=11), "value")
    grad_sizes = torch.zeros(3, 6, 11, dtype=torch.float64)
    grad_sizes[:, :-1][mask] = 1.7 * _kd_grad_sizes(base[:, :-1][mask], t[mask], 2.0)
    assert_within(results[1][1], results[0][1], 2 * float32_bound(grad_sizes, n=11, dim=-1).unsqueeze(-1), "grad")
    assert results[1][1][:, -1].abs().sum() == 0  # the shifted-off position gets no gradient


def test_chunked_kd_without_grad_and_with_inference_teacher(monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 5)
    s = _logits(4, 3, 5)
    with torch.inference_mode():
        t = _logits(4, 3, 5, seed=1) * 1.0
    with torch.no_grad():
        kl, sizes = _kl64(s.reshape(-1, 5), t.reshape(-1, 5))
        assert losses.kl_loss(s, t, 1.0, reduction="sum").item() == pytest.approx(float(kl.sum()),
                                                                                  abs=float32_bound(sizes, n=5))
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
    # Two float32 computations of the same loss and gradient (T^2 KL or CE: T (q - p) per logit).
    bound = 2 * temp**2 * float32_bound(_kl64(s[mask], t[mask], temp)[1], n=9)
    assert_within(grads[1][0], grads[0][0], bound, "value")
    grad_sizes = torch.zeros(2, 5, 9, dtype=torch.float64)
    grad_sizes[mask] = _kd_grad_sizes(s[mask], t[mask], temp)
    assert_within(grads[1][1], grads[0][1], 2 * float32_bound(grad_sizes, n=9, dim=-1).unsqueeze(-1), "grad")


def test_topk_kl_equals_the_bucketed_kl_by_hand():
    s, t, temp, k = _logits(6, 20), _logits(6, 20, seed=1) * 3, 1.5, 4
    logprobs, indices = _topk_target(t, k, temp)
    log_s, norm_s = _log_softmax64(s, temp)
    expected_kl, expected_ce, sizes = 0.0, 0.0, 0.0
    for row in range(6):
        top = indices[row].long()
        log_buckets_t = logprobs[row].double()  # the targets as stored (float32), read as they are
        log_buckets_s = torch.cat([log_s[row, top], log_s[row].scatter(0, top, -math.inf).logsumexp(0).reshape(1)])
        buckets_t = log_buckets_t.exp()
        expected_kl += float((buckets_t * (log_buckets_t - log_buckets_s)).sum())
        expected_ce += float(-(buckets_t * log_buckets_s).sum())
        sizes += float(kl_magnitudes(log_buckets_t, log_buckets_s, norm_s[row]))
    bound = float32_bound(sizes, n=20)  # the student's log-probs come from a logsumexp over 20 classes
    value = losses.topk_kl_loss(s, logprobs, indices, temperature=temp, reduction="sum", scale_by_t2=False)
    assert value.item() == pytest.approx(expected_kl, abs=bound)
    assert losses.topk_kl_loss(s, logprobs, indices, temp).item() == pytest.approx(expected_kl / 6 * temp**2,
                                                                                   abs=bound / 6 * temp**2)
    assert losses.topk_soft_ce_loss(s, logprobs, indices, temp, reduction="sum", scale_by_t2=False).item() == \
        pytest.approx(expected_ce, abs=bound)
    # Merging classes cannot increase a KL: the top-k KL is a lower bound of the full one.
    assert value.item() <= losses.kl_loss(s, t, temp, reduction="sum", scale_by_t2=False).item()


def test_topk_rest_bucket_is_stable_for_peaked_students(monkeypatch):
    """A student with ~all mass in the top-k: its rest is tiny but exact (no 1 - sum cancellation)."""
    s = torch.tensor([[30.0, 0.0, 0.0, 0.0]])
    logprobs, indices = _topk_target(torch.tensor([[5.0, 1.0, 0.0, 0.0]]), 1, 1.0)
    p_rest_s = 3 / (math.exp(30) + 3)  # 1 - p_top would round to 0 in float32
    log_buckets_t = logprobs[0].double()  # the targets as stored (float32)
    log_buckets_s = torch.tensor([math.log1p(-p_rest_s), math.log(p_rest_s)], dtype=torch.float64)
    expected = float((log_buckets_t.exp() * (log_buckets_t - log_buckets_s)).sum())
    # log q of the top bucket is 30 - logsumexp = -3e-13, rounded from numbers of size 30: a few ulps of 30.
    bound = float32_bound(kl_magnitudes(log_buckets_t, log_buckets_s, s.double().logsumexp(-1)), n=4)
    assert losses.topk_kl_loss(s, logprobs, indices, 1.0).item() == pytest.approx(expected, abs=bound)
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 1)  # the chunked path agrees
    assert losses.topk_kl_loss(s, logprobs, indices, 1.0).item() == pytest.approx(expected, abs=bound)


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
