"""Build a smaller student from a teacher model, keeping the teacher's exact class.

Three initialisations (`init`); by default the first two, chosen by the arguments:

- Depth reduction (DistilBERT-style): keep a subset of the teacher's layers and copy their weights,
  plus embeddings, final norm, pooler and task head. The student starts close to the teacher, which
  is why this is the default way to initialise a distillation student.
- Width reduction (TinyBERT-style): a narrower config (hidden size, FFN size, heads) with random
  weights, because teacher matrices of another shape cannot be copied.
- Pruning (Minitron-style, `init="prune"`, `prune.py`): any smaller depth and width, cut from the
  teacher's weights along the units its activations on a calibration sample rank most important.

Works generically across BERT, RoBERTa, DistilBERT, GPT-2, Llama and similar models through
transformers' `attribute_map` (generic `num_hidden_layers` / `hidden_size` / `num_attention_heads`)
and by locating the layer `ModuleList` in the module tree.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from transformers import PreTrainedConfig, PreTrainedModel

from hfkd.models import find_layer_stack, is_zero3_partitioned

__all__ = ["STUDENT_INIT_KEY", "TEACHER_LAYERS_KEY", "create_student", "hidden_size", "num_layers"]

# Names of the feed-forward width across config families (BERT/Llama, DistilBERT, GPT-2, OPT).
_INTERMEDIATE_SIZE_NAMES: tuple[str, ...] = ("intermediate_size", "hidden_dim", "n_inner", "ffn_dim")

# Metadata key: 0-based teacher layer index that each student layer was copied from.
TEACHER_LAYERS_KEY = "hfkd_teacher_layers"
# Metadata key: how the student was initialised ({"init": "copy" | "prune" | "random", ...}).
STUDENT_INIT_KEY = "hfkd_student_init"
STUDENT_INITS = ("copy", "prune", "random")


def _config_of(model_or_config: PreTrainedModel | PreTrainedConfig) -> PreTrainedConfig:
    """Return the (text) config, so multimodal wrappers report their language model's shape."""
    config = getattr(model_or_config, "config", model_or_config)
    if not isinstance(config, PreTrainedConfig):
        raise TypeError(f"expected a transformers model or config, got {type(model_or_config).__name__}")
    return config.get_text_config()


def _config_int(model_or_config: PreTrainedModel | PreTrainedConfig, name: str, what: str) -> int:
    config = _config_of(model_or_config)
    value = getattr(config, name, None)
    if value is None:
        raise ValueError(f"{type(config).__name__} has no {name}; cannot tell the model {what}.")
    return int(value)


def num_layers(model_or_config: PreTrainedModel | PreTrainedConfig) -> int:
    """Number of transformer layers, read from `config.num_hidden_layers` (aliased per family)."""
    return _config_int(model_or_config, "num_hidden_layers", "depth")


def hidden_size(model_or_config: PreTrainedModel | PreTrainedConfig) -> int:
    """Width of the hidden states, read from `config.hidden_size` (aliased per family)."""
    return _config_int(model_or_config, "hidden_size", "width")


def _intermediate_size_name(config: PreTrainedConfig) -> str | None:
    """Config field holding the feed-forward width, or None if the family has none we know."""
    hidden_name = config.attribute_map.get("hidden_size")  # some families call the hidden size `hidden_dim`
    return next((n for n in _INTERMEDIATE_SIZE_NAMES if n != hidden_name and hasattr(config, n)), None)


def _spread_indices(teacher_depth: int, student_depth: int) -> list[int]:
    """Evenly spaced teacher layers starting at layer 0: `i * N // M` (6→3: [0, 2, 4])."""
    return [i * teacher_depth // student_depth for i in range(student_depth)]


def _check_num_layers(value: Any, teacher_depth: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= teacher_depth:
        raise ValueError(
            f"num_layers={value!r} is invalid for a teacher with {teacher_depth} layers; "
            f"pass an integer from 1 to {teacher_depth}."
        )


def _check_layer_indices(indices: Sequence[int], teacher_depth: int) -> list[int]:
    values = list(indices)
    if not values:
        raise ValueError(
            f"layer_indices={values} is empty; pass at least one index in [0, {teacher_depth}) "
            f"of the {teacher_depth}-layer teacher."
        )
    bad = [i for i in values if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < teacher_depth]
    if bad:
        raise ValueError(
            f"layer_indices={values} has {bad} out of range for a teacher with {teacher_depth} layers; "
            f"use integers in [0, {teacher_depth})."
        )
    if len(set(values)) != len(values):
        repeated = sorted({i for i in values if values.count(i) > 1})
        raise ValueError(
            f"layer_indices={values} repeats {repeated}; each of the teacher's {teacher_depth} layers can be "
            f"copied once, so pass unique indices."
        )
    if values != sorted(values):
        raise ValueError(
            f"layer_indices={values} is not sorted ascending (teacher has {teacher_depth} layers); "
            f"pass {sorted(values)} to keep the teacher's layer order."
        )
    return values


def _slice_per_layer_fields(config: PreTrainedConfig, teacher_depth: int, indices: list[int]) -> None:
    """Keep per-layer config lists (e.g. `layer_types`) in step with the kept layers.

    Config validation requires them to have `num_hidden_layers` entries, and a student layer must
    keep the attention type of the teacher layer it came from.
    """
    for key, value in list(vars(config).items()):
        if isinstance(value, (list, tuple)) and len(value) == teacher_depth:
            setattr(config, key, type(value)(value[i] for i in indices))


def _apply_overrides(config: PreTrainedConfig, overrides: dict[str, Any]) -> None:
    """Set user config overrides, refusing unknown names (typos) and the layer count."""
    depth_field = config.attribute_map.get("num_hidden_layers", "num_hidden_layers")
    for key, value in overrides.items():
        if config.attribute_map.get(key, key) == depth_field:
            raise ValueError(f"config override {key}={value!r} sets the depth; pass num_layers={value!r} instead.")
        if not hasattr(config, key):
            raise ValueError(
                f"config override {key}={value!r}: {type(config).__name__} has no attribute {key!r}; "
                f"check the spelling against the teacher config."
            )
        setattr(config, key, value)


def _set_width(
    config: PreTrainedConfig, new_hidden: int | None, new_intermediate: int | None, new_heads: int | None
) -> None:
    """Set the requested width fields through the generic (attribute_map-aliased) names."""
    requested = {"hidden_size": new_hidden, "intermediate_size": new_intermediate, "num_attention_heads": new_heads}
    for name, value in requested.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r} is invalid; pass a positive integer.")
    if new_hidden is not None:
        config.hidden_size = new_hidden
    if new_heads is not None:
        config.num_attention_heads = new_heads
    if new_intermediate is not None:
        name = _intermediate_size_name(config)
        if name is None:
            raise ValueError(
                f"intermediate_size={new_intermediate} cannot be set: {type(config).__name__} has none of "
                f"{list(_INTERMEDIATE_SIZE_NAMES)}; set the feed-forward width as a config override instead."
            )
        setattr(config, name, new_intermediate)


def _fix_attention_shape(config: PreTrainedConfig, kv_heads_overridden: bool) -> None:
    """After a hidden size / head count change, keep head_dim and KV heads consistent with them."""
    width, heads = config.hidden_size, config.num_attention_heads
    if width % heads:
        raise ValueError(
            f"hidden_size={width} is not divisible by num_attention_heads={heads}; "
            f"choose a hidden_size that is a multiple of {heads} or a different head count."
        )
    if hasattr(config, "head_dim"):
        config.head_dim = width // heads
    kv_heads = getattr(config, "num_key_value_heads", None)
    if kv_heads is not None and (kv_heads > heads or heads % kv_heads):
        if kv_heads_overridden:
            raise ValueError(
                f"num_key_value_heads={kv_heads} must divide num_attention_heads={heads}; "
                f"pass a divisor of {heads}."
            )
        config.num_key_value_heads = heads


def _is_width_change(teacher: PreTrainedConfig, student: PreTrainedConfig) -> bool:
    name = _intermediate_size_name(teacher)
    return _is_attention_change(teacher, student) or (
        name is not None and getattr(student, name) != getattr(teacher, name)
    )


def _is_attention_change(teacher: PreTrainedConfig, student: PreTrainedConfig) -> bool:
    return student.hidden_size != teacher.hidden_size or student.num_attention_heads != teacher.num_attention_heads


def _select_indices(
    teacher_depth: int, num_layers: int | None, layer_indices: Sequence[int] | None, width_change: bool
) -> list[int]:
    """Teacher layers the student keeps (or, for a width change, mirrors in per-layer config lists)."""
    if num_layers is not None:
        _check_num_layers(num_layers, teacher_depth)
    if width_change:
        if layer_indices is not None:
            raise ValueError(
                f"layer_indices={list(layer_indices)} cannot be combined with a width change: a narrower student "
                f"is randomly initialised and copies no teacher layer; pass num_layers (1..{teacher_depth}) instead."
            )
        return _spread_indices(teacher_depth, num_layers or teacher_depth)
    if layer_indices is not None:
        indices = _check_layer_indices(layer_indices, teacher_depth)
        if num_layers is not None and num_layers != len(indices):
            raise ValueError(
                f"num_layers={num_layers} disagrees with layer_indices={indices} ({len(indices)} layers) for a "
                f"teacher with {teacher_depth} layers; pass only one of them or make them agree."
            )
        return indices
    if num_layers is None:
        raise ValueError(
            f"create_student needs num_layers (1..{teacher_depth}), layer_indices or a width argument (hidden_size, "
            f"intermediate_size, num_attention_heads) to make the {teacher_depth}-layer teacher smaller."
        )
    return _spread_indices(teacher_depth, num_layers)


def create_student(
    teacher: PreTrainedModel,
    num_layers: int | None = None,
    layer_indices: Sequence[int] | None = None,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
    init: Literal["copy", "prune", "random"] | None = None,
    calibration_dataset: Any = None,
    calibration_samples: int | None = None,
    calibration_batch_size: int = 16,
    **config_overrides: Any,
) -> PreTrainedModel:
    """Return a new, smaller model of the teacher's exact class; the teacher is not modified.

    Depth reduction (no width argument differs from the teacher): keeps `layer_indices` (0-based,
    unique, ascending) of the teacher's N layers. With only `num_layers=M` the kept layers are spread
    evenly from layer 0: `[i * N // M for i in range(M)]`, so 6→3 keeps [0, 2, 4] and 12→6 keeps
    [0, 2, 4, 6, 8, 10]. The kept layers' weights and everything outside the layer stack (embeddings,
    final norm, pooler, task head, lm_head) are copied exactly, in the teacher's dtype and device.
    Per-layer config lists such as `layer_types` are sliced the same way. The source layers are
    recorded as `student.config.hfkd_teacher_layers` for the trainer's `skip` layer mapping.

    Width reduction (`hidden_size`, `intermediate_size` or `num_attention_heads` differs): a config
    copy with those fields replaced and `num_layers` (1..N, default N) layers, randomly initialised -
    nothing is copied because the shapes differ, so `hfkd_teacher_layers` is not set and
    `layer_indices` is rejected (per-layer config lists follow the even spread). When the hidden size
    or head count changes, `head_dim` becomes `hidden_size // num_attention_heads` and an inherited
    `num_key_value_heads` that no longer divides the head count is reset to `num_attention_heads`.

    `init` (default: "copy" for a depth-only student, "random" for a width change) forces one way:
    "random" gives a fresh model of the student's shape (nothing copied), "copy" refuses a width
    change, and "prune" (BERT, RoBERTa, DistilBERT, Llama, Qwen2, GPT-2) cuts any smaller shape out
    of the teacher: `calibration_dataset` (tokenized rows: a `datasets.Dataset` or a list of dicts
    with `input_ids`, optional `attention_mask` / `token_type_ids`; its first `calibration_samples`
    rows, default all, at least 8, run through the teacher in batches of `calibration_batch_size`)
    ranks layers, heads, neurons and hidden channels by their activations, and the most important
    are kept. `num_layers` then keeps the most important layers (in order) rather than a spread;
    pruning heads keeps head_dim, so for BERT/DistilBERT/GPT-2 `num_attention_heads` follows from
    `hidden_size // head_dim`, and grouped-query attention keeps whole key/value groups. See
    `hfkd.student.prune`. `config.hfkd_student_init` records how the student was built.

    `config_overrides` are set on the student config (e.g. `hidden_dropout_prob=0.0`).
    Encoder-decoder models are not supported. Raises ValueError on invalid arguments.
    """
    if init is not None and init not in STUDENT_INITS:
        raise ValueError(f"init={init!r} is invalid; choose one of {list(STUDENT_INITS)}.")
    if calibration_dataset is not None and init != "prune":
        raise ValueError(f"calibration_dataset is only read by init='prune' (got init={init!r}); pass init='prune'.")
    teacher_config = teacher.config
    if getattr(teacher_config, "is_encoder_decoder", False):
        raise ValueError(
            f"{type(teacher).__name__} is an encoder-decoder model; create_student supports encoder-only and "
            f"decoder-only models, so build the student from a config instead."
        )
    stack_path, stack = find_layer_stack(teacher)
    teacher_depth = len(stack)
    if getattr(teacher_config, "num_hidden_layers", None) != teacher_depth:
        raise ValueError(
            f"{type(teacher).__name__}.{stack_path} has {teacher_depth} layers but config.num_hidden_layers="
            f"{getattr(teacher_config, 'num_hidden_layers', None)}; the config cannot resize this stack."
        )

    config = copy.deepcopy(teacher_config)
    for key in (TEACHER_LAYERS_KEY, STUDENT_INIT_KEY):  # the teacher may itself be a student
        if hasattr(config, key):
            delattr(config, key)
    _apply_overrides(config, config_overrides)
    if init == "prune":
        from hfkd.student.prune import prune_student  # prune builds on this module's helpers

        return prune_student(
            teacher, config, num_layers=num_layers, layer_indices=layer_indices, hidden_size=hidden_size,
            intermediate_size=intermediate_size, num_attention_heads=num_attention_heads,
            calibration_dataset=calibration_dataset, calibration_samples=calibration_samples,
            calibration_batch_size=calibration_batch_size,
            num_key_value_heads=config_overrides.get("num_key_value_heads"),
        )
    _set_width(config, hidden_size, intermediate_size, num_attention_heads)
    if _is_attention_change(teacher_config, config):
        _fix_attention_shape(config, kv_heads_overridden="num_key_value_heads" in config_overrides)
    width_change = _is_width_change(teacher_config, config)
    if width_change and init == "copy":
        raise ValueError(
            "init='copy' needs the teacher's width, but hidden_size / intermediate_size / num_attention_heads differ; "
            "use init='prune' (cut from the teacher) or init='random'."
        )
    fresh = width_change or init == "random"

    indices = _select_indices(teacher_depth, num_layers, layer_indices, width_change)
    _slice_per_layer_fields(config, teacher_depth, indices)
    config.num_hidden_layers = len(indices)

    student = type(teacher)(config)
    student.to(device=teacher.device, dtype=teacher.dtype)
    student.train(teacher.training)
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    if fresh:
        setattr(student.config, STUDENT_INIT_KEY, {"init": "random"})
        return student

    if is_zero3_partitioned(teacher):
        raise ValueError(
            "the teacher's weights are partitioned by DeepSpeed ZeRO-3, so its layers cannot be copied into a "
            "student: build the student in one process (create_student(...).save_pretrained(dir)) and pass "
            "it as student_model_name_or_path, or use ZeRO-2."
        )
    try:
        student.load_state_dict(_student_state_dict(teacher.state_dict(), stack_path, indices), strict=True)
    except RuntimeError as error:  # e.g. an override such as num_labels or vocab_size changed a shape
        detail = " ".join(str(error).split()).rstrip(".")
        raise ValueError(
            f"cannot copy the teacher's weights into the {len(indices)}-layer student of {type(teacher).__name__}: "
            f"{detail}. Drop config overrides that change parameter shapes."
        ) from error
    setattr(student.config, TEACHER_LAYERS_KEY, list(indices))
    setattr(student.config, STUDENT_INIT_KEY, {"init": "copy"})
    return student


def _student_state_dict(
    teacher_state: dict[str, torch.Tensor], stack_path: str, indices: list[int]
) -> dict[str, torch.Tensor]:
    """Rename kept layers `<stack>.<i>.*` to their student position; drop the others; keep the rest."""
    new_position = {str(teacher_idx): str(student_idx) for student_idx, teacher_idx in enumerate(indices)}
    prefix = stack_path + "."
    state: dict[str, torch.Tensor] = {}
    for key, tensor in teacher_state.items():
        if not key.startswith(prefix):
            state[key] = tensor
            continue
        layer, _, rest = key[len(prefix) :].partition(".")
        if layer in new_position:
            state[f"{prefix}{new_position[layer]}.{rest}"] = tensor
    return state
