"""The objective of one run: the configured terms with their layer maps, projections and relations.

`Objective` is built once per trainer from the config and the models. Per step it says what the
models must return (`requests`), builds the `TermContext` from their outputs (`context`) and turns
the term values into the loss (`loss`) with each term's exact normalisation (`Normalisers`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from hfkd.models import DistillationSetupError, task_of
from hfkd.objective.items import UNLABELED, with_unlabeled_rows
from hfkd.objective.layer_mapping import resolve_layer_mapping
from hfkd.objective.losses import require_several_classes
from hfkd.objective.projections import WidthProjections
from hfkd.objective.relations import RelationDistiller, parse_relations
from hfkd.objective.terms import TERMS, Term, TermContext

Tensor = torch.Tensor


def aligned(
    logits: Tensor, labels: Tensor | None, attention_mask: Tensor | None, causal: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Logits, labels and item mask; shifted for causal LMs (position t predicts token t+1).

    The mask is None for sequence tasks (every row counts); for token tasks it selects labels
    != -100 (and the attended positions of unlabeled rows, `hfkd.objective.items`), or the
    attention mask when there are no labels.
    """
    if logits.dim() == 2:
        return logits, labels, None
    if causal:
        logits = logits[:, :-1]
        labels = labels[:, 1:] if labels is not None else None
        attention_mask = attention_mask[:, 1:] if attention_mask is not None else None
    if labels is not None:
        mask = labels.ne(UNLABELED)
        return logits, labels, mask if causal else with_unlabeled_rows(mask, attention_mask)
    if attention_mask is not None:
        return logits, None, attention_mask.bool()
    return logits, None, torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)


@dataclass(frozen=True)
class Normalisers:
    """Scalers that make gradient accumulation (and DDP averaging) exact.

    `per_item` terms are sums divided by the item count of the whole accumulated batch (summed over
    processes): a term that needs labels by the labelled items (Trainer's `num_items_in_batch`),
    any other by all items, unlabeled rows included (`hfkd.objective.items`). `per_step` terms are
    micro-batch means divided by the number of accumulation steps. `local_items` /
    `local_all_items` are this micro-batch's counts (logging).
    """

    local_items: int
    local_all_items: int
    items: Callable[[Tensor], Tensor]
    all_items: Callable[[Tensor], Tensor]
    steps: Callable[[Tensor], Tensor]

    @classmethod
    def for_step(cls, local_items: int, num_items_in_batch: Any, accumulation_steps: int,
                 processes: int, average_across_devices: bool, local_all_items: int | None = None,
                 unlabeled_in_window: Any = 0) -> Normalisers:
        steps = accumulation_steps or 1
        local_all = local_items if local_all_items is None else local_all_items
        if num_items_in_batch is None:
            return cls(local_items, local_all, lambda v: v / (local_items * steps),
                       lambda v: v / (local_all * steps), lambda v: v / steps)
        scale = processes if average_across_devices and processes > 1 else 1
        labelled = _at_least_one(num_items_in_batch)  # a window of unlabeled rows only: CE sums to 0
        every = _at_least_one(num_items_in_batch + unlabeled_in_window)
        return cls(local_items, local_all, lambda v: v * scale / labelled, lambda v: v * scale / every,
                   lambda v: v / steps)

    def normalise(self, term: Term, value: Tensor) -> Tensor:
        if term.normalise == "per_step":
            return self.steps(value)
        return self.items(value) if "labels" in term.needs else self.all_items(value)

    def shown(self, term: Term, value: Tensor) -> Tensor:
        """The value logged: a per-item mean, whatever the accumulation window."""
        if term.normalise == "per_step":
            return value
        return value / (self.local_items if "labels" in term.needs else self.local_all_items)


def _at_least_one(count: Any) -> Any:
    return count.clamp(min=1) if torch.is_tensor(count) else max(count, 1)


class Objective:
    """The terms a config weights over the run, with what they need from the models.

    Args:
        args: the `DistillationConfig`.
        student: the student (projections are registered on it).
        teacher: the first teacher, or None (cached logits or labels only).
        causal: the models are causal LMs (logits and labels are shifted).
    """

    def __init__(self, args: Any, student: nn.Module, teacher: nn.Module | None, causal: bool) -> None:
        self.args, self.causal = args, causal
        if args.uses("kd") and task_of(student) == "sequence_classification":
            require_several_classes(args.kd_loss, student.config.num_labels)
        self.terms = [term for name, term in TERMS.items() if args.uses(name)]
        self.layer_pairs = {term.name: self._pairs(term, student, teacher) for term in self.terms
                            if term.layer_mapping and teacher is not None}
        projected = [s for term in self.terms if term.projections for s, _ in self.layer_pairs.get(term.name, [])]
        self.projections = (WidthProjections.build(student, teacher, projected, args.projection_init)
                            if projected else None)
        self.relations: RelationDistiller | None = None

    def _pairs(self, term: Term, student: nn.Module, teacher: nn.Module) -> list[tuple[int, int]]:
        args = self.args
        pairs = resolve_layer_mapping(
            args.layer_mapping_of(term.name),
            student_layers=student.config.num_hidden_layers,
            teacher_layers=teacher.config.num_hidden_layers,
            include_embeddings=args.include_embeddings,
            student_teacher_layers=getattr(student.config, "hfkd_teacher_layers", None),
        )
        if "attentions" in term.needs and not any(s > 0 and t > 0 for s, t in pairs):
            raise ValueError(
                f"alpha_{term.name} > 0 but its layer map {pairs} only pairs embedding outputs, which have no "
                "attention maps; map at least one transformer layer."
            )
        return pairs

    def attach_relations(self, student: nn.Module, teacher: nn.Module) -> None:
        """Q/K/V hooks for the relation term, on the teacher that will run (placed, made cheaper)."""
        if any("qkv" in term.needs for term in self.terms):
            args = self.args
            self.relations = RelationDistiller(
                student, teacher, parse_relations(args.relations), args.relation_heads,
                args.relation_student_layer, args.relation_teacher_layer, causal=self.causal,
            )

    def needs_teacher(self) -> bool:
        return any(term.needs_teacher for term in self.terms)

    def needs_beyond_logits(self) -> bool:
        """Some term needs more from the teacher than its logits (which a cache could hold)."""
        return any(term.needs - {"labels", "teacher_logits"} for term in self.terms)

    def check_cache(self, top_k: bool) -> None:
        """A top-k cache holds no full logits: refuse terms that need them."""
        refused = [t.name for t in self.terms if top_k and "teacher_logits" in t.needs and not t.accepts_topk]
        if refused:
            raise DistillationSetupError(
                f"term(s) {refused} need the teacher's full logits, which a top-k teacher cache does not hold: "
                "use a full-logit cache (unset teacher_cache_top_k) or pass the teacher."
            )

    # ------------------------------------------------------------------ per step

    def active(self, weights: Mapping[str, float]) -> list[Term]:
        return [term for term in self.terms if weights.get(term.name, 0.0) > 0]

    @staticmethod
    def requests(active: list[Term]) -> set[str]:
        """Union of what the step's active terms need."""
        return set().union(*(term.needs for term in active))

    @staticmethod
    def check_labels(active: list[Term], weights: Mapping[str, float], labels: Tensor | None) -> None:
        for term in active:
            if "labels" in term.needs and labels is None:
                raise ValueError(
                    f"{term.weight_key}={weights[term.name]} but the batch has no 'labels'; add a label column "
                    f"(or a collator that makes labels) or set {term.weight_key}=0."
                )

    def context(self, student_out: Any, teacher_out: Any, inputs: Mapping[str, Any], temperature: float,
                kd_target: Tensor | None, topk: tuple[Tensor, ...] | None,
                qkv: tuple[Any, Any] = (None, None)) -> TermContext:
        """The `TermContext` of a step from the models' outputs (teacher_out may be None)."""
        position_mask = inputs.get("attention_mask")
        logits, labels, mask = aligned(student_out.logits, inputs.get("labels"), position_mask, self.causal)
        shift = (lambda t: t[:, :-1]) if self.causal and logits.dim() == 3 else (lambda t: t)
        return TermContext(
            student_logits=logits, labels=labels, mask=mask, position_mask=position_mask,
            temperature=temperature, args=self.args,
            teacher_logits=None if kd_target is None else shift(kd_target),
            teacher_topk=None if topk is None else tuple(shift(t) for t in topk),
            student_hidden_states=getattr(student_out, "hidden_states", None),
            teacher_hidden_states=getattr(teacher_out, "hidden_states", None),
            student_attentions=getattr(student_out, "attentions", None),
            teacher_attentions=getattr(teacher_out, "attentions", None),
            student_qkv=qkv[0], teacher_qkv=qkv[1],
            projections=self.projections, relations=self.relations,
        )

    def values(self, active: list[Term], ctx: TermContext) -> dict[Term, Tensor]:
        """Each active term's raw value, each term seeing its own layer map."""
        return {term: term.fn(replace(ctx, layer_pairs=self.layer_pairs.get(term.name, [])) if term.layer_mapping
                              else ctx) for term in active}

    @staticmethod
    def loss(values: Mapping[Term, Tensor], weights: Mapping[str, float], normalisers: Normalisers) -> Tensor:
        loss: Any = 0.0
        for term, value in values.items():
            loss = loss + weights[term.name] * normalisers.normalise(term, value)
        return loss

    # ------------------------------------------------------------------ model card

    def describe(self) -> dict[str, str]:
        """Model-card lines: each term's settings and layer map."""
        settings: dict[str, str] = {}
        for term in self.terms:
            if term.describe is not None:
                settings[term.log_key if term.name != "relation" else "relations"] = term.describe(self.args, self)
            elif not term.builtin:
                settings[term.log_key] = f"user-registered term ({term.normalise})"
        maps = {name: ", ".join(f"{s}→{t}" for s, t in pairs) for name, pairs in self.layer_pairs.items()}
        if len(set(maps.values())) == 1:
            settings["layer_map (student→teacher hidden states)"] = next(iter(maps.values()))
        else:
            settings.update({f"layer_map of {name} (student→teacher hidden states)": m for name, m in maps.items()})
        if self.projections is not None:
            settings["projections"] = "linear, student width → teacher width, not part of the saved student"
        return settings
