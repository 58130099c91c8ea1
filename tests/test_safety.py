"""Safe loading: no pickle loads without weights_only, no unsafe YAML, remote code off by default."""

import ast

from conftest import REPO_ROOT
from hfkd.app.arguments import ModelArguments

SCANNED = ("hfkd", "recipes", "scripts")
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}


def _sources():
    return {path: path.read_text() for folder in SCANNED for path in (REPO_ROOT / folder).rglob("*.py")}


def _dotted(node) -> str:
    """`a.b.c` for a Name/Attribute chain, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        prefix = _dotted(node.value)
        return f"{prefix}.{node.attr}" if prefix else ""
    return ""


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def load_calls(text: str):
    """Every deserialising call in a Python source, as (line, call name, safe?).

    torch.load is safe only with weights_only=True; yaml.load only with a SafeLoader; yaml.safe_load
    is safe; yaml.unsafe_load / full_load and pickle.load(s) never are. Names imported with
    `from torch import load` or `import yaml as y` are followed.
    """
    tree = ast.parse(text)
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module:
            aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        name = ".".join(filter(None, (aliases.get(head, head), rest)))
        keywords = {k.arg: k.value for k in node.keywords}
        if name == "torch.load":
            found.append((node.lineno, name, _is_true(keywords.get("weights_only"))))
        elif name == "yaml.load":
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            found.append((node.lineno, name, _dotted(loader).rpartition(".")[2] in SAFE_YAML_LOADERS))
        elif name == "yaml.safe_load":
            found.append((node.lineno, name, True))
        elif name in ("yaml.unsafe_load", "yaml.full_load", "pickle.load", "pickle.loads"):
            found.append((node.lineno, name, False))
    return found


def test_load_scanner_flags_unsafe_calls_and_passes_safe_ones():
    """The scanner below is not vacuous: it finds each unsafe form (also behind import aliases and
    nested parentheses) and accepts the safe ones."""
    planted = """
import torch, yaml, pickle
import yaml as y
from torch import load as tload
torch.load(path)  # unsafe
torch.load(open(p, "rb"), map_location=torch.device("cpu"))  # unsafe
torch.load(path, weights_only=False)  # unsafe
tload(path)  # unsafe
yaml.load(stream)  # unsafe
y.load(stream, Loader=y.Loader)  # unsafe
yaml.unsafe_load(stream)  # unsafe
yaml.full_load(stream)  # unsafe
pickle.loads(data)  # unsafe
torch.load(open(p, "rb"), map_location=torch.device("cpu"), weights_only=True)  # safe
yaml.load(stream, Loader=yaml.SafeLoader)  # safe
y.load(stream, y.CSafeLoader)  # safe
yaml.safe_load(stream)  # safe
"""
    expected = {i: line.endswith("# safe") for i, line in enumerate(planted.splitlines(), 1) if line.endswith("safe")}
    assert {line: safe for line, _, safe in load_calls(planted)} == expected
    assert len(expected) == 13


def test_no_unsafe_torch_load_or_yaml_load():
    """hfkd, recipes/ and scripts/ hold no unsafe deserialising call, and the scan did see the files
    and the calls it is about (the YAML config loader in hfkd/app/arguments.py)."""
    sources = _sources()
    assert len(sources) >= 40 and any(p.parent.name == "recipes" for p in sources) and any(
        p.parent.name == "scripts" for p in sources)
    seen = {}
    for path, text in sources.items():
        for line, name, safe in load_calls(text):
            assert safe, f"{path.relative_to(REPO_ROOT)}:{line}: unsafe {name}"
            seen[name] = seen.get(name, 0) + 1
    assert seen.get("yaml.safe_load", 0) >= 1, seen


def test_remote_code_is_off_unless_asked():
    assert ModelArguments().trust_remote_code is False
    sources = _sources()
    assert len(sources) >= 40
    for path, text in sources.items():
        assert "trust_remote_code=True" not in text, path
