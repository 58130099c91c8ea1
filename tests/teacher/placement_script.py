"""Two CPU processes over gloo place a teacher with `hfkd.teacher.placement` (for test_placement_multiprocess.py).

    python tests/placement_script.py {zero3,zero2,fsdp1,fsdp2} OUTPUT_DIR

Each rank writes rank<r>.json: whether the placed teacher gives the unsharded teacher's logits,
how many weights this rank holds, and (FSDP2) whether width projections called outside the
student's FSDP forward get the gradient plain data parallelism would give them.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)  # for conftest
sys.path.insert(0, os.path.dirname(TESTS))  # the repository, for hfkd
from conftest import bert_config  # noqa: E402

WORLD = 2


def deepspeed_accelerator(stage: int) -> SimpleNamespace:
    from accelerate.utils import DeepSpeedPlugin

    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 2 * WORLD,
              "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
              "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": "auto"}}
    plugin = DeepSpeedPlugin(hf_ds_config=config)
    state = SimpleNamespace(deepspeed_plugin=plugin, fsdp_plugin=None)
    return SimpleNamespace(state=state, device=torch.device("cpu"), mixed_precision="no", is_main_process=True)


def fsdp_accelerator(version: int) -> SimpleNamespace:
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(fsdp_version=version, auto_wrap_policy="transformer_based_wrap",
                                            transformer_cls_names_to_wrap=["BertLayer"],
                                            state_dict_type="FULL_STATE_DICT")
    state = SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=plugin)
    return SimpleNamespace(state=state, device=torch.device("cpu"), mixed_precision="no", is_main_process=True)


def local_numel(model: torch.nn.Module) -> int:
    """Weights this process holds: its ZeRO-3 partition, its FSDP shard, or everything."""
    total = 0
    for parameter in model.parameters():
        if hasattr(parameter, "ds_tensor"):
            total += parameter.ds_tensor.numel()
        elif hasattr(parameter, "to_local"):
            total += parameter.to_local().numel()
        else:
            total += parameter.numel()
    return total


def projection_gradient_check(accelerator: SimpleNamespace, rank: int) -> float:
    """Max |grad - DDP-equivalent grad| of a projection used outside the FSDP2 student's forward."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from transformers import BertForSequenceClassification

    torch.manual_seed(1)
    student = BertForSequenceClassification(bert_config(layers=2, hidden=16, heads=2))
    student.add_module("hfkd_projections", torch.nn.ModuleDict({"1": torch.nn.Linear(16, 32)}))
    reference = BertForSequenceClassification(bert_config(layers=2, hidden=16, heads=2))
    reference.add_module("hfkd_projections", torch.nn.ModuleDict({"1": torch.nn.Linear(16, 32)}))
    reference.load_state_dict(student.state_dict())
    inputs = [torch.randint(1, 100, (2, 6), generator=torch.Generator().manual_seed(10 + r)) for r in range(WORLD)]
    target = torch.ones(2, 6, 32)

    def loss_of(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = model(input_ids=input_ids, output_hidden_states=True).hidden_states[1]
        return (model.hfkd_projections["1"](hidden) - target).pow(2).mean()  # outside the wrapped forward

    wrapped = fsdp2_prepare_model(accelerator, student)
    loss_of(wrapped, inputs[rank]).backward()
    grad = wrapped.hfkd_projections["1"].weight.grad.full_tensor()
    (sum(loss_of(reference, x) for x in inputs) / WORLD).backward()  # what data parallelism averages to
    return float((grad - reference.hfkd_projections["1"].weight.grad).abs().max())


def run(rank: int, mode: str, output_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("HFKD_TEST_PORT", "29561"),
                      RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from transformers import BertForSequenceClassification

    from hfkd.models import is_sharded
    from hfkd.teacher.placement import prepare_teacher

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(bert_config(layers=2, hidden=32))
    input_ids = torch.randint(1, 100, (2, 6), generator=torch.Generator().manual_seed(rank))
    with torch.no_grad():
        expected = teacher(input_ids=input_ids).logits
    full_numel = sum(p.numel() for p in teacher.parameters())
    kind, version = mode[:-1], int(mode[-1])
    accelerator = deepspeed_accelerator(version) if kind == "zero" else fsdp_accelerator(version)
    policy_before = getattr(accelerator.state.fsdp_plugin, "auto_wrap_policy", None)

    placed = prepare_teacher(teacher, accelerator)
    held = local_numel(placed)  # before a forward: FSDP keeps the root unit gathered after one
    with torch.no_grad():
        logits = placed(input_ids=input_ids).logits
    record = {
        "type": type(placed).__name__,
        "max_logit_error": float((logits.float() - expected).abs().max()),
        "local_numel": held,
        "full_numel": full_numel,
        "sharded": is_sharded(placed),
        "trainable": any(p.requires_grad for p in placed.parameters()),
        "training": getattr(placed, "module", placed).training,  # a DeepSpeedEngine's eval() sets its module's
        "plugin_untouched": getattr(accelerator.state.fsdp_plugin, "auto_wrap_policy", None) is policy_before,
    }
    if mode == "fsdp2":
        record["projection_grad_error"] = projection_gradient_check(accelerator, rank)
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(record, handle)
    # Free the wrapped teacher (it holds the process group) while the interpreter is alive: a gloo
    # group finalised at interpreter exit can abort the process ("terminate called without an active
    # exception"), the likeliest cause of this script's one failure in CI (rank 1 aborted).
    del placed
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.spawn(run, args=(sys.argv[1], sys.argv[2]), nprocs=WORLD)
