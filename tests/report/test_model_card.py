"""Tests for hfkd.report.model_card: Hub-readable front matter and a body with settings and the DM table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from hfkd.report.model_card import build_model_card, write_model_card

SETTINGS = {
    "kd_loss": "kl",
    "alpha_kd": 0.5,
    "alpha_ce": 0.5,
    "alpha_hidden": 1.0,
    "temperature": 2.0,
    "layer_mapping": [(0, 0), (1, 2), (2, 4)],
    "student_init": "teacher layers [0, 2, 4]",
}


def _model(name: str, params: int, score: float, dm: float | None) -> dict:
    return {
        "name": name,
        "params": params,
        "params_no_embeddings": params // 2,
        "size_bytes": params * 4,
        "score": score,
        "metrics": {"accuracy": score},
        "latency_ms": {"batch_1": {"p50": 10.0 * params / 1e8, "p90": 12.0}},
        "speedup": 1.0,
        "distillation_metric": dm,
    }


REPORT = {
    "alpha": 0.5,
    "metric_name": "accuracy",
    "teacher": _model("bert-base-uncased", 109_000_000, 0.932, None),
    "students": [_model("bert-3l", 45_000_000, 0.901, 0.2231)],
    "threads": 2,
    "device": "cpu (AMD EPYC)",
}


def _card(**overrides) -> str:
    kwargs = {
        "model_name": "bert-3l-sst2",
        "teacher_name": "textattack/bert-base-uncased-SST-2",
        "dataset_names": ["glue", "sst2-augmented"],
        "metrics": {"eval_accuracy": 0.901, "eval_f1": 0.9, "eval_loss": 0.3, "eval_runtime": 1.2},
        "task": "sequence_classification",
        "distillation_settings": SETTINGS,
        "report": REPORT,
        "license": "apache-2.0",
    }
    return build_model_card(**{**kwargs, **overrides})


def _front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    meta, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(meta), body


def test_front_matter_has_hub_metadata() -> None:
    meta, _ = _front_matter(_card())
    assert meta["base_model"] == "textattack/bert-base-uncased-SST-2"
    assert meta["datasets"] == ["glue", "sst2-augmented"]
    assert meta["metrics"] == ["accuracy", "f1"]  # eval_ prefix and bookkeeping dropped
    assert meta["tags"][:2] == ["hfkd", "distillation"]
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "text-classification"
    (entry,) = meta["model-index"]
    assert entry["name"] == "bert-3l-sst2"
    results = entry["results"]
    assert {r["task"]["type"] for r in results} == {"text-classification"}
    assert {r["dataset"]["name"] for r in results} == {"glue"}
    values = {m["type"]: m["value"] for r in results for m in r["metrics"]}
    assert values == {"accuracy": 0.901, "f1": 0.9}


def test_huggingface_hub_parses_the_card() -> None:
    card = ModelCard(_card())
    assert card.data.base_model == "textattack/bert-base-uncased-SST-2"
    assert {(r.metric_type, r.metric_value) for r in card.data.eval_results} == {
        ("accuracy", 0.901),
        ("f1", 0.9),
    }


def test_body_has_settings_report_and_usage() -> None:
    _, body = _front_matter(_card())
    assert "distilled from [textattack/bert-base-uncased-SST-2]" in body
    assert "## Distillation settings" in body
    for row in (
        "| kd_loss | kl |",
        "| temperature | 2 |",
        "| alpha_hidden | 1 |",
        "| layer_mapping | [[0, 0], [1, 2], [2, 4]] |",
        "| student_init | teacher layers [0, 2, 4] |",
    ):
        assert row in body
    assert "DM (α=0.5)" in body and "0.2231" in body
    assert "**bert-base-uncased** (teacher)" in body
    assert 'AutoModelForSequenceClassification.from_pretrained("bert-3l-sst2")' in body


def test_without_report_and_other_task() -> None:
    text = _card(report=None, task="causal_lm", license=None, teacher_name="/local/teacher")
    meta, body = _front_matter(text)
    assert "license" not in meta
    assert meta["pipeline_tag"] == "text-generation"
    assert "DM (" not in body and "`/local/teacher`" in body
    assert "AutoModelForCausalLM.from_pretrained" in body


def test_needs_a_dataset() -> None:
    with pytest.raises(ValueError, match="dataset"):
        _card(dataset_names=[])


def test_write_model_card_is_atomic(tmp_path: Path) -> None:
    text = _card()
    path = write_model_card(tmp_path / "out", text)
    assert path == tmp_path / "out" / "README.md"
    assert path.read_text(encoding="utf-8") == text
    write_model_card(tmp_path / "out", text + "more\n")
    assert os.listdir(tmp_path / "out") == ["README.md"]
    assert path.read_text(encoding="utf-8").endswith("more\n")
