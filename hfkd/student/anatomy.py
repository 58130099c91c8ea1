"""Where each family keeps the parts structured pruning measures and slices.

Importance (`importance.py`) hooks these modules and pruning (`prune.py`) slices their weights, so
both read the same table: a new family is one `Anatomy` entry, checked by the round-trip tests.
Module paths are relative to one layer of the stack (`models.find_layer_stack`).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedConfig, PreTrainedModel

from hfkd.models import DistillationSetupError


@dataclass(frozen=True)
class Anatomy:
    """The attention and feed-forward projections of one layer of a family."""

    query: str  # for a fused projection (GPT-2's c_attn): the fused module; key and value are then ""
    key: str
    value: str
    attention_out: str  # input = the heads' outputs side by side: per-head importance
    ffn_in: tuple[str, ...]  # up (and gate) projections: their outputs are the FFN neurons
    ffn_out: str  # input = the FFN neurons' activations: neuron importance
    conv1d: bool = False  # GPT-2's Conv1D stores weights as [in, out]
    head_dim_from_hidden: bool = True  # head_dim = hidden_size // heads (else config.head_dim, Llama)

    @property
    def fused_qkv(self) -> bool:
        return not self.key


_BERT = Anatomy(
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attention_out="attention.output.dense",
    ffn_in=("intermediate.dense",),
    ffn_out="output.dense",
)
_DISTILBERT = Anatomy(
    query="attention.q_lin",
    key="attention.k_lin",
    value="attention.v_lin",
    attention_out="attention.out_lin",
    ffn_in=("ffn.lin1",),
    ffn_out="ffn.lin2",
)
_LLAMA = Anatomy(
    query="self_attn.q_proj",
    key="self_attn.k_proj",
    value="self_attn.v_proj",
    attention_out="self_attn.o_proj",
    ffn_in=("mlp.gate_proj", "mlp.up_proj"),
    ffn_out="mlp.down_proj",
    head_dim_from_hidden=False,
)
_GPT2 = Anatomy(
    query="attn.c_attn",
    key="",
    value="",
    attention_out="attn.c_proj",
    ffn_in=("mlp.c_fc",),
    ffn_out="mlp.c_proj",
    conv1d=True,
)

FAMILIES: dict[str, Anatomy] = {
    "bert": _BERT,
    "roberta": _BERT,
    "distilbert": _DISTILBERT,
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "gpt2": _GPT2,
}


def anatomy_of(model: PreTrainedModel) -> Anatomy:
    """The family's anatomy, or a one-line refusal naming the families pruning supports."""
    model_type = model.config.get_text_config().model_type
    if model_type not in FAMILIES:
        raise DistillationSetupError(
            f"init='prune' does not know the layout of model_type={model_type!r}; supported: "
            f"{sorted(FAMILIES)}. Use init='random' (or 'copy' for a depth-only student) instead."
        )
    return FAMILIES[model_type]


def attention_shape(config: PreTrainedConfig) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim) of a config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv_heads, head_dim
