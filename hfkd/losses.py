"""Distillation losses as small pure functions, selected by name from registries.

Every function takes tensors and returns a scalar. `mask` (bool, one entry per item) selects the
items that count: examples for sequence tasks, positions for token tasks. With `reduction="sum"` a
function returns the sum over items so the caller can normalise by a count that spans several
micro-batches (exact gradient accumulation); `"mean"` averages over the selected items.

Teacher tensors may come from `torch.inference_mode()`: no function saves them for backward as is,
only tensors derived from them (autograd refuses to save inference tensors).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


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


def _item_logits(student: Tensor, teacher: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ in "
            "shape: teacher and student need the same label set / vocabulary."
        )
    classes = student.shape[-1]
    if mask is not None:
        return student[mask.bool()], teacher[mask.bool()]
    return student.reshape(-1, classes), teacher.reshape(-1, classes)


# ---------------------------------------------------------------- logits (KD) losses


def kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    scale_by_t2: bool = True,
    reduction: str = "mean",
    **_: float,
) -> Tensor:
    """Hinton's KD: KL(softmax(t/T) || softmax(s/T)), times T**2 so gradients keep their scale."""
    s, t = _item_logits(student_logits, teacher_logits, mask)
    log_p_s = F.log_softmax(s.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(t.float() / temperature, dim=-1)
    per_item = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return _reduce(per_item, reduction) * (temperature**2 if scale_by_t2 else 1.0)


def reverse_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    scale_by_t2: bool = True,
    reduction: str = "mean",
    **_: float,
) -> Tensor:
    """KL(softmax(s/T) || softmax(t/T)): mode-seeking, as in MiniLLM-style LM distillation."""
    s, t = _item_logits(student_logits, teacher_logits, mask)
    log_p_s = F.log_softmax(s.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(t.float() / temperature, dim=-1)
    per_item = (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1)
    return _reduce(per_item, reduction) * (temperature**2 if scale_by_t2 else 1.0)


def jsd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    scale_by_t2: bool = True,
    reduction: str = "mean",
    beta: float = 0.5,
    **_: float,
) -> Tensor:
    """Generalized JSD (GKD, Agarwal et al. 2024) with M = beta*p_t + (1-beta)*p_s.

    beta*KL(p_t||M) + (1-beta)*KL(p_s||M); beta=0 is forward KL(p_t||p_s), beta=1 reverse KL.
    """
    if beta == 0.0:
        return kl_loss(student_logits, teacher_logits, temperature, mask, scale_by_t2, reduction)
    if beta == 1.0:
        return reverse_kl_loss(
            student_logits, teacher_logits, temperature, mask, scale_by_t2, reduction
        )
    s, t = _item_logits(student_logits, teacher_logits, mask)
    log_p_s = F.log_softmax(s.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(t.float() / temperature, dim=-1)
    log_m = torch.logsumexp(
        torch.stack([log_p_t + torch.log(torch.tensor(beta)), log_p_s + torch.log1p(torch.tensor(-beta))]),
        dim=0,
    )
    kl_t = (log_p_t.exp() * (log_p_t - log_m)).sum(-1)
    kl_s = (log_p_s.exp() * (log_p_s - log_m)).sum(-1)
    per_item = beta * kl_t + (1.0 - beta) * kl_s
    return _reduce(per_item, reduction) * (temperature**2 if scale_by_t2 else 1.0)


def soft_ce_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    scale_by_t2: bool = True,
    reduction: str = "mean",
    **_: float,
) -> Tensor:
    """Cross-entropy with the teacher's soft targets: KL plus the (constant) teacher entropy."""
    s, t = _item_logits(student_logits, teacher_logits, mask)
    log_p_s = F.log_softmax(s.float() / temperature, dim=-1)
    p_t = F.softmax(t.float() / temperature, dim=-1)
    per_item = -(p_t * log_p_s).sum(-1)
    return _reduce(per_item, reduction) * (temperature**2 if scale_by_t2 else 1.0)


def logit_mse_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: str = "mean",
    **_: float,
) -> Tensor:
    """MSE between raw logits (Ba & Caruana 2014), mean over classes; temperature is not used."""
    s, t = _item_logits(student_logits, teacher_logits, mask)
    per_item = (s.float() - t.float()).pow(2).mean(-1)
    return _reduce(per_item, reduction)


KD_LOSSES: dict[str, Callable[..., Tensor]] = {
    "kl": kl_loss,
    "reverse_kl": reverse_kl_loss,
    "jsd": jsd_loss,
    "mse": logit_mse_loss,
    "ce": soft_ce_loss,
}

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
