"""The teacher placed for DeepSpeed ZeRO-2/3 and FSDP1/2 in two real CPU processes (gloo).

Each process must compute the unsharded teacher's logits while holding only its share of the
weights (ZeRO-3, FSDP) or a full replica (ZeRO-2 runs the teacher at stage 0). Under FSDP2 the
width projections, a student submodule called outside the student's forward, must get exactly the
gradient that data parallelism gives. Slow (about 25 s each): run with `pytest -m slow`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("placement_script.py")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["zero3", "zero2", "fsdp1", "fsdp2"])
def test_teacher_placement_in_two_processes(tmp_path, mode):
    if mode.startswith("zero"):
        pytest.importorskip("deepspeed", reason="deepspeed not installed: pip install -e '.[deepspeed]'")
    port = str(29561 + ["zero3", "zero2", "fsdp1", "fsdp2"].index(mode))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HFKD_TEST_PORT": port}
    result = subprocess.run([sys.executable, str(SCRIPT), mode, str(tmp_path)], capture_output=True, text=True,
                            timeout=300, env=env)
    written = sorted(path.name for path in tmp_path.glob("rank*.json"))  # tells a crash at exit from one mid-work
    assert result.returncode == 0, f"records written: {written}\n{result.stderr[-3000:]}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for record in ranks:
        assert record["max_logit_error"] < 1e-5
        assert not record["trainable"] and not record["training"] and record["plugin_untouched"]
        if mode == "zero2":
            assert record["type"] == "DeepSpeedEngine" and not record["sharded"]
            assert record["local_numel"] == record["full_numel"]
        else:
            assert record["sharded"] and record["local_numel"] <= record["full_numel"] // 2 + 64
        if mode == "fsdp2":
            assert record["projection_grad_error"] < 1e-6
