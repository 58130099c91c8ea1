"""Under DDP every process reaches the same verdict on an output_dir a kill left mid-commit (no hang)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hfkd.io import COMMIT_PREFIX

SCRIPT = Path(__file__).with_name("output_dir_script.py")


@pytest.mark.slow
def test_all_processes_refuse_a_run_whose_final_save_was_interrupted(tmp_path):
    out, report = tmp_path / "out", tmp_path / "report"
    out.mkdir(), report.mkdir()
    # A final save that a kill stopped after its commit began (hfkd.io's layout, by a process now gone):
    # the model is still in the commit folder, so only the recovery by the saving process reveals it.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    committed = out / f"{COMMIT_PREFIX}{int(dead.stdout)}-0000beef" / "out"
    committed.mkdir(parents=True)
    (committed / "model.safetensors").write_bytes(b"weights")
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    command = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), str(out), str(report)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(o["world_size"] == 2 for o in outcomes)
    assert [o["outcome"] for o in outcomes] == [f"refused: output_dir {out} already holds a run (model.safetensors)"] * 2
