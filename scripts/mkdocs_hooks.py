"""mkdocs hooks: fill the generated reference pages (`make docs`).

- `<!-- hfkd-cli-help -->`: each `hfkd <command> --help`, run with the interpreter building the site.
- `<!-- hfkd-config-fields -->`: `DistillationConfig`'s own fields with their `help`, grouped.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = [
    ("Objective", lambda n: n.startswith(("alpha_", "kd_", "jsd_", "relation")) or n in (
        "temperature", "term_weights", "hidden_loss", "attention_loss", "projection_init",
        "projection_learning_rate", "nonfinite_loss", "max_skipped_updates")),
    ("Layer maps", lambda n: "layer_mapping" in n or n == "include_embeddings"),
    ("Teacher cache", lambda n: n.startswith("teacher_cache")),
    ("Teacher", lambda n: n.startswith("teacher_")),
    ("Schedules, stages and presets", lambda n: n.endswith(("_schedule", "_end")) or n in ("stages", "preset")),
    ("On-policy LM distillation", lambda n: n in ("lmbda", "seq_kd", "max_new_tokens") or n.startswith("generation_")),
    ("Report", lambda n: n.startswith("report_")),
    ("PEFT", lambda n: True),
]
_cache: dict[str, str] = {}


def _help(command: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "hfkd.app.cli", *([command] if command else []), "--help"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"hfkd {command} --help failed: {done.stderr[-2000:]}")
    return done.stdout.replace("usage: cli.py", f"usage: hfkd {command}".rstrip())


def _cli_page() -> str:
    from hfkd.app.cli import COMMANDS

    commands = ["", *COMMANDS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        texts = list(pool.map(_help, commands))
    parts = []
    for command, text in zip(commands, texts):
        parts.append(f"## `{('hfkd ' + command).strip()}`")
        parts.append(f"```text\n{text.rstrip()}\n```")
    return "\n\n".join(parts)


def _config_page() -> str:
    from transformers import TrainingArguments

    from hfkd.config import DistillationConfig

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    own = [f for f in dataclasses.fields(DistillationConfig) if f.name not in inherited]
    grouped: dict[str, list] = {title: [] for title, _ in GROUPS}
    for f in own:
        title = next(t for t, match in GROUPS if match(f.name))
        grouped[title].append(f)
    out = []
    for title, fields in grouped.items():
        if not fields:
            continue
        out.append(f"### {title}\n\n| field | default | meaning |\n|---|---|---|")
        for f in fields:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
            text = " ".join(str(f.metadata.get("help", "")).split()).replace("|", "\\|")
            out.append(f"| `{f.name}` | `{default!r}` | {text} |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- hfkd-cli-help -->" in markdown:
        _cache.setdefault("cli", _cli_page())
        markdown = markdown.replace("<!-- hfkd-cli-help -->", _cache["cli"])
    if "<!-- hfkd-config-fields -->" in markdown:
        _cache.setdefault("config", _config_page())
        markdown = markdown.replace("<!-- hfkd-config-fields -->", _cache["config"])
    return markdown
