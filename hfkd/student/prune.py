"""Structured pruning as student initialisation (Minitron: Muralidharan et al. 2024, Sreenivas et al. 2024).

The student is the teacher with its least important layers, attention heads, FFN neurons and hidden
channels removed (importance: `importance.py`), so it starts from the teacher's own weights at any
width instead of from random ones. The same index sets slice every tensor that carries a unit: a
hidden channel is a row/column of every embedding table (word, position, token type), LayerNorm,
projection, pooler and task head; a head is `head_dim` rows of Q/K/V and columns of O (GPT-2's fused
`c_attn`: the same rows of each of its q, k, v sections); a neuron a row of the up/gate projections and
a column of the down projection. Pruning heads keeps `head_dim`. With grouped-query attention a whole
key/value group is kept or dropped with its query heads (`num_key_value_heads` follows). Layers are
chosen by block importance and kept in the teacher's order.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from hfkd.models import DistillationSetupError, find_layer_stack, is_zero3_partitioned
from hfkd.student.anatomy import Anatomy, anatomy_of, attention_shape
from hfkd.student.create import (
    STUDENT_INIT_KEY,
    TEACHER_LAYERS_KEY,
    _check_layer_indices,
    _check_num_layers,
    _intermediate_size_name,
    _slice_per_layer_fields,
)
from hfkd.student.importance import Importance, calibration_rows, compute_importance

__all__ = ["PrunedShape", "prune_student", "pruned_shape"]


@dataclass(frozen=True)
class PrunedShape:
    """The student's width; head_dim is always the teacher's."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int


def _positive(name: str, value: Any, limit: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise DistillationSetupError(
            f"{name}={value!r} is invalid for pruning a teacher with {limit} {what}; pass an integer from 1 to {limit}."
        )


def _teacher_intermediate(layer: nn.Module, anatomy: Anatomy) -> int:
    weight = layer.get_submodule(anatomy.ffn_out).weight
    return int(weight.shape[0] if anatomy.conv1d else weight.shape[1])


def pruned_shape(
    teacher: PreTrainedModel,
    hidden_size: int | None,
    intermediate_size: int | None,
    num_attention_heads: int | None,
    num_key_value_heads: int | None = None,
) -> PrunedShape:
    """Check the requested width against what pruning the teacher can give; None keeps (or derives) a size."""
    anatomy = anatomy_of(teacher)
    config = teacher.config.get_text_config()
    heads, kv_heads, head_dim = attention_shape(config)
    _, stack = find_layer_stack(teacher)
    teacher_intermediate = _teacher_intermediate(stack[0], anatomy)
    hidden = config.hidden_size if hidden_size is None else hidden_size
    _positive("hidden_size", hidden, config.hidden_size, "hidden channels")
    intermediate = teacher_intermediate if intermediate_size is None else intermediate_size
    _positive("intermediate_size", intermediate, teacher_intermediate, "FFN neurons per layer")
    if num_attention_heads is not None:
        _positive("num_attention_heads", num_attention_heads, heads, "attention heads")
    if anatomy.head_dim_from_hidden:  # BERT/GPT-2: hidden_size = heads * head_dim, head_dim kept
        if hidden % head_dim:
            raise DistillationSetupError(
                f"hidden_size={hidden} is not a multiple of the teacher's head_dim={head_dim}: pruning removes whole "
                f"heads and keeps head_dim, and this family needs hidden_size = num_attention_heads x {head_dim}; "
                f"choose from {[head_dim * n for n in range(1, heads + 1)]}."
            )
        derived = hidden // head_dim
        if num_attention_heads is not None and num_attention_heads != derived:
            raise DistillationSetupError(
                f"num_attention_heads={num_attention_heads} with hidden_size={hidden} would change head_dim from "
                f"{head_dim}; pruning keeps head_dim, so pass num_attention_heads={derived} (or omit it) or "
                f"hidden_size={num_attention_heads * head_dim}."
            )
        num_attention_heads = derived
    student_heads = heads if num_attention_heads is None else num_attention_heads
    group = heads // kv_heads
    if student_heads % group:
        raise DistillationSetupError(
            f"num_attention_heads={student_heads}: the teacher shares each key/value head among {group} query heads "
            f"and pruning keeps or drops whole groups; choose from {[group * n for n in range(1, kv_heads + 1)]}."
        )
    student_kv = student_heads // group
    if num_key_value_heads is not None and num_key_value_heads != student_kv:
        raise DistillationSetupError(
            f"num_key_value_heads={num_key_value_heads} does not follow from pruning whole groups of {group} query "
            f"heads to num_attention_heads={student_heads}; omit it (it becomes {student_kv})."
        )
    return PrunedShape(hidden, student_heads, student_kv, head_dim, intermediate)


def _kept_layers(
    importance: Importance, teacher_depth: int, num_layers: int | None, layer_indices: Sequence[int] | None
) -> list[int]:
    """The given layer_indices, or the num_layers most important layers in the teacher's order (default all)."""
    if layer_indices is not None:
        return list(layer_indices)
    count = teacher_depth if num_layers is None else num_layers
    return _top(importance.blocks, count).tolist()


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` highest scores, ascending (ties: the lower index)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[:count]).values


def _index_sets(
    importance: Importance, shape: PrunedShape, teacher_config: PreTrainedConfig, layers: list[int]
) -> dict[str, Any]:
    """What each axis keeps: `h` globally; `q`, `kv`, `qkv`, `f` per teacher layer."""
    heads, kv_heads, head_dim = attention_shape(teacher_config)
    group = heads // kv_heads
    dims = torch.arange(head_dim)
    per_layer: dict[str, dict[int, torch.Tensor]] = {"q": {}, "kv": {}, "qkv": {}, "f": {}}
    for layer in layers:
        group_scores = importance.heads[layer].view(kv_heads, group).sum(-1)
        groups = _top(group_scores, shape.kv_heads)
        query_heads = (groups[:, None] * group + torch.arange(group)).flatten()
        q = (query_heads[:, None] * head_dim + dims).flatten()
        kv = (groups[:, None] * head_dim + dims).flatten()
        per_layer["q"][layer], per_layer["kv"][layer] = q, kv
        q_width, kv_width = heads * head_dim, kv_heads * head_dim
        per_layer["qkv"][layer] = torch.cat([q, q_width + kv, q_width + kv_width + kv])
        per_layer["f"][layer] = _top(importance.neurons[layer], shape.intermediate)
    return {"h": _top(importance.channels, shape.hidden), **per_layer}


def _axes(anatomy: Anatomy, module_path: str, param: str, module: nn.Module, tensor: torch.Tensor, hidden: int):
    """The unit axis of each dimension of one tensor (None: not pruned)."""
    out_in = {
        anatomy.query: ("qkv" if anatomy.fused_qkv else "q", "h"),
        anatomy.key: ("kv", "h"),
        anatomy.value: ("kv", "h"),
        anatomy.attention_out: ("h", "q"),
        anatomy.ffn_out: ("h", "f"),
        **{path: ("f", "h") for path in anatomy.ffn_in},
    }
    if module_path and module_path in out_in:
        out_axis, in_axis = out_in[module_path]
        if param == "bias":
            return (out_axis,)
        return (in_axis, out_axis) if anatomy.conv1d else (out_axis, in_axis)
    if isinstance(module, nn.Embedding):
        return (None, "h")
    return tuple("h" if size == hidden else None for size in tensor.shape)


def _sliced_state(
    teacher: PreTrainedModel, student: PreTrainedModel, anatomy: Anatomy, layers: list[int], keep: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Every student tensor, cut from its teacher tensor along the kept units."""
    stack_path, _ = find_layer_stack(teacher)
    prefix = stack_path + "."
    hidden = teacher.config.get_text_config().hidden_size
    teacher_state = teacher.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, target in student.state_dict().items():
        layer = None
        teacher_key = key
        if key.startswith(prefix):
            position, _, rest = key[len(prefix) :].partition(".")
            layer = layers[int(position)]
            teacher_key = f"{prefix}{layer}.{rest}"
        module_path, _, param = teacher_key.rpartition(".")
        relative = module_path[len(f"{prefix}{layer}.") :] if layer is not None else ""
        tensor = teacher_state[teacher_key]
        axes = _axes(anatomy, relative, param, teacher.get_submodule(module_path), tensor, hidden)
        for dim, axis in enumerate(axes):
            if axis is not None:
                index = keep[axis] if axis == "h" else keep[axis][layer]
                tensor = tensor.index_select(dim, index.to(tensor.device))
        if tensor.shape != target.shape:
            raise DistillationSetupError(
                f"cannot prune {teacher_key} {tuple(teacher_state[teacher_key].shape)} to the student's {key} "
                f"{tuple(target.shape)}; drop config overrides that change parameter shapes."
            )
        state[key] = tensor.clone()
    return state


def _student_config(
    config: PreTrainedConfig, teacher: PreTrainedModel, shape: PrunedShape, layers: list[int]
) -> PreTrainedConfig:
    """The teacher config (with the user's overrides) at the pruned width and depth."""
    config.hidden_size = shape.hidden
    config.num_attention_heads = shape.heads
    if getattr(config, "num_key_value_heads", None) is not None:
        config.num_key_value_heads = shape.kv_heads
    if getattr(config, "head_dim", None) is not None:
        config.head_dim = shape.head_dim
    setattr(config, _intermediate_size_name(config), shape.intermediate)
    _slice_per_layer_fields(config, teacher.config.num_hidden_layers, layers)
    config.num_hidden_layers = len(layers)
    return config


def prune_student(
    teacher: PreTrainedModel,
    config: PreTrainedConfig,
    *,
    num_layers: int | None,
    layer_indices: Sequence[int] | None,
    hidden_size: int | None,
    intermediate_size: int | None,
    num_attention_heads: int | None,
    calibration_dataset: Any,
    calibration_samples: int | None,
    calibration_batch_size: int,
    num_key_value_heads: int | None = None,
) -> PreTrainedModel:
    """The teacher pruned to the given shape (see `create_student(init='prune')`); `config` is the
    teacher's config with the user's overrides, which becomes the student's (`num_key_value_heads`:
    the user's override, checked against the whole groups pruning keeps)."""
    anatomy = anatomy_of(teacher)
    if is_zero3_partitioned(teacher):
        raise DistillationSetupError(
            "the teacher's weights are partitioned by DeepSpeed ZeRO-3, so they cannot be pruned: prune in one "
            "process (create_student(..., init='prune').save_pretrained(dir)) and pass it as student_model_name_or_path."
        )
    _, stack = find_layer_stack(teacher)
    depth = len(stack)
    shape = pruned_shape(teacher, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads)
    if num_layers is not None:
        _check_num_layers(num_layers, depth)
    if layer_indices is not None:
        layer_indices = _check_layer_indices(layer_indices, depth)
        if num_layers is not None and num_layers != len(layer_indices):
            raise DistillationSetupError(
                f"num_layers={num_layers} disagrees with layer_indices={layer_indices}; pass only one of them."
            )
    rows = calibration_rows(calibration_dataset, calibration_samples)
    importance = compute_importance(teacher, rows, calibration_batch_size)

    layers = _kept_layers(importance, depth, num_layers, layer_indices)
    student = type(teacher)(_student_config(config, teacher, shape, layers))
    student.to(device=teacher.device, dtype=teacher.dtype)
    student.train(teacher.training)
    keep = _index_sets(importance, shape, teacher.config.get_text_config(), layers)
    student.load_state_dict(_sliced_state(teacher, student, anatomy, layers, keep), strict=True)
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    setattr(student.config, TEACHER_LAYERS_KEY, layers)
    setattr(student.config, STUDENT_INIT_KEY, {"init": "prune", "calibration_samples": len(rows)})
    return student

