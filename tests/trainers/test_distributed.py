"""Two processes over gloo (DDP on CPU) through `accelerate launch`, as users run recipes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

SCRIPT = Path(__file__).with_name("ddp_script.py")


needs_accelerate = pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "accelerate")), reason="accelerate CLI not installed")


def launch_two_processes(script: Path, output_dir: Path) -> None:
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    command = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(output_dir)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


@needs_accelerate
def test_two_process_distillation(tmp_path):
    launch_two_processes(SCRIPT, tmp_path)

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and "MULTI_CPU" in r["distributed_type"] for r in ranks)
    # 64 examples / (4 per device x 2 processes x 2 accumulation) = 4 optimizer steps
    assert all(r["global_step"] == 4 for r in ranks)
    seen = [{x for batch in r["seen"] for x in batch} for r in ranks]
    train_seen = [set(list(x for batch in r["seen"][:8] for x in batch)) for r in ranks]
    assert train_seen[0].isdisjoint(train_seen[1]) and len(train_seen[0] | train_seen[1]) == 64
    assert seen[0] and seen[1]
    assert ranks[0]["student_wrapped"] and not ranks[0]["teacher_wrapped"] and not ranks[0]["teacher_trainable"]
    # DDP kept replicas in sync: after each all-reduce both ranks hold the same bits (a + b == b + a), so
    # equal updates and equal checksums; a replica that missed a sync differs by a whole step (~1e-3).
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)
    # Only the main process writes: 2 checkpoints (student + projections) and the final student with its card.
    assert sorted(ranks[0]["writes"]) == sorted(["save_pretrained"] * 3 + ["save_file"] * 2 + ["write_model_card"])
    assert ranks[1]["writes"] == []
    assert (tmp_path / "checkpoint-4" / "hfkd_projections.safetensors").is_file()

    student = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert student.config.num_hidden_layers == 2
    with torch.no_grad():
        logits = student(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert logits.shape == (1, 3) and torch.isfinite(logits).all()


@needs_accelerate
def test_two_process_on_policy_with_the_reference_loss(tmp_path):
    """reference_ce runs the DDP-wrapped student twice before one backward (its samples, then the dataset's
    completions): both kinds of step must train, and the replicas stay in sync."""
    launch_two_processes(SCRIPT.with_name("on_policy_ddp_script.py"), tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["student_wrapped"] for r in ranks)
    for rank in ranks:
        assert len(rank["logs"]) == 4
        assert {h["on_policy_fraction"] for h in rank["logs"]} == {0.0, 1.0}  # student-sampled and dataset steps
        assert all(h["ce_loss"] > 0 and h["kd_loss"] > 0 for h in rank["logs"])  # CE on the student's steps too
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)  # all-reduced: the same bits
