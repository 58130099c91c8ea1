"""A checkpoint whose weight or state file is cut short is incomplete, whatever trainer_state.json says."""

import json
import os

import pytest
import torch

from conftest import seq_cls_pair
from hfkd.trainers.checkpoints import checkpoint_problem, last_complete_checkpoint


def checkpoint(folder, step, weights="model.safetensors"):
    _, student = seq_cls_pair()
    student.save_pretrained(folder)
    if weights != "model.safetensors":
        os.makedirs(os.path.dirname(os.path.join(folder, weights)), exist_ok=True)
        os.replace(os.path.join(folder, "model.safetensors"), os.path.join(folder, weights))
        student.save_pretrained(folder)
    torch.save({"state": {}}, os.path.join(folder, "optimizer.pt"))
    with open(os.path.join(folder, "trainer_state.json"), "w") as handle:
        json.dump({"global_step": step}, handle)
    return str(folder)


def truncate(path, keep):
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(keep(size))


@pytest.mark.parametrize("weights", ["model.safetensors", "adapter_model.safetensors", "peer1/model.safetensors"])
@pytest.mark.parametrize("keep", [lambda n: n - 1, lambda n: n // 2, lambda n: 4], ids=["last-byte", "half", "header"])
def test_a_truncated_weights_file_makes_the_checkpoint_incomplete(tmp_path, weights, keep):
    previous = checkpoint(tmp_path / "checkpoint-1", 1)
    folder = checkpoint(tmp_path / "checkpoint-2", 2, weights)
    assert checkpoint_problem(folder) is None
    truncate(os.path.join(folder, weights), keep)
    assert f"{weights} is truncated" in checkpoint_problem(folder)
    assert last_complete_checkpoint(str(tmp_path)) == previous


def test_a_truncated_optimizer_state_makes_the_checkpoint_incomplete(tmp_path):
    folder = checkpoint(tmp_path / "checkpoint-2", 2)
    truncate(os.path.join(folder, "optimizer.pt"), lambda n: n - 10)
    assert "optimizer.pt is truncated" in checkpoint_problem(folder)
