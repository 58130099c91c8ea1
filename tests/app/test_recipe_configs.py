"""Every YAML config under recipes/configs parses into the dataclasses its recipe reads, with no unknown key."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import TrainingArguments

from hfkd import DistillationConfig
from hfkd.app.arguments import ModelArguments, load_yaml_config, parse_args
from hfkd.app.task_data import DataArguments

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "recipes" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_recipe_config_parses(path, tmp_path):
    keys = load_yaml_config(str(path))
    # Teacher configs are plain fine-tuning (TrainingArguments); the others are distillation configs.
    config_class = TrainingArguments if "model_name_or_path" in keys else DistillationConfig
    model_args, data_args, args = parse_args((ModelArguments, DataArguments, config_class),
                                             ["--config", str(path), "--output_dir", str(tmp_path), "--use_cpu"])
    assert args.output_dir == str(tmp_path)
    assert data_args.max_seq_length == keys.get("max_seq_length", data_args.max_seq_length)
    if config_class is DistillationConfig:
        assert args.temperature == keys.get("temperature", args.temperature)
