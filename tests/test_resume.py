"""Kill a run with SIGKILL after its first checkpoint, resume it in a new process, compare.

On CPU with a fixed seed the resumed run must equal an uninterrupted one: student weights and
projection heads within atol 1e-6 (dropout, data order and optimizer state all restored).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("resume_script.py")


def run(mode: str, output_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(SCRIPT), mode, str(output_dir)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run("full", full).returncode == 0
    died = run("kill", killed)
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    assert (killed / "checkpoint-2").is_dir() and not (killed / "final").exists()
    resumed = run("resume", killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    state = json.loads((killed / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    expected, actual = load_file(full / "final" / "model.safetensors"), load_file(killed / "final" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-6, rtol=0)
    expected_p = torch.load(full / "final" / "projections.pt", weights_only=True)
    actual_p = torch.load(killed / "final" / "projections.pt", weights_only=True)
    for key in expected_p:
        torch.testing.assert_close(actual_p[key], expected_p[key], atol=1e-6, rtol=0)
