"""Distillation losses as small pure functions, selected by name from registries.

Every function takes tensors and returns a scalar. `mask` (bool, one entry per item) selects the
items that count: examples for sequence tasks, positions for token tasks. With `reduction="sum"` a
function returns the sum over items so the caller can normalise by a count that spans several
micro-batches (exact gradient accumulation); `"mean"` averages over the selected items.

Teacher tensors may come from `torch.inference_mode()`: no function saves them for backward as is,
only tensors derived from them (autograd refuses to save inference tensors).

The logit (KD) losses are written per row (one class distribution per item) and run through
`_per_item`, which keeps large vocabularies memory-light: see `CHUNK_ELEMENTS`.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable

import torch
import torch.nn.functional as F

from hfkd.models import DistillationSetupError

Tensor = torch.Tensor

# Logit values (items × classes) a KD loss processes at once. A causal LM's KD term written on whole
# tensors holds several [items, V] float copies at once (selected rows, scaled logits, log-probs,
# products; 7 for KL, 1.7 GiB at 2k tokens × 32k vocabulary) and autograd keeps some until backward.
# Above this budget `_per_item` works through the rows in chunks and keeps only their gradient.
CHUNK_ELEMENTS = 2**22


def _select(values: Tensor, mask: Tensor | None) -> Tensor:
    """Per-position values -> the values of the positions that count, flattened."""
    return values.reshape(-1) if mask is None else values[mask.bool()]


def _saveable(teacher: Tensor) -> Tensor:
    """A teacher tensor autograd may save: inference-mode tensors must be copied first."""
    return teacher.clone() if teacher.is_inference() else teacher


def _reduce(per_item: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return per_item.sum()
    if reduction == "mean":
        # An empty selection contributes nothing rather than NaN.
        return per_item.sum() / max(per_item.numel(), 1)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _t2(temperature: float, scale_by_t2: bool) -> float:
    return temperature**2 if scale_by_t2 else 1.0


def _per_item(
    rows_loss: Callable[..., Tensor], student: Tensor, *teacher: Tensor, mask: Tensor | None
) -> Tensor:
    """`rows_loss(student_rows, *teacher_rows)` -> one value per item, over the items `mask` selects.

    Every tensor is [*items, features] with the same item dims; `rows_loss` treats rows independently.
    Up to `CHUNK_ELEMENTS` logits this is plain autograd; above, `_ChunkedRows` runs the rows chunk by
    chunk and keeps only their gradient, so the extra memory is about one [items, V] float32 copy.
    """
    if mask is None:
        mask = torch.ones(student.shape[:-1], dtype=torch.bool, device=student.device)
    index = mask.bool().nonzero(as_tuple=True)
    step = max(CHUNK_ELEMENTS // max(student.shape[-1], 1), 1)
    if index[0].numel() <= step:
        return rows_loss(student[index], *(t[index] for t in teacher))
    return _ChunkedRows.apply(rows_loss, step, index, student, *teacher)


class _ChunkedRows(torch.autograd.Function):
    """Per-item loss values computed `step` rows at a time, each chunk's gradient taken right away.

    Each item's value depends on its own row only, so d(sum_i g_i f_i)/d row_i = g_i * grad f_i: the
    forward stores grad f_i (from autograd on the chunk), the backward scales it by the incoming g_i.
    Same values and gradients as plain autograd on `rows_loss`; no double backward.
    """

    @staticmethod
    def forward(ctx: Any, rows_loss: Callable[..., Tensor], step: int, index: tuple[Tensor, ...],
                student: Tensor, *teacher: Tensor) -> Tensor:
        items = index[0].numel()
        track = ctx.needs_input_grad[3]
        values = student.new_empty(items, dtype=torch.float32)
        grads = student.new_empty(items, student.shape[-1], dtype=torch.float32) if track else None
        for start in range(0, items, step):
            part = tuple(i[start : start + step] for i in index)
            rows = student[part].detach().requires_grad_(track)
            with torch.enable_grad():
                chunk = rows_loss(rows, *(t[part] for t in teacher))
                if track:
                    (grads[start : start + step],) = torch.autograd.grad(chunk.sum(), rows)
            values[start : start + step] = chunk.detach()
        ctx.step, ctx.index, ctx.shape, ctx.dtype = step, index, student.shape, student.dtype
        ctx.save_for_backward(grads)
        return values

    @staticmethod
    def backward(ctx: Any, grad_values: Tensor) -> tuple[Tensor | None, ...]:
        (grads,) = ctx.saved_tensors
        grad_student = grads.new_zeros(ctx.shape, dtype=ctx.dtype)
        for start in range(0, grads.shape[0], ctx.step):
            part = tuple(i[start : start + ctx.step] for i in ctx.index)
            chunk = grads[start : start + ctx.step] * grad_values[start : start + ctx.step, None]
            grad_student[part] = chunk.to(ctx.dtype)
        return (None, None, None, grad_student) + (None,) * (len(ctx.needs_input_grad) - 4)


def _check_same_logits(student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ in "
            "shape: teacher and student need the same label set / vocabulary."
        )


def _log_probs(student: Tensor, teacher: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities at temperature T, in float32."""
    return F.log_softmax(student.float() / temperature, dim=-1), F.log_softmax(teacher.float() / temperature, dim=-1)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _cross_entropy(log_p_target: Tensor, log_q: Tensor) -> Tensor:
    """H(p, q) = -sum p log q per row, from log-probabilities."""
    return -(log_p_target.exp() * log_q).sum(-1)


def _dense_kd(rows_loss: Callable[..., Tensor], student: Tensor, teacher: Tensor, mask: Tensor | None) -> Tensor:
    _check_same_logits(student, teacher)
    return _per_item(rows_loss, student, teacher, mask=mask)


# ---------------------------------------------------------------- logits (KD) losses


def _distribution_loss(name: str, divergence: Callable[[Tensor, Tensor, float], Tensor], doc: str) -> Callable[..., Tensor]:
    """A KD loss on logits from a per-row `divergence(log_p_student, log_p_teacher, beta)` at temperature T.

    Every distribution loss shares this interface (the registry's): reduction over the items `mask`
    selects, times T**2 unless `scale_by_t2=False`.
    """

    def loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, mask: Tensor | None = None,
             scale_by_t2: bool = True, reduction: str = "mean", beta: float = 0.5, **_: float) -> Tensor:
        def rows(s: Tensor, t: Tensor) -> Tensor:
            log_p_s, log_p_t = _log_probs(s, t, temperature)
            return divergence(log_p_s, log_p_t, beta)

        per_item = _dense_kd(rows, student_logits, teacher_logits, mask)
        return _reduce(per_item, reduction) * _t2(temperature, scale_by_t2)

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = doc
    return loss


def _jsd(log_p_s: Tensor, log_p_t: Tensor, beta: float) -> Tensor:
    if beta == 0.0:
        return _kl(log_p_t, log_p_s)
    if beta == 1.0:
        return _kl(log_p_s, log_p_t)
    log_m = torch.logaddexp(log_p_t + math.log(beta), log_p_s + math.log1p(-beta))
    return beta * _kl(log_p_t, log_m) + (1.0 - beta) * _kl(log_p_s, log_m)


kl_loss = _distribution_loss(
    "kl_loss", lambda s, t, beta: _kl(t, s),
    "Hinton's KD: KL(softmax(t/T) || softmax(s/T)), times T**2 so gradients keep their scale.")
reverse_kl_loss = _distribution_loss(
    "reverse_kl_loss", lambda s, t, beta: _kl(s, t),
    "KL(softmax(s/T) || softmax(t/T)): mode-seeking, as in MiniLLM-style LM distillation.")
jsd_loss = _distribution_loss(
    "jsd_loss", _jsd,
    "Generalized JSD (GKD, Agarwal et al. 2024) with M = beta*p_t + (1-beta)*p_s:\n"
    "beta*KL(p_t||M) + (1-beta)*KL(p_s||M); beta=0 is forward KL(p_t||p_s), beta=1 reverse KL.")
soft_ce_loss = _distribution_loss(
    "soft_ce_loss", lambda s, t, beta: _cross_entropy(t, s),
    "Cross-entropy with the teacher's soft targets: KL plus the (constant) teacher entropy.")


def logit_mse_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: str = "mean",
    **_: float,
) -> Tensor:
    """MSE between raw logits (Ba & Caruana 2014), mean over classes; temperature is not used."""
    def rows(s: Tensor, t: Tensor) -> Tensor:
        return (s.float() - t.float()).pow(2).mean(-1)

    return _reduce(_dense_kd(rows, student_logits, teacher_logits, mask), reduction)


KD_LOSSES: dict[str, Callable[..., Tensor]] = {
    "kl": kl_loss,
    "reverse_kl": reverse_kl_loss,
    "jsd": jsd_loss,
    "mse": logit_mse_loss,
    "ce": soft_ce_loss,
}

# ---------------------------------------------------------------- KD against a top-k teacher
# A top-k teacher (`hfkd.teacher.cache` with `top_k`) is, per item, the log-probabilities at T of its
# k most likely classes plus the log of the mass left over, `teacher_logprobs` [..., k+1], and the
# class ids of those k, `teacher_indices` [..., k]. The student is compared on the same k+1 buckets.


def _topk_buckets(student: Tensor, teacher_logprobs: Tensor, teacher_indices: Tensor,
                  temperature: float) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities of the k+1 buckets (the teacher's top-k classes, the rest).

    The student's rest is a logsumexp over the complement of the top-k (exact, no 1 - sum cancellation);
    an empty complement (k = V) gets a finite floor instead of -inf, and the teacher's log(0) rest is
    floored too, so that bucket contributes exactly 0 with finite gradients.
    """
    z = student.float() / temperature
    floor = torch.finfo(z.dtype).min
    indices = teacher_indices.long()
    log_norm = torch.logsumexp(z, dim=-1, keepdim=True)
    top = z.gather(-1, indices) - log_norm
    rest = torch.logsumexp(z.scatter(-1, indices, floor), dim=-1, keepdim=True) - log_norm
    return torch.cat([top, rest], dim=-1), teacher_logprobs.float().clamp_min(floor)


def _topk_kd(rows_loss: Callable[[Tensor, Tensor], Tensor], student: Tensor, teacher_logprobs: Tensor,
             teacher_indices: Tensor, temperature: float, mask: Tensor | None) -> Tensor:
    k, classes = teacher_indices.shape[-1], student.shape[-1]
    if teacher_logprobs.shape[-1] != k + 1 or teacher_logprobs.shape[:-1] != teacher_indices.shape[:-1]:
        raise ValueError(
            f"top-k teacher log-probs {tuple(teacher_logprobs.shape)} must be [..., k+1] for indices "
            f"{tuple(teacher_indices.shape)} [..., k]: the last entry is the mass outside the top-k."
        )
    if student.shape[:-1] != teacher_indices.shape[:-1] or k > classes:
        raise ValueError(
            f"student logits {tuple(student.shape)} do not fit top-{k} teacher targets "
            f"{tuple(teacher_indices.shape)}: teacher and student need the same vocabulary and positions."
        )

    def rows(s: Tensor, t_logprobs: Tensor, t_indices: Tensor) -> Tensor:
        log_p_s, log_p_t = _topk_buckets(s, t_logprobs, t_indices, temperature)
        return rows_loss(log_p_t, log_p_s)

    return _per_item(rows, student, teacher_logprobs, teacher_indices, mask=mask)


def _topk_loss(name: str, divergence: Callable[[Tensor, Tensor], Tensor], doc: str) -> Callable[..., Tensor]:
    """A KD loss against a top-k teacher from a per-row `divergence(log_p_teacher, log_p_student)` over
    the k+1 buckets, with the registry's interface."""

    def loss(student_logits: Tensor, teacher_logprobs: Tensor, teacher_indices: Tensor, temperature: float = 1.0,
             mask: Tensor | None = None, scale_by_t2: bool = True, reduction: str = "mean", **_: float) -> Tensor:
        per_item = _topk_kd(divergence, student_logits, teacher_logprobs, teacher_indices, temperature, mask)
        return _reduce(per_item, reduction) * _t2(temperature, scale_by_t2)

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = doc
    return loss


topk_kl_loss = _topk_loss(
    "topk_kl_loss", _kl,
    "`kl_loss` against a top-k teacher: the KL of the two distributions over the k+1 buckets.\n\n"
    "With k = V it equals `kl_loss`; with k < V it is a lower bound of it (merging classes cannot\n"
    "increase a KL) that still matches the student's total mass outside the teacher's top-k.")
topk_soft_ce_loss = _topk_loss(
    "topk_soft_ce_loss", _cross_entropy,
    "`soft_ce_loss` against a top-k teacher: the cross-entropy over the k+1 buckets.")


# KD losses that a top-k teacher supports: the others need the teacher's full distribution.
TOPK_KD_LOSSES: dict[str, Callable[..., Tensor]] = {
    "kl": topk_kl_loss,
    "ce": topk_soft_ce_loss,
}


def require_topk_loss(kd_loss: str, fix: str) -> None:
    """A top-k teacher cache keeps k+1 buckets, not the whole distribution: only some KD losses fit it."""
    if kd_loss not in TOPK_KD_LOSSES:
        raise ValueError(
            f"kd_loss={kd_loss!r} needs the teacher's full distribution, which a top-k teacher cache does not "
            f"keep: use kd_loss in {sorted(TOPK_KD_LOSSES)}, or {fix}."
        )


def require_several_classes(kd_loss: str, classes: int) -> None:
    """The softmax of one output (regression, num_labels=1) is always 1: every KD loss but mse is then 0."""
    if classes == 1 and kd_loss != "mse":
        raise DistillationSetupError(
            f"kd_loss={kd_loss!r} compares class distributions, but the student has one output (regression, "
            "num_labels=1), whose softmax is always 1, so KD would be 0: use kd_loss='mse'."
        )

# ---------------------------------------------------------------- hidden-state losses


def _check_same_shape(kind: str, student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student {kind} {tuple(student.shape)} and teacher {kind} {tuple(teacher.shape)} differ "
            "in shape; widths are bridged by projections, lengths must match (same tokenizer)."
        )


def hidden_mse_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """TinyBERT: mean squared error per position (mean over features), averaged over positions."""
    _check_same_shape("hidden states", student, teacher)
    per_position = (student.float() - teacher.float()).pow(2).mean(-1)
    return _reduce(_select(per_position, mask), "mean")


def hidden_cosine_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """DistilBERT: 1 - cosine similarity per position, averaged over positions."""
    _check_same_shape("hidden states", student, teacher)
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    per_position = 1.0 - (s * t).sum(-1)
    return _reduce(_select(per_position, mask), "mean")


def hidden_pkd_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Patient KD: MSE between L2-normalised hidden states, per position, averaged."""
    _check_same_shape("hidden states", student, teacher)
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    per_position = (s - t).pow(2).mean(-1)
    return _reduce(_select(per_position, mask), "mean")


def hidden_pkd_cls_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Patient KD as published (Sun et al. 2019, eq. 3): squared L2 distance between the
    L2-normalised first-position ([CLS]) vectors, summed over features, averaged over examples.

    `mask` is unused: position 0 is never padding.
    """
    _check_same_shape("hidden states", student, teacher)
    s = F.normalize(student[:, 0].float(), dim=-1)
    t = F.normalize(teacher[:, 0].float(), dim=-1)
    return (s - t).pow(2).sum(-1).mean()


HIDDEN_LOSSES: dict[str, Callable[..., Tensor]] = {
    "mse": hidden_mse_loss,
    "cosine": hidden_cosine_loss,
    "pkd": hidden_pkd_loss,
    "pkd_cls": hidden_pkd_cls_loss,
}

# ---------------------------------------------------------------- attention losses
# Attention tensors are post-softmax probabilities [batch, heads, query, key]; `mask` is the
# attention mask [batch, key=query] and selects the query rows that count. Padded keys carry ~0
# probability in both models, so they need no mask of their own.


def _align_heads(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Compare head by head when head counts match, else the head-averaged maps."""
    if student.shape[1] != teacher.shape[1]:
        return student.float().mean(1, keepdim=True), teacher.float().mean(1, keepdim=True)
    return student.float(), teacher.float()


def _query_rows(per_row: Tensor, mask: Tensor | None) -> Tensor:
    """per_row: [batch, heads, query] -> values of the valid query rows."""
    if mask is None:
        return per_row.reshape(-1)
    return per_row.permute(0, 2, 1)[mask.bool()].reshape(-1)


def attention_mse_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """TinyBERT-style MSE between attention probabilities, mean over keys, heads and valid queries."""
    s, t = _align_heads(student, teacher)
    _check_same_shape("attention maps", s, t)
    return _reduce(_query_rows((s - t).pow(2).mean(-1), mask), "mean")


def attention_kl_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """MiniLM-style KL(teacher row || student row), summed over keys, mean over heads and queries."""
    s, t = _align_heads(student, teacher)
    _check_same_shape("attention maps", s, t)
    t = _saveable(t)
    eps = torch.finfo(s.dtype).tiny
    per_row = (torch.xlogy(t, t) - t * torch.log(s.clamp_min(eps))).sum(-1)
    return _reduce(_query_rows(per_row, mask), "mean")


ATTENTION_LOSSES: dict[str, Callable[..., Tensor]] = {
    "mse": attention_mse_loss,
    "kl": attention_kl_loss,
}

# ---------------------------------------------------------------- self-attention relations (MiniLM)


def relation_log_probs(
    left: Tensor, right: Tensor, num_heads: int, mask: Tensor | None = None, causal: bool = False
) -> Tensor:
    """Log of the relation softmax(A_h B_h^T / sqrt(d_r)) of every relation head h.

    `left`/`right` are [batch, seq, width] projections (e.g. Q and K) of one model, split into
    `num_heads` relation heads of width d_r = width / num_heads. Keys on padding (`mask` 0) and,
    with `causal`, keys after the query are left out of each row's softmax.
    Returns [batch, heads, query, key].
    """
    batch, seq, width = left.shape
    if right.shape[:2] != left.shape[:2] or width % num_heads or right.shape[-1] != width:
        raise ValueError(
            f"cannot relate {tuple(left.shape)} to {tuple(right.shape)} with {num_heads} relation heads: "
            "both need the same width, divisible by relation_heads (with grouped-query attention, "
            "Q and K/V differ in width: relate qq, kk, vv rather than qk)."
        )
    head_dim = width // num_heads
    a = left.float().reshape(batch, seq, num_heads, head_dim).transpose(1, 2)
    b = right.float().reshape(batch, seq, num_heads, head_dim).transpose(1, 2)
    scores = a @ b.transpose(-1, -2) / head_dim**0.5
    allowed = torch.ones(batch, 1, seq, seq, dtype=torch.bool, device=scores.device)
    if mask is not None:
        allowed = allowed & mask.bool()[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(seq, seq, dtype=torch.bool, device=scores.device).tril()
    # A fully masked row (a padded query) stays finite; it is dropped from the mean anyway.
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def relation_kl_loss(
    student: tuple[Tensor, Tensor],
    teacher: tuple[Tensor, Tensor],
    num_relation_heads: int,
    mask: Tensor | None = None,
    causal: bool = False,
) -> Tensor:
    """MiniLM/MiniLMv2 relation transfer: KL(teacher relation row || student relation row).

    `student` and `teacher` are the (left, right) projections of each model, e.g. (Q, Q) for the
    Q-Q relation or (Q, K) for MiniLM's attention distribution. Both models use the same number of
    relation heads, so their widths may differ (MiniLMv2). The KL is summed over keys and averaged
    over relation heads and valid query rows (`mask`: [batch, seq] attention mask).
    """
    log_s = relation_log_probs(*student, num_relation_heads, mask, causal)
    with torch.no_grad():  # teacher tensors may come from inference mode: nothing of theirs is saved
        log_t = relation_log_probs(*teacher, num_relation_heads, mask, causal)
    if log_s.shape != log_t.shape:
        raise ValueError(
            f"student relations {tuple(log_s.shape)} and teacher relations {tuple(log_t.shape)} differ; "
            "inputs must be the same sequences."
        )
    # Padded keys carry probability 0 in both rows: xlogy keeps their terms at exactly 0.
    p_t = log_t.exp()
    per_row = (torch.xlogy(p_t, p_t) - p_t * log_s).sum(-1)
    return _reduce(_query_rows(per_row, mask), "mean")


# ---------------------------------------------------------------- task loss


def task_ce_loss(logits: Tensor, labels: Tensor, reduction: str = "sum") -> Tensor:
    """Hard-label cross-entropy (MSE for a single regression output), labels -100 ignored."""
    if logits.shape[-1] == 1 and labels.is_floating_point():
        return _reduce((logits.squeeze(-1).float() - labels.float()).pow(2).reshape(-1), reduction)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=-100,
        reduction=reduction,
    )
