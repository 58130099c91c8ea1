"""Safe loading: no pickle loads without weights_only, no unsafe YAML, remote code off by default."""

import re

from conftest import REPO_ROOT
from hfkd.app.arguments import ModelArguments


def _sources():
    return {path: path.read_text() for path in (REPO_ROOT / "hfkd").rglob("*.py")}


def test_no_unsafe_torch_load_or_yaml_load():
    for path, text in _sources().items():
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        for call in re.findall(r"yaml\.load\([^)]*\)", text):
            assert "SafeLoader" in call, f"{path}: {call}"


def test_remote_code_is_off_unless_asked():
    assert ModelArguments().trust_remote_code is False
    for path, text in _sources().items():
        assert "trust_remote_code=True" not in text, path
