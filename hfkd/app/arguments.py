"""Recipe arguments: model choices, and `--config C.yaml` plus command-line overrides.

Every config key is also a flag: the YAML file only sets the parser's defaults, so
`--learning_rate 1e-4` on the command line wins over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Sequence

import yaml
from transformers import HfArgumentParser

from hfkd.config import option
from hfkd.models import HfkdError
from hfkd.objective.presets import with_preset

@dataclass
class ModelArguments:
    """Which models a recipe loads or builds."""

    model_name_or_path: str | None = option(None, "Model to fine-tune (finetune recipe).")
    teacher_model_name_or_path: list[str] | None = option(
        None,
        "Teacher checkpoint (a fine-tuned model for task distillation), or several (a YAML list, or "
        "paths after one flag) combined per teacher_weights/teacher_combination. A PEFT adapter folder "
        "loads merged into its base model.",
    )
    student_model_name_or_path: str | None = option(
        None,
        "Student checkpoint, used as it is (the student_* shape settings are then ignored, with a warning); "
        "if unset the student is built from the teacher with create_student.",
    )
    student_num_layers: int | None = option(None, "Depth of a student built from the teacher (layers spread evenly).")
    student_layer_indices: list[int] | None = option(
        None,
        "Teacher layers (0-based) copied into the student, in order.",
    )
    student_hidden_size: int | None = option(
        None,
        "Width of a narrower, randomly initialised student (TinyBERT-style).",
    )
    student_intermediate_size: int | None = option(None, "Feed-forward size of a narrower student.")
    student_num_attention_heads: int | None = option(None, "Attention heads of a narrower student.")
    student_init: str | None = option(
        None,
        "How a student built from the teacher starts: copy (teacher layers; depth-only), prune (cut from the "
        "teacher by activation importance, any shape) or random. Default: copy for depth-only, random for a "
        "width change.",
    )
    student_calibration_samples: int = option(
        256, "Training rows (a seeded sample) whose teacher activations rank what student_init=prune keeps."
    )
    use_peft: bool = option(
        False,
        "Distill into a LoRA adapter on the student (lora_* flags) instead of all its weights.",
    )
    lora_r: int = option(8, "LoRA rank (with use_peft).")
    lora_alpha: int = option(16, "LoRA scaling alpha (with use_peft).")
    lora_dropout: float = option(0.0, "Dropout on the LoRA path (with use_peft).")
    lora_target_modules: list[str] | None = option(
        None,
        "Module names LoRA adapts, e.g. query value (default: PEFT's choice for the architecture).",
    )
    ignore_mismatched_sizes: bool = option(
        False,
        "Re-initialise a checkpoint's task head whose size differs (e.g. another label count).",
    )
    overwrite_output_dir: bool = option(
        False,
        "Replace a finished or partial run already in output_dir (otherwise refused).",
    )
    trust_remote_code: bool = option(False, "Allow model code from the checkpoint to run. Off unless you trust it.")
    task: str = option(
        "sequence_classification",
        "sequence_classification, token_classification, masked_lm or causal_lm.",
    )


def parse_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse `[--config C.yaml] [--flag value ...]` into the given dataclasses.

    A `preset` (DistillationConfig) supplies defaults below the file's keys and the flags, so
    every key the user gives wins over it, whatever its value.
    """
    parser = HfArgumentParser(dataclass_types)
    parser.add_argument("--config", default=None, help="YAML file of defaults for any flag below.")
    argv = list(argv) if argv is not None else None
    known, _ = parser.parse_known_args(argv)
    defaults: dict[str, Any] = {}
    if known.config:
        defaults = load_yaml_config(known.config)
        valid = {action.dest for action in parser._actions}
        unknown = sorted(set(defaults) - valid)
        if unknown:
            raise ValueError(f"{known.config}: unknown keys {unknown}; see --help for the accepted keys.")
        parser.set_defaults(**defaults)
        # Defaults satisfy required flags that the file provides.
        for action in parser._actions:
            if action.dest in defaults:
                action.required = False
    namespace, rest = parser.parse_known_args(argv)
    if rest:
        raise ValueError(f"unrecognised arguments {rest}; see --help.")
    preset = getattr(namespace, "preset", None)
    if preset is not None:
        given = set(defaults) | _flags_given(parser, argv)
        for key, value in with_preset(preset, {k: getattr(namespace, k) for k in given if hasattr(namespace, k)}).items():
            setattr(namespace, key, value)
        namespace.preset = None  # applied here; recorded on the config below
    parsed = []
    for dataclass_type in dataclass_types:
        names = [f.name for f in dataclasses.fields(dataclass_type) if f.init]
        instance = dataclass_type(**{name: getattr(namespace, name) for name in names})
        if preset is not None and "preset" in names:
            instance.preset = preset
        parsed.append(instance)
    return tuple(parsed)


def _flags_given(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """Destinations set on the command line: argparse leaves attributes it did not see untouched."""
    unset = object()
    namespace = argparse.Namespace(**{action.dest: unset for action in parser._actions})
    parsed, _ = parser.parse_known_args(argv, namespace=namespace)
    return {dest for dest, value in vars(parsed).items() if value is not unset}


def load_yaml_config(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist.")
    with open(path, encoding="utf-8") as handle:
        content = yaml.safe_load(handle) or {}
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a mapping of flag: value, got {type(content).__name__}.")
    return content


@contextmanager
def one_line_errors(debug: bool) -> Iterator[None]:
    """Every command's refused setup (`HfkdError`, bad values, missing files, a non-finite loss) as one
    line on stderr and exit status 2; `--debug` shows the traceback instead."""
    try:
        yield
    except (HfkdError, ValueError, TypeError, OSError, FloatingPointError) as error:
        if debug:
            raise
        print(f"hfkd: error: {error}".splitlines()[0] + " (rerun with --debug for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
