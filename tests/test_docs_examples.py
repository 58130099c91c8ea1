"""Every ```python and ```bash block in README.md and docs/*.md runs, so the docs cannot drift from the code.

Each block runs in a fresh temporary folder laid out like a checkout: cwd is tmp/repo and
tmp/shared links to the real shared folder, so `../shared/data/...` resolves as in the repository.
A block whose first line is `# doc: no-run` is only shown (a fragment, or a long run such as
`make demo`); `# doc: slow` runs it under `pytest -m slow` only. In shell blocks `hfkd` runs as
`python -m hfkd.app.cli` with this interpreter, so no activated venv is needed.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, SHARED_DIR
from hfkd.objective.terms import TERMS, unregister_term

FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)
RUNNABLE = {"python": "python", "bash": "shell", "sh": "shell", "console": "shell"}
DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def doc_blocks():
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            kind = RUNNABLE.get(match.group(1))
            if kind is None:
                continue
            code = match.group(2)
            line = text.count("\n", 0, match.start()) + 1
            first = code.lstrip().splitlines()[0].strip() if code.strip() else ""
            name = f"{path.relative_to(REPO_ROOT)}:{line}"
            marks = []
            if first.startswith("# doc: no-run"):
                marks.append(pytest.mark.skip(reason="marked `# doc: no-run` (a fragment or a long run)"))
            elif first.startswith("# doc: slow"):
                marks.append(pytest.mark.slow)
            yield pytest.param(kind, code, name, id=name, marks=marks)


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """tmp/repo as cwd, tmp/shared -> the real shared folder."""
    repo = tmp_path / "repo"
    repo.mkdir()
    if SHARED_DIR.is_dir():
        (tmp_path / "shared").symlink_to(SHARED_DIR.resolve(), target_is_directory=True)
    monkeypatch.chdir(repo)
    return repo


def test_every_doc_file_is_collected():
    guides = {p.name for p in DOC_FILES}
    assert "README.md" in guides and len(guides) > 10


@pytest.mark.parametrize("kind,code,name", list(doc_blocks()))
def test_doc_example_runs(kind, code, name, checkout):
    if "../shared" in code and not (checkout.parent / "shared" / "data").is_dir():
        pytest.skip(f"{name} reads ../shared/data, which is absent here ({SHARED_DIR})")
    if kind == "shell":
        run_shell(code, name, checkout)
        return
    known_terms = set(TERMS)
    torch.manual_seed(0)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, name, "exec"), {"__name__": "__main__"})
    finally:
        for term in set(TERMS) - known_terms:
            unregister_term(term)
    assert_sane(printed.getvalue(), name)


def run_shell(code: str, name: str, cwd: Path) -> None:
    script = re.sub(r"(?m)^(\s*)hfkd ", rf"\1{sys.executable} -m hfkd.app.cli ", code)
    script = re.sub(r"(?m)^(\s*)python ", rf"\1{sys.executable} ", script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert_sane(done.stdout, name)


def assert_sane(output: str, name: str) -> None:
    """What an example prints holds no NaN/inf, and accuracies are in [0, 1]."""
    assert not re.search(r"\b(nan|inf)\b", output), f"{name} printed a non-finite value:\n{output[-2000:]}"
    for value in re.findall(r"accuracy'?\"?:\s*'?([-\d.e]+)", output):
        assert 0.0 <= float(value) <= 1.0 and math.isfinite(float(value)), f"{name}: accuracy {value}"
