"""SIGKILL a subprocess at a chosen step of an `hfkd.io.staged` write, and check what it left.

`run_killed(code, kill_at)` runs `code` in a fresh interpreter whose `os.replace` is wrapped: the
write's steps are counted per commit, and the process kills itself with SIGKILL before step
`"N:k"` (the k-th `os.replace` of the N-th commit; step 1 renames staging to commit) or, with
`"N:aside"`, right after the N-th commit moved an existing folder aside (between the two renames).
Before the kill, the complete new set (the staging folder at step 1) is recorded, so the test can
check that the folder afterwards holds the previous set or exactly that new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

PRELUDE = r'''
import hashlib, json, os, signal, sys
sys.path.insert(0, os.environ["HFKD_TESTS"])
_real, _commits, _steps = os.replace, 0, 0
_n, _k = os.environ["HFKD_KILL_AT"].split(":")
def _replace(src, dst, *args, **kwargs):
    global _commits, _steps
    src_s, dst_s = os.fspath(src), os.fspath(dst)
    if os.path.basename(src_s).startswith(".hfkd-staging-"):
        _commits, _steps = _commits + 1, 0
        if _commits == int(_n):
            from killpoint import snapshot
            with open(os.environ["HFKD_SNAPSHOT"], "w") as f:
                json.dump(snapshot(os.path.join(src_s, os.listdir(src_s)[0])), f)
    if ".hfkd-commit-" in src_s + dst_s:
        _steps += 1
        if _commits == int(_n) and _k != "aside" and _steps == int(_k):
            os.kill(os.getpid(), signal.SIGKILL)
    _real(src, dst, *args, **kwargs)
    if _commits == int(_n) and _k == "aside" and "/.replaced/" in dst_s:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = _replace
'''

QUIET = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
         "TOKENIZERS_PARALLELISM": "false"}


def snapshot(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_killed(code: str, kill_at: str, tmp_path: Path, timeout: float = 120) -> dict[str, str]:
    """Run `code` killed at `kill_at`; returns the snapshot of the new set it was committing."""
    record = tmp_path / f"new-set-{kill_at.replace(':', '-')}.json"
    env = {**os.environ, **QUIET, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "HFKD_KILL_AT": kill_at, "HFKD_SNAPSHOT": str(record), "HFKD_TESTS": str(REPO_ROOT / "tests")}
    done = subprocess.run([sys.executable, "-c", PRELUDE + code], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)
    assert done.returncode == -signal.SIGKILL, f"not killed at {kill_at} (rc {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(record.read_text())


def assert_old_or_new(folder: str | os.PathLike, old: dict[str, str], new: dict[str, str]) -> str:
    """The entries the write replaces hold exactly the old set or exactly the new one; returns which."""
    entries = {path.split(os.sep)[0] for path in new}
    now = {p: h for p, h in snapshot(folder).items() if p.split(os.sep)[0] in entries}
    old = {p: h for p, h in old.items() if p.split(os.sep)[0] in entries}
    assert not [n for n in os.listdir(folder) if n.startswith(".hfkd-")], "a leftover was not recovered"
    assert now in (old, new), f"a mix of the old and the new set: {sorted(set(now.items()) ^ set(new.items()))[:4]}"
    return "new" if now == new else "old"
