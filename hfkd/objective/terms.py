"""The objective's named terms, in one registry.

A term is a name, the model outputs it needs, how it is normalised and a function of a
`TermContext` that returns its value. Everything that depends on "which terms exist" derives from
`TERMS`: the config's weight keys (`alpha_<name>`), stages, schedules, the teacher-output requests,
logging (`<name>_loss`) and the model card. The five built-in terms are entries like any other, and
`register_term` adds one from user code:

    def margin(ctx):  # a sum over the items ctx.mask selects
        top2 = ctx.student_logits.topk(2, dim=-1).values
        return torch.relu(1.0 - (top2[..., 0] - top2[..., 1]))[ctx.item_mask()].sum()

    hfkd.register_term("margin", margin, needs={"labels"}, normalise="per_item")
    args = hfkd.DistillationConfig(..., term_weights={"margin": 0.5})

Normalisation makes gradient accumulation and DDP exact: a `per_item` term returns a *sum* over
items and is divided by the item count of the whole accumulated batch (Trainer's
`num_items_in_batch`); a `per_step` term returns a micro-batch mean and is divided by the number of
accumulation steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from hfkd.objective.losses import ATTENTION_LOSSES, HIDDEN_LOSSES, KD_LOSSES, TOPK_KD_LOSSES, task_ce_loss

Tensor = torch.Tensor

# What a term may ask for. Representation needs apply to both models.
NEEDS = frozenset({"labels", "teacher_logits", "hidden_states", "attentions", "qkv"})
NORMALISATIONS = ("per_item", "per_step")


@dataclass
class TermContext:
    """What a term sees for one micro-batch.

    Logits, labels and masks are aligned: for causal LMs position t predicts token t+1, so the
    student's and teacher's logits drop the last position and labels the first.

    Attributes:
        student_logits: [batch, classes] or [batch, positions, classes].
        labels: aligned labels, or None when the batch has none.
        mask: which items count ([batch, positions] bool), None for sequence tasks (every row).
        position_mask: the batch's attention mask over input positions (representation terms).
        temperature: this step's KD temperature (`hfkd.objective.schedules`).
        args: the `DistillationConfig`.
        teacher_logits: the KD target logits (several teachers already combined), aligned.
        teacher_topk: a top-k cache's (log-probs at T incl. the rest bucket, ids), aligned.
        student_hidden_states / teacher_hidden_states: `outputs.hidden_states` when requested.
        student_attentions / teacher_attentions: `outputs.attentions` when requested.
        student_qkv / teacher_qkv: captured Q/K/V of the relation layers when requested.
        layer_pairs: this term's (student, teacher) hidden-state index pairs, if it has a layer map.
        projections: student→teacher width projections (`hfkd.objective.projections`), if any.
        relations: the relation settings (`hfkd.objective.relations.RelationDistiller`), if any.
    """

    student_logits: Tensor
    labels: Tensor | None
    mask: Tensor | None
    position_mask: Tensor | None
    temperature: float
    args: Any
    teacher_logits: Tensor | None = None
    teacher_topk: tuple[Tensor, Tensor] | None = None
    student_hidden_states: tuple[Tensor, ...] | None = None
    teacher_hidden_states: tuple[Tensor, ...] | None = None
    student_attentions: tuple[Tensor, ...] | None = None
    teacher_attentions: tuple[Tensor, ...] | None = None
    student_qkv: dict[str, Tensor] | None = None
    teacher_qkv: dict[str, Tensor] | None = None
    layer_pairs: list[tuple[int, int]] = field(default_factory=list)
    projections: Any = None
    relations: Any = None

    def item_mask(self) -> Tensor:
        """`mask`, or all-True over the rows of a sequence task: index per-item values with it."""
        if self.mask is not None:
            return self.mask
        return torch.ones(self.student_logits.shape[:-1], dtype=torch.bool, device=self.student_logits.device)


@dataclass(frozen=True)
class Term:
    """One named part of the objective.

    Attributes:
        name: logged as `<name>_loss`, weighted by `alpha_<name>` (built-ins: config fields; others:
            `DistillationConfig.term_weights[name]`).
        fn: `fn(ctx: TermContext) -> Tensor`, a scalar (a sum over items for `per_item`).
        needs: subset of `NEEDS`; anything but `labels` makes the term need a teacher.
        normalise: `per_item` or `per_step` (see the module docstring).
        layer_mapping: the term compares layers and gets its own layer map: the config field
            `<name>_layer_mapping`, if it exists and is set, else `layer_mapping`.
        projections: the term compares hidden states across widths through the learned projections.
        accepts_topk: the term can use a top-k teacher cache (`ctx.teacher_topk`) instead of logits.
        describe: `describe(args, objective) -> str`, the model card's line for the term.
        builtin: the weight is the config field `alpha_<name>`.
    """

    name: str
    fn: Callable[[TermContext], Tensor]
    needs: frozenset[str]
    normalise: str = "per_item"
    layer_mapping: bool = False
    projections: bool = False
    accepts_topk: bool = False
    describe: Callable[[Any, Any], str] | None = None
    builtin: bool = False

    @property
    def weight_key(self) -> str:
        return f"alpha_{self.name}"

    @property
    def log_key(self) -> str:
        return f"{self.name}_loss"

    @property
    def needs_teacher(self) -> bool:
        return bool(self.needs - {"labels"})


TERMS: dict[str, Term] = {}


def register_term(
    name: str,
    fn: Callable[[TermContext], Tensor],
    needs: Iterable[str] = (),
    normalise: str = "per_item",
    *,
    layer_mapping: bool = False,
    projections: bool = False,
    accepts_topk: bool = False,
    describe: Callable[[Any, Any], str] | None = None,
    replace: bool = False,
    _builtin: bool = False,
) -> Term:
    """Add a term to the objective's registry (before building the `DistillationConfig` that weights it)."""
    needs = frozenset(needs)
    if not name.isidentifier():
        raise ValueError(f"term name {name!r} must be a Python identifier (it becomes alpha_{name}, {name}_loss).")
    if name in TERMS and (TERMS[name].builtin or not replace):
        raise ValueError(f"a term named {name!r} is already registered; pick another name"
                         + ("" if TERMS[name].builtin else " or pass replace=True") + ".")
    if needs - NEEDS:
        raise ValueError(f"term {name!r} needs {sorted(needs - NEEDS)}, unknown; choose from {sorted(NEEDS)}.")
    if normalise not in NORMALISATIONS:
        raise ValueError(f"term {name!r}: normalise={normalise!r}; choose one of {list(NORMALISATIONS)}.")
    if not callable(fn):
        raise TypeError(f"term {name!r}: fn must be callable with a TermContext, got {type(fn).__name__}.")
    term = Term(name, fn, needs, normalise, layer_mapping, projections, accepts_topk, describe, _builtin)
    TERMS[name] = term
    return term


def unregister_term(name: str) -> None:
    """Remove a user-registered term (built-ins stay)."""
    if name in TERMS and TERMS[name].builtin:
        raise ValueError(f"{name!r} is a built-in term and cannot be removed; set alpha_{name}=0 instead.")
    TERMS.pop(name, None)


def weight_keys() -> tuple[str, ...]:
    """`alpha_<name>` of every registered term, in registry order."""
    return tuple(term.weight_key for term in TERMS.values())


def check_weights(weights: Mapping[str, Any], where: str = "", allow_all_zero: bool = False) -> None:
    """The one rule for loss weights (config, stages, schedule ends): finite numbers >= 0, not all 0."""
    for key, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}{key} must be a finite number >= 0, got {value!r}.")
    if not allow_all_zero and all(value == 0 for value in weights.values()):
        raise ValueError(
            f"{where}all loss weights ({', '.join(weights)}) are 0: nothing would be trained; set at least one > 0."
        )


# ---------------------------------------------------------------------------- built-in terms


def _ce(ctx: TermContext) -> Tensor:
    if ctx.mask is None:
        return task_ce_loss(ctx.student_logits, ctx.labels, reduction="sum")
    return task_ce_loss(ctx.student_logits[ctx.mask], ctx.labels[ctx.mask], reduction="sum")


def _kd(ctx: TermContext) -> Tensor:
    args = ctx.args
    if ctx.teacher_topk is not None:
        loss_fn, targets = TOPK_KD_LOSSES[args.kd_loss], ctx.teacher_topk
    else:
        loss_fn, targets = KD_LOSSES[args.kd_loss], (ctx.teacher_logits,)
    return loss_fn(ctx.student_logits, *targets, temperature=ctx.temperature, mask=ctx.mask,
                   scale_by_t2=args.kd_scale_by_t2, reduction="sum", beta=args.jsd_beta)


def _hidden(ctx: TermContext) -> Tensor:
    loss_fn = HIDDEN_LOSSES[ctx.args.hidden_loss]
    values = []
    for s, t in ctx.layer_pairs:
        student_h = ctx.student_hidden_states[s]
        if ctx.projections is not None:
            student_h = ctx.projections(s, student_h)
        values.append(loss_fn(student_h, ctx.teacher_hidden_states[t], ctx.position_mask))
    return torch.stack(values).mean()


def _attention(ctx: TermContext) -> Tensor:
    loss_fn = ATTENTION_LOSSES[ctx.args.attention_loss]
    values = [
        loss_fn(ctx.student_attentions[s - 1], ctx.teacher_attentions[t - 1], ctx.position_mask)
        for s, t in ctx.layer_pairs
        if s > 0 and t > 0
    ]
    return torch.stack(values).mean()


def _relation(ctx: TermContext) -> Tensor:
    return ctx.relations.loss(ctx.student_qkv, ctx.teacher_qkv, ctx.position_mask)


def _describe_kd(args: Any, objective: Any) -> str:
    return f"{args.kd_loss} (T={args.temperature}, T² scaling {'on' if args.kd_scale_by_t2 else 'off'})"


def _describe_relation(args: Any, objective: Any) -> str:
    relations = objective.relations
    return (f"{args.relations} KL, {relations.num_heads} relation heads, student layer "
            f"{relations.student.layer} ↔ teacher layer {relations.teacher.layer}")


register_term("ce", _ce, {"labels"}, _builtin=True)
register_term("kd", _kd, {"teacher_logits"}, accepts_topk=True, describe=_describe_kd, _builtin=True)
register_term("hidden", _hidden, {"hidden_states"}, "per_step", layer_mapping=True, projections=True,
              describe=lambda args, objective: args.hidden_loss, _builtin=True)
register_term("attention", _attention, {"attentions"}, "per_step", layer_mapping=True,
              describe=lambda args, objective: f"{args.attention_loss} (post-softmax attention probabilities)",
              _builtin=True)
register_term("relation", _relation, {"qkv"}, "per_step", describe=_describe_relation, _builtin=True)
