"""Fake int8 quantisation of a student's linear layers, as dynamic int8 deployment rounds them.

Dynamic int8 quantization at deployment (`onnxruntime.quantization.quantize_dynamic`,
`torch.ao.quantization.quantize_dynamic`) rounds every `nn.Linear` weight to int8 once and each
input activation to 8 bits per call. A student trained in fp32 meets that rounding only at export;
`fake_quantize` makes its linear layers round the same way in fp32 arithmetic (Jacob et al. 2018), with
the straight-through estimator (the rounding's gradient taken as 1) so the fp32 weights keep learning
(`hfkd.trainers.qat` switches it on for the end of a distillation run):

- weights: per output channel, symmetric int8 (scale = max|w| / 127 in ONNX Runtime, whose symmetric
  range is ±127; max|w| / 127.5 over -128..127 in PyTorch), as `quantize_dynamic(per_channel=True)`
  and `per_channel_dynamic_qconfig` store them. On a CPU without VNNI, hfkd exports ONNX int8 with
  `reduce_range` (±64: ONNX Runtime's u8s8 kernels there saturate on full-range weights), and
  `int8_scheme("onnxruntime")` rounds the same way;
- activations: per tensor, asymmetric uint8 from the tensor's own min/max including 0 (ONNX
  Runtime's DynamicQuantizeLinear: 0..255; PyTorch's x86 kernels use reduce_range: 0..127);
- embedding tables (ONNX Runtime only): its `quantize_dynamic` also quantizes every `Gather` of a
  weight, so word, position and token-type embeddings ship as uint8, one scale per table, rounded
  like an activation (0..255 from the table's min/max including 0). For a compact BERT student the
  word embeddings are most of the parameters, and on the main job's student this rounding alone
  changed 5 of 872 dev decisions, the linear layers' 9 (BENCHMARKS.md). PyTorch's `quantize_dynamic`
  leaves embeddings fp32.

`nn.Linear` and (ONNX Runtime) `nn.Embedding` are quantised, as the runtimes' defaults do (not
GPT-2's Conv1D or attention matmuls). The fake quantisation replaces each module's `forward` on the
instance and stores nothing, so the weights and `state_dict` stay plain fp32.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["INT8_SCHEMES", "Int8Scheme", "fake_quantize", "int8_scheme", "onnx_reduce_range", "quantized_embeddings",
           "quantized_linears"]


@dataclass(frozen=True)
class Int8Scheme:
    """How a runtime's dynamic int8 rounds: weight scale = max|w| / weight_divisor, values clamped to
    [weight_min, weight_max]; activations on `activation_levels` + 1 unsigned levels; `embeddings`:
    whether embedding tables are rounded too (per table, as an activation)."""

    weight_divisor: float
    weight_min: int
    activation_levels: int
    weight_max: int = 127
    embeddings: bool = False


INT8_SCHEMES: dict[str, Int8Scheme] = {
    "onnxruntime": Int8Scheme(weight_divisor=127.0, weight_min=-127, activation_levels=255, embeddings=True),
    "torch": Int8Scheme(weight_divisor=127.5, weight_min=-128, activation_levels=127),
}
# quantize_dynamic(reduce_range=True): symmetric weights on -64..64, scale = max|w| / 64
ONNXRUNTIME_REDUCED = Int8Scheme(weight_divisor=64.0, weight_min=-64, activation_levels=255, weight_max=64,
                                 embeddings=True)


def onnx_reduce_range() -> bool:
    """Whether ONNX int8 weights should use the reduced range here: on a CPU without VNNI, ONNX
    Runtime's u8s8 kernels (plain AVX2/AVX-512) can saturate on full-range weights, and its
    quantization guide recommends reduce_range there."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    return not (probe() if probe is not None else True)


def int8_scheme(name: str) -> Int8Scheme:
    """The rounding of `name` ('onnxruntime' or 'torch') as hfkd's export applies it on this machine."""
    if name == "onnxruntime" and onnx_reduce_range():
        return ONNXRUNTIME_REDUCED
    return INT8_SCHEMES[name]


_TINY = torch.finfo(torch.float32).eps  # PyTorch's observers floor a scale here (an all-zero row)


def _straight_through(value: Tensor, rounded: Tensor) -> Tensor:
    """`rounded` forward, identity backward."""
    return value + (rounded - value).detach()


def fake_quantize_weight(weight: Tensor, scheme: Int8Scheme) -> Tensor:
    """Per-output-channel symmetric int8 round trip of a [out, in] weight."""
    scale = (weight.detach().abs().amax(dim=1, keepdim=True) / scheme.weight_divisor).clamp_min(_TINY)
    # times the inverse scale, as PyTorch's quantizer: max|w| lands on 127.49999 (PyTorch) or 127, not on a tie
    rounded = torch.clamp(torch.round(weight * (1 / scale)), scheme.weight_min, scheme.weight_max) * scale
    return _straight_through(weight, rounded)


def fake_quantize_activation(x: Tensor, scheme: Int8Scheme, range_of: Tensor | None = None) -> Tensor:
    """Per-tensor asymmetric uint8 round trip from the range (which includes 0) of `range_of`, by
    default `x` itself (an embedding lookup rounds its rows with the whole table's range)."""
    levels = scheme.activation_levels
    source = (x if range_of is None else range_of).detach()
    low, high = source.min().clamp_max(0), source.max().clamp_min(0)
    scale = ((high - low) / levels).clamp_min(_TINY)
    zero_point = torch.clamp(torch.round(-low / scale), 0, levels)
    rounded = (torch.clamp(torch.round(x / scale) + zero_point, 0, levels) - zero_point) * scale
    return _straight_through(x, rounded)


def _fake_quant_forward(self: nn.Linear, x: Tensor) -> Tensor:
    scheme = self.hfkd_int8_scheme
    return nn.functional.linear(
        fake_quantize_activation(x, scheme), fake_quantize_weight(self.weight, scheme), self.bias
    )


def _fake_quant_embedding_forward(self: nn.Embedding, ids: Tensor) -> Tensor:
    # Only the looked-up rows are rounded (the table's range is one reduction): cheaper than the table.
    rows = nn.functional.embedding(ids, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                                   self.scale_grad_by_freq, self.sparse)
    return fake_quantize_activation(rows, self.hfkd_int8_scheme, range_of=self.weight)


def _modules_of(model: nn.Module, kind: type[nn.Module], skip: tuple[str, ...]) -> list[nn.Module]:
    skipped = {id(m) for name in skip if hasattr(model, name) for m in getattr(model, name).modules()}
    return [m for m in model.modules() if isinstance(m, kind) and id(m) not in skipped]


def quantized_linears(model: nn.Module, skip: tuple[str, ...] = ()) -> list[nn.Linear]:
    """The linear layers dynamic int8 quantises: every `nn.Linear` outside the submodules named in `skip`."""
    return _modules_of(model, nn.Linear, skip)


def quantized_embeddings(model: nn.Module, skip: tuple[str, ...] = ()) -> list[nn.Embedding]:
    """The embedding tables ONNX Runtime's dynamic int8 quantises: every `nn.Embedding` outside `skip`."""
    return _modules_of(model, nn.Embedding, skip)


def fake_quantize(model: nn.Module, scheme: Int8Scheme | None, skip: tuple[str, ...] = ()) -> None:
    """Switch the model's linear layers and, where the scheme rounds them, embedding tables (but `skip`'s)
    to fake-quantised int8 (`scheme`), or all of them back to fp32 (None)."""
    forwards = [(m, _fake_quant_forward) for m in quantized_linears(model, skip)]
    if scheme is None or scheme.embeddings:
        forwards += [(m, _fake_quant_embedding_forward) for m in quantized_embeddings(model, skip)]
    for module, forward in forwards:
        if scheme is None:
            module.__dict__.pop("forward", None)
            module.__dict__.pop("hfkd_int8_scheme", None)
        else:
            module.hfkd_int8_scheme = scheme
            module.forward = types.MethodType(forward, module)
