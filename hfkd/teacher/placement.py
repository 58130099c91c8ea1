"""Where the frozen teacher lives under each engine Accelerate trains the student with.

- One process or DDP: a plain module on the process's device. It is never wrapped in DDP: it has
  no gradients to synchronise, and wrapping would only add a copy of its buffers per process.
- DeepSpeed: a DeepSpeed inference engine built from the trainer's own DeepSpeed config. Under
  ZeRO-3 the teacher's weights are partitioned over the processes like the student's (copying a
  teacher whole to every rank is what ZeRO-3 exists to avoid); under ZeRO-0/1/2 it runs at stage 0,
  a replica in DeepSpeed's fp16/bf16 precision.
- FSDP: sharded with the trainer's FSDP plugin (`FullyShardedDataParallel` for FSDP1,
  `fully_shard` for FSDP2), in eval mode with gradients off.

The same scheme as TRL's `prepare_deepspeed`/`prepare_fsdp` for reference and reward models.
Width projections are not placed here: they are a student submodule (see
`DistillationTrainer._attach_projections`), so under DeepSpeed/FSDP the engine shards, averages,
optimises and checkpoints them with the rest of the student; only under DDP does hfkd sync them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any, Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)

DEVICE, DEEPSPEED, FSDP = "device", "deepspeed", "fsdp"

# ZeRO-3 settings that DeepSpeed sizes from the model width ("auto" in Accelerate/Trainer configs),
# filled for the teacher the way `HfTrainerDeepSpeedConfig.trainer_config_finalize` fills the student's.
_WIDTH_BASED_ZERO3 = {
    "reduce_bucket_size": lambda h: h * h,
    "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
    "stage3_param_persistence_threshold": lambda h: 10 * h,
}


def teacher_placement(accelerator: Any) -> str:
    """`DEVICE`, `DEEPSPEED` or `FSDP`: the engine the trainer runs the student with.

    Decided like `Trainer.is_deepspeed_enabled`/`is_fsdp_enabled`, from the plugins on the
    accelerator state (set by `accelerate launch --config_file ...` or `args.deepspeed`/`args.fsdp`).
    """
    state = accelerator.state
    if getattr(state, "deepspeed_plugin", None) is not None:
        return DEEPSPEED
    if getattr(state, "fsdp_plugin", None) is not None:
        return FSDP
    return DEVICE


def prepare_teacher(teacher: nn.Module, accelerator: Any, dtype: torch.dtype | None = None) -> nn.Module:
    """The frozen teacher, placed for the accelerator's engine (see the module docstring).

    `dtype` (`DistillationConfig.teacher_dtype`) applies on one process, under DDP and FSDP; under
    DeepSpeed the teacher takes the precision of the DeepSpeed config, as the student does.
    """
    teacher.requires_grad_(False)
    teacher.eval()
    placement = teacher_placement(accelerator)
    if placement == DEEPSPEED:
        if dtype is not None:
            logger.warning("teacher_dtype is ignored under DeepSpeed: the teacher runs in the precision "
                           "of the DeepSpeed config (its fp16/bf16 section), like the student.")
        return _deepspeed_teacher(teacher, accelerator)
    if dtype is not None:
        teacher = teacher.to(dtype=dtype)
    if placement == FSDP:
        return _fsdp_teacher(teacher, accelerator)
    return teacher.to(device=accelerator.device)


def deepspeed_inference_config(train_config: dict[str, Any], hidden_size: int | None) -> dict[str, Any]:
    """The trainer's DeepSpeed config reduced to what a frozen model needs.

    Optimizer and scheduler go (nothing is trained). Batch sizes and fp16/bf16 stay: DeepSpeed
    checks the first, and the teacher must compute in the student's precision. ZeRO-3 stays, its
    width-based "auto" sizes filled from the teacher's `hidden_size`; ZeRO-1/2 become stage 0,
    since they partition optimizer state and gradients, which a frozen model has none of. Any other
    "auto" left unfilled is dropped, so DeepSpeed uses its default.
    """
    config = copy.deepcopy(train_config)
    for section in ("optimizer", "scheduler"):
        config.pop(section, None)
    zero = config.get("zero_optimization") or {}
    if zero.get("stage", 0) == 3:
        for key, size in _WIDTH_BASED_ZERO3.items():
            if zero.get(key) == "auto" and hidden_size is not None:
                zero[key] = size(hidden_size)
        config["zero_optimization"] = zero
    else:
        config["zero_optimization"] = {"stage": 0}
    return _without_auto(config)


def _without_auto(config: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _without_auto(value) if isinstance(value, dict) else value
        for key, value in config.items()
        if value != "auto"
    }


def model_hidden_size(model: nn.Module) -> int | None:
    """The width DeepSpeed sizes ZeRO-3 buckets by (the largest, for models with several)."""
    config = getattr(model, "config", None)
    for candidate in (config, getattr(config, "text_config", None)):
        if candidate is None:
            continue
        if getattr(candidate, "hidden_size", None) is not None:
            return int(candidate.hidden_size)
        if getattr(candidate, "hidden_sizes", None):
            return int(max(candidate.hidden_sizes))
    return None


def _deepspeed_teacher(teacher: nn.Module, accelerator: Any) -> nn.Module:
    import deepspeed  # imported here: DeepSpeed is an optional extra, needed only under DeepSpeed

    plugin = accelerator.state.deepspeed_plugin
    config = deepspeed_inference_config(plugin.deepspeed_config, model_hidden_size(teacher))
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine


def _fsdp_teacher(teacher: nn.Module, accelerator: Any) -> nn.Module:
    """Shard the teacher with the student's FSDP settings, leaving the plugin as the student needs it.

    The plugin's wrap policy is resolved against the model it is given; it is restored afterwards
    so a student of another family still resolves its own layer classes.
    """
    plugin = accelerator.state.fsdp_plugin
    with _restored(plugin, ("auto_wrap_policy", "transformer_cls_names_to_wrap", "param_init_fn")):
        if getattr(plugin, "fsdp_version", 1) == 2:
            from accelerate.utils.fsdp_utils import fsdp2_prepare_model

            with _restored(plugin, ("ignored_modules",)):
                plugin.ignored_modules = None  # they name the student's modules
                teacher = fsdp2_prepare_model(accelerator, teacher)
        else:
            from torch.distributed.fsdp import FullyShardedDataParallel

            plugin.set_auto_wrap_policy(teacher)
            teacher = FullyShardedDataParallel(
                teacher,
                sharding_strategy=plugin.sharding_strategy or plugin.reshard_after_forward,
                cpu_offload=plugin.cpu_offload,
                auto_wrap_policy=plugin.auto_wrap_policy,
                mixed_precision=plugin.mixed_precision_policy,
                sync_module_states=plugin.sync_module_states,
                forward_prefetch=plugin.forward_prefetch,
                use_orig_params=plugin.use_orig_params,
                param_init_fn=plugin.param_init_fn,
                limit_all_gathers=plugin.limit_all_gathers,
                device_id=accelerator.device,
            )
    teacher.eval()
    return teacher


@contextlib.contextmanager
def _restored(obj: Any, names: tuple[str, ...]) -> Iterator[None]:
    saved = {name: getattr(obj, name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(obj, name, value)
