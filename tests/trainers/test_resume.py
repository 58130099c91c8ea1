"""Kill a recipe with SIGKILL while it trains, resume it with `--resume_from_checkpoint`, compare.

On CPU with a fixed seed the resumed run must equal an uninterrupted one: same step count, the
same student weights and projection heads (dropout, data order, optimizer state and the
temperature schedule all restored).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForSequenceClassification

from conftest import REPO_ROOT, make_text_classification_workspace, needs_example_checkpoint
from hfkd.trainers.checkpoints import checkpoint_problem
from hfkd.objective.projections import PROJECTIONS_NAME

RECIPE = REPO_ROOT / "recipes" / "distill_text_classification.py"
STEPS = 30  # 60 rows / batch 4 x 2 epochs


def recipe_command(workspace, output_dir, *extra):
    return [sys.executable, str(RECIPE), "--teacher_model_name_or_path", str(workspace / "teacher6"),
            "--student_num_layers", "1", "--student_hidden_size", "16", "--student_intermediate_size", "32",
            "--student_num_attention_heads", "2", "--alpha_kd", "0.5", "--alpha_ce", "0.5", "--alpha_hidden", "1",
            "--train_file", str(workspace / "train.csv"), "--validation_file", str(workspace / "dev.csv"),
            "--max_seq_length", "32", "--per_device_train_batch_size", "4", "--num_train_epochs", "2",
            "--learning_rate", "1e-3", "--save_strategy", "steps", "--save_steps", "5", "--save_total_limit", "2",
            "--temperature", "4", "--temperature_schedule", "linear", "--temperature_end", "1",
            "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--output_dir", str(output_dir), *extra]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


@needs_example_checkpoint
def test_sigkilled_recipe_resumes_to_the_uninterrupted_result(tmp_path):
    workspace = make_text_classification_workspace(tmp_path)
    teacher = BertForSequenceClassification.from_pretrained(workspace / "teacher6")
    teacher.double().save_pretrained(workspace / "teacher6")  # the recipe derives a float64 student from it
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = subprocess.run(recipe_command(workspace, full), capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    process = subprocess.Popen(recipe_command(workspace, killed), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoint-10").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # possibly in the middle of writing checkpoint-10
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "model.safetensors").exists()
    assert checkpoint_problem(str(killed / "checkpoint-5")) is None

    resumed = subprocess.run(recipe_command(workspace, killed, "--resume_from_checkpoint", "latest"),
                             capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    states = [json.loads((run / "trainer_state.json").read_text()) for run in (full, killed)]
    assert states[0]["global_step"] == states[1]["global_step"] == STEPS
    for name in ("model.safetensors", f"checkpoint-{STEPS}/{PROJECTIONS_NAME}"):
        expected, actual = load_file(full / name), load_file(killed / name)
        assert expected.keys() == actual.keys()
        for key in expected:
            # The resumed run replays the same operations on bit-exact restored state (equal here); float64
            # keeps it so where a kernel's result depends on where loaded tensors lie in memory, since Adam
            # would turn a float32 ulp of difference there into ~1e-6 over 20 steps.
            assert expected[key].dtype == torch.float64, key
            torch.testing.assert_close(actual[key], expected[key], atol=1e-6, rtol=0, msg=f"{name}: {key}")
