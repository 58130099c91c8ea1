"""Self-attention relation distillation (MiniLM, MiniLMv2): capture Q/K/V and relate them.

The relation term needs the query, key and value projections of one attention layer of each
model, which no `output_*` flag returns. Forward hooks on the layer's q/k/v `Linear` modules
record them during the forward pass; they are registered only around a forward that needs them
(`QKVCapture.capture`) and always removed afterwards, so evaluation, saving and other terms never
see them. Q and K are taken as projected, before any rotary position embedding (Llama, Qwen2).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from hfkd.objective.losses import relation_kl_loss
from hfkd.models import find_layer_stack

# (query, key, value) module names per family, matched on the last component of each module path
# inside one transformer layer; the first match wins (self-attention before cross-attention).
QKV_MODULE_NAMES: tuple[tuple[str, str, str], ...] = (
    ("query", "key", "value"),  # BERT, RoBERTa, ELECTRA, XLM-R: attention.self.*
    ("q_proj", "k_proj", "v_proj"),  # Llama, Qwen2, Mistral, Gemma, OPT, BART: self_attn.*
    ("q_lin", "k_lin", "v_lin"),  # DistilBERT: attention.*
)
# One module whose output is [Q | K | V] along the last dimension.
FUSED_QKV_MODULE_NAMES: tuple[str, ...] = ("c_attn",)  # GPT-2
PROJECTIONS = "qkv"


def parse_relations(value: str) -> list[str]:
    """'qq,kk,vv' -> ['qq', 'kk', 'vv']: each relation is a (left, right) pair of q, k or v."""
    relations = [item.strip() for item in value.split(",") if item.strip()]
    bad = [r for r in relations if len(r) != 2 or any(c not in PROJECTIONS for c in r)]
    if not relations or bad:
        raise ValueError(
            f"relations={value!r} is not a comma-separated list of pairs of q, k, v "
            "(e.g. 'qq,kk,vv' for MiniLMv2, 'qk,vv' for MiniLM)."
        )
    if len(set(relations)) != len(relations):
        raise ValueError(f"relations={value!r} lists a relation twice; name each once.")
    return relations


def _out_width(module: nn.Module) -> int | None:
    """Output width of a Linear (also PEFT-wrapped) or GPT-2 Conv1D; None if it cannot be told."""
    width = getattr(module, "out_features", None) or getattr(module, "nf", None)
    return int(width) if width is not None else None


class QKVCapture:
    """Records the Q, K and V projections of one transformer layer (1-based) of `model`."""

    def __init__(self, model: nn.Module, layer: int, who: str) -> None:
        _, stack = find_layer_stack(model)
        if not 1 <= layer <= len(stack):
            raise ValueError(
                f"relation layer {layer} is out of range for the {who}'s {len(stack)} layers; "
                f"use 1..{len(stack)} (default: the last)."
            )
        self.layer, self.who = layer, who
        self.modules, self.fused = _find_qkv_modules(stack[layer - 1], who, layer)

    def widths(self) -> dict[str, int | None]:
        """Width of each of q, k, v (None when a module does not tell its width)."""
        if self.fused is not None:
            width = _out_width(self.fused)
            return dict.fromkeys(PROJECTIONS, width // 3 if width else None)
        return {name: _out_width(module) for name, module in zip(PROJECTIONS, self.modules)}

    @contextmanager
    def capture(self) -> Iterator[dict[str, torch.Tensor]]:
        """Hooks live for the `with` block only; the dict fills with q, k, v during the forward."""
        captured: dict[str, torch.Tensor] = {}

        def keep(name: str):
            def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
                captured[name] = output

            return hook

        def split(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            captured.update(zip(PROJECTIONS, output.chunk(3, dim=-1)))

        if self.fused is not None:
            handles = [self.fused.register_forward_hook(split)]
        else:
            handles = [m.register_forward_hook(keep(n)) for n, m in zip(PROJECTIONS, self.modules)]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()


def _find_qkv_modules(block: nn.Module, who: str, layer: int) -> tuple[tuple[nn.Module, ...], nn.Module | None]:
    named = list(block.named_modules())
    for names in QKV_MODULE_NAMES:
        found = [next((m for path, m in named if path.rsplit(".", 1)[-1] == n), None) for n in names]
        if all(m is not None for m in found):
            return tuple(found), None
    for name in FUSED_QKV_MODULE_NAMES:
        fused = next((m for path, m in named if path.rsplit(".", 1)[-1] == name), None)
        if fused is not None:
            return (), fused
    known = [", ".join(n) for n in QKV_MODULE_NAMES] + list(FUSED_QKV_MODULE_NAMES)
    raise ValueError(
        f"found no query/key/value projections in layer {layer} of the {who} ({type(block).__name__}); "
        f"relation distillation knows the module names {known}."
    )


class RelationDistiller:
    """The relation term: which layers, how many relation heads, and the loss over relations.

    Args:
        student, teacher: the two models (same tokenizer, so the same sequence positions).
        relations: e.g. ['qq', 'kk', 'vv'] (`parse_relations`).
        num_heads: relation heads of both models; default the teacher's attention heads. It must
            divide every related width of both models, which may differ (MiniLMv2).
        student_layer, teacher_layer: 1-based layers; default the last of each model.
        causal: leave out keys after each query (decoder models).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        relations: list[str],
        num_heads: int | None = None,
        student_layer: int | None = None,
        teacher_layer: int | None = None,
        causal: bool = False,
    ) -> None:
        self.relations, self.causal = relations, causal
        self.student = QKVCapture(student, student_layer or len(find_layer_stack(student)[1]), "student")
        self.teacher = QKVCapture(teacher, teacher_layer or len(find_layer_stack(teacher)[1]), "teacher")
        self.num_heads = num_heads or int(teacher.config.num_attention_heads)
        for capture in (self.student, self.teacher):
            widths = capture.widths()
            for relation in relations:
                left, right = widths[relation[0]], widths[relation[1]]
                if None in (left, right):
                    continue
                if left != right or left % self.num_heads:
                    raise ValueError(
                        f"relation {relation!r} of the {capture.who} (layer {capture.layer}) relates widths "
                        f"{left} and {right}: they must be equal and divisible by relation_heads={self.num_heads} "
                        f"(q/k/v widths {widths}); choose relation_heads dividing them, or other relations."
                    )

    def loss(
        self, student_qkv: dict[str, torch.Tensor], teacher_qkv: dict[str, torch.Tensor], mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Mean over relations of KL(teacher relation || student relation)."""
        if torch.is_grad_enabled() and not student_qkv["q"].requires_grad:
            raise ValueError(
                "the student's captured Q/K/V carry no gradient: with gradient checkpointing set "
                "gradient_checkpointing_kwargs={'use_reentrant': False}; else the relation layer and all "
                "before it are frozen, so pick a trainable relation_student_layer."
            )
        values = [
            relation_kl_loss(
                (student_qkv[a], student_qkv[b]), (teacher_qkv[a], teacher_qkv[b]), self.num_heads, mask, self.causal
            )
            for a, b in self.relations
        ]
        return torch.stack(values).mean()
