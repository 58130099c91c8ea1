"""Teacher placement per engine, decided from the accelerator state (no GPU; two tests need the deepspeed package).

The DeepSpeed/FSDP settings come from the shipped `recipes/accelerate/*.yaml` through Accelerate's
own launcher code, so these tests also check that those files say what the README says they do.
"""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from torch.nn.parallel import DistributedDataParallel
from transformers import BertForSequenceClassification
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

from conftest import REPO_ROOT, bert_config
from hfkd import create_student
from hfkd.models import is_sharded
from hfkd.trainers.checkpoints import checkpoint_problem
from hfkd.teacher.placement import (
    DEEPSPEED,
    DEVICE,
    FSDP,
    deepspeed_inference_config,
    model_hidden_size,
    prepare_teacher,
    teacher_placement,
)

ACCELERATE_CONFIGS = REPO_ROOT / "recipes" / "accelerate"


def launch_env(name: str) -> tuple[SimpleNamespace, dict[str, str]]:
    """What `accelerate launch --config_file recipes/accelerate/<name>.yaml` puts in the processes' env."""
    args = launch_command_parser().parse_args(["--config_file", str(ACCELERATE_CONFIGS / f"{name}.yaml"), "x.py"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def trainer_deepspeed_config(monkeypatch, name: str, **training: object) -> dict:
    """The DeepSpeed config Trainer holds after `propagate_args_to_deepspeed` under that launch config."""
    _, env = launch_env(name)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision("bf16" if training.get("bf16", True) else "no")  # as AcceleratorState does
    args = SimpleNamespace(
        world_size=2, per_device_train_batch_size=4, gradient_accumulation_steps=3, max_grad_norm=1.0,
        learning_rate=1e-4, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0,
        save_on_each_node=False, fp16=False, fp16_full_eval=False, bf16=True, bf16_full_eval=False)
    vars(args).update(training)
    hf_config = HfTrainerDeepSpeedConfig(plugin.hf_ds_config.config)
    hf_config.trainer_config_process(args)
    return hf_config.config


def fake_accelerator(deepspeed_plugin=None, fsdp_plugin=None) -> SimpleNamespace:
    state = SimpleNamespace(deepspeed_plugin=deepspeed_plugin, fsdp_plugin=fsdp_plugin)
    return SimpleNamespace(state=state, device=torch.device("cpu"), mixed_precision="no", is_main_process=True)


def contains_auto(config: dict) -> bool:
    return "auto" in json.dumps(config)


@pytest.mark.parametrize(
    ("name", "mode", "expected"),
    [("ddp", "multi_gpu", None), ("deepspeed_zero2", "use_deepspeed", "2"), ("deepspeed_zero3", "use_deepspeed", "3"),
     ("fsdp", "use_fsdp", "2")],
)
def test_shipped_accelerate_configs_launch_the_documented_engine(name, mode, expected):
    args, env = launch_env(name)
    assert getattr(args, mode) and args.num_processes == 2
    if name.startswith("deepspeed"):
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == expected
    if name == "deepspeed_zero3":  # partitioned at load, gathered to write model.safetensors
        assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
        assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"
    if name == "fsdp":
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == expected
        assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"  # save_model writes model.safetensors


def test_placement_follows_the_accelerator_plugins():
    assert teacher_placement(fake_accelerator()) == DEVICE
    assert teacher_placement(fake_accelerator(deepspeed_plugin=object())) == DEEPSPEED
    assert teacher_placement(fake_accelerator(fsdp_plugin=object())) == FSDP


def test_device_teacher_is_frozen_cast_and_never_wrapped():
    teacher = BertForSequenceClassification(bert_config(layers=2)).train()
    placed = prepare_teacher(teacher, fake_accelerator(), dtype=torch.bfloat16)
    assert placed is teacher and not isinstance(placed, DistributedDataParallel)
    assert not placed.training and not any(p.requires_grad for p in placed.parameters())
    assert {p.dtype for p in placed.parameters()} == {torch.bfloat16}
    assert not is_sharded(placed)


# Trainer builds its DeepSpeed config only with deepspeed installed (`pip install -e ".[deepspeed]"`);
# it is an optional extra, so CI skips these two.
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed not installed: pip install -e '.[deepspeed]'")


@needs_deepspeed
def test_zero3_teacher_config_keeps_stage3_and_sizes_buckets_from_the_teacher(monkeypatch):
    train_config = trainer_deepspeed_config(monkeypatch, "deepspeed_zero3")
    train_config["optimizer"] = {"type": "AdamW", "params": {"lr": 1e-4}}  # a user's own DS config may add these
    train_config["scheduler"] = {"type": "WarmupLR", "params": {"warmup_num_steps": "auto"}}
    train_config["zero_optimization"].update(
        reduce_bucket_size="auto", stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto")
    config = deepspeed_inference_config(train_config, hidden_size=32)

    assert "optimizer" not in config and "scheduler" not in config
    zero = config["zero_optimization"]
    assert zero["stage"] == 3
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"],
            zero["stage3_param_persistence_threshold"]) == (32 * 32, int(0.9 * 32 * 32), 10 * 32)
    # DeepSpeed checks train_batch_size = micro batch x accumulation x processes.
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["train_batch_size"]) == (4, 3, 4 * 3 * 2)
    assert config["bf16"]["enabled"] is True  # the teacher computes in the student's precision
    assert not contains_auto(config)
    assert train_config["optimizer"] and train_config["zero_optimization"]["reduce_bucket_size"] == "auto"  # untouched


@needs_deepspeed
def test_zero2_teacher_runs_at_stage_0(monkeypatch):
    train_config = trainer_deepspeed_config(monkeypatch, "deepspeed_zero2", bf16=False)
    assert train_config["zero_optimization"]["stage"] == 2
    config = deepspeed_inference_config(train_config, hidden_size=None)
    assert config["zero_optimization"] == {"stage": 0}  # nothing of the teacher's to partition
    assert config["train_batch_size"] == 4 * 3 * 2 and not contains_auto(config)


def test_hidden_size_for_bucket_sizes():
    assert model_hidden_size(BertForSequenceClassification(bert_config(layers=1, hidden=48))) == 48
    assert model_hidden_size(SimpleNamespace(config=SimpleNamespace(hidden_sizes=[8, 64, 16]))) == 64
    assert model_hidden_size(torch.nn.Linear(2, 2)) is None


def test_fsdp_plugin_from_the_shipped_config_wraps_bert_layers(monkeypatch):
    _, env = launch_env("fsdp")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["BertLayer"]


def test_create_student_refuses_a_zero3_partitioned_teacher():
    teacher = BertForSequenceClassification(bert_config(layers=4))
    next(teacher.parameters()).ds_id = 0  # what deepspeed.zero.Init leaves on every parameter
    with pytest.raises(ValueError, match="partitioned by DeepSpeed ZeRO-3.*student_model_name_or_path"):
        create_student(teacher, num_layers=2)


@pytest.mark.parametrize("engine_files", [("latest", "global_step4"), ("pytorch_model_fsdp_0",)])
def test_engine_checkpoints_count_as_complete(tmp_path, engine_files):
    (tmp_path / "trainer_state.json").write_text('{"global_step": 4}')
    assert checkpoint_problem(str(tmp_path)) == "holds no model weights"
    for name in engine_files:
        (tmp_path / name).mkdir() if name != "latest" else (tmp_path / name).write_text("global_step4")
    assert checkpoint_problem(str(tmp_path)) is None

