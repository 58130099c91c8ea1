"""Long-run test: thousands of steps with frequent checkpoints and rotation, and memory that stays
flat while they run (slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("long_run_script.py")
MiB = 1024  # the /proc figures are in KiB
GROWTH_LIMIT = 64 * MiB


@pytest.mark.slow
def test_thousands_of_steps_flat_memory_and_safe_rotation(tmp_path):
    """1,000 steps, then a resume to 2,000, checkpointing every 50 steps with 2 kept: rotation keeps
    exactly the newest two, and within each run the process's resident memory (sampled every 100
    steps, and its peak where it can be reset) grows by less than 64 MiB after the first 100 steps.

    Measured in a fresh process: this process's lifetime peak (ru_maxrss) would already hold what
    earlier tests used and could hide any growth. A leak of 75 KiB a step or more (a loss tensor kept
    with its graph, one checkpoint's bytes kept every 50 steps) exceeds the limit over 900 steps."""
    out = tmp_path / "memory.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, (
        str(SCRIPT.parents[2]), os.environ.get("PYTHONPATH"))))}
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), str(out)], capture_output=True,
                            text=True, timeout=1200, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    first, second = report["runs"]
    assert first["checkpoints"] == ["checkpoint-1000", "checkpoint-950"]
    assert second["checkpoints"] == ["checkpoint-1950", "checkpoint-2000"]
    assert report["global_step"] == 2000
    for run, (start, end) in zip((first, second), ((100, 1000), (1100, 2000))):
        rss = {int(step): kib for step, kib in run["rss"].items()}
        assert sorted(rss) == list(range(start, end + 1, 100))
        growth = max(rss.values()) - rss[start]
        assert growth < GROWTH_LIMIT, f"steps {start}-{end}: resident memory grew {growth / MiB:.1f} MiB: {rss}"
        if run["hwm"] is not None:  # the peak since step `start`, between the samples too
            peak_growth = run["hwm"] - rss[start]
            assert peak_growth < GROWTH_LIMIT, f"steps {start}-{end}: peak grew {peak_growth / MiB:.1f} MiB"
