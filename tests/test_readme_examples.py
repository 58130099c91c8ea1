"""README examples run as written (on tiny models), so the README cannot drift from the code."""

from __future__ import annotations

import contextlib
import io
import re

from conftest import REPO_ROOT
from hfkd.objective.terms import TERMS, unregister_term


def readme_block(heading: str) -> str:
    """The first ```python block after `heading` in docs/own-loss-term.md."""
    text = (REPO_ROOT / "docs" / "own-loss-term.md").read_text(encoding="utf-8")
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_own_loss_term_example_trains_and_logs_the_term(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(readme_block("# Writing your own loss term"), "docs/own-loss-term.md", "exec"), {"__name__": "readme"})
    finally:
        if "margin" in TERMS:
            unregister_term("margin")
    values = eval(printed.getvalue().strip().splitlines()[-1])  # the example prints the logged margin_loss values
    assert len(values) == 4 and all(v >= 0 for v in values) and any(v > 0 for v in values)
