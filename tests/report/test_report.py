"""Tests for hfkd.report: the distillation metric, measurements, the Markdown tables and the written report."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
)

from conftest import SHARED_DIR
import hfkd.report
from hfkd.report.io import write_report
from hfkd.report.measure import (
    build_report,
    count_parameters,
    evaluate_model,
    measure_latencies,
    measure_latency,
    safetensors_size,
)
from hfkd.report.metric import distillation_metric
from hfkd.report.render import markdown_table, report_to_markdown

REFERENCE = SHARED_DIR / "reference"
CASES_CSV = REFERENCE / "distillation_metric_cases.csv"


def _reference_cases() -> list:
    if not CASES_CSV.is_file():
        return [pytest.param(None, None, marks=pytest.mark.skip(
            reason=f"reference table {CASES_CSV} absent: set HFKD_SHARED_DIR to the shared folder"))]
    with open(CASES_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [
        pytest.param(row, alpha, id=f"{row['case']}-a{alpha}")
        for row in rows
        for alpha in ("0.25", "0.5", "0.75")
    ]


# ------------------------------------------------------------------------------ distillation metric


@pytest.mark.parametrize("row,alpha", _reference_cases())
def test_distillation_metric_reproduces_reference(row: dict, alpha: str) -> None:
    dm = distillation_metric(
        float(row["student_size"]),
        float(row["teacher_size"]),
        float(row["student_score"]),
        float(row["teacher_score"]),
        alpha=float(alpha),
    )
    assert dm == pytest.approx(float(row[f"dm_alpha_{alpha}"]), abs=1e-4)


@pytest.mark.parametrize(
    "args,expected",
    [
        ((50, 100, 0.9, 0.9, 0.5), 0.25),  # half the size, same score
        ((100, 100, 0.9, 0.9, 0.5), 0.5),  # a copy of the teacher
        ((10, 100, 1.0, 0.8, 0.5), -0.075),  # student beats teacher: negative, not clamped
        ((0, 100, 1.0, 0.5, 0.25), -0.75),
        ((30, 100, 0.6, 0.8, 0.0), 0.25),  # alpha 0: score only
        ((30, 100, 0.6, 0.8, 1.0), 0.3),  # alpha 1: size only
    ],
)
def test_distillation_metric_hand_cases(args: tuple, expected: float) -> None:
    assert distillation_metric(*args) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
        ({"teacher_size": 0}, "teacher_size"),
        ({"teacher_size": -5}, "teacher_size"),
        ({"teacher_score": 0.0}, "teacher_score"),
        ({"teacher_score": -0.2}, "teacher_score"),
        ({"student_size": -1}, "student_size"),
        ({"student_size": math.nan}, "student_size"),
        ({"student_score": math.nan}, "student_score"),
        ({"teacher_score": math.inf}, "teacher_score"),
    ],
)
def test_distillation_metric_rejects_bad_inputs(kwargs: dict, match: str) -> None:
    args = {
        "student_size": 10,
        "teacher_size": 100,
        "student_score": 0.8,
        "teacher_score": 0.9,
        "alpha": 0.5,
    }
    with pytest.raises(ValueError, match=match):
        distillation_metric(**{**args, **kwargs})


# ------------------------------------------------------------------------------ fixtures


def _config(layers: int, **kwargs) -> BertConfig:
    return BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        **kwargs,
    )


def _classifier(layers: int, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(_config(layers)).eval()


def pad_collator(features: list[dict]) -> dict[str, torch.Tensor]:
    """Pads input_ids/attention_mask to the longest example (what DataCollatorWithPadding does)."""
    longest = max(len(f["input_ids"]) for f in features)
    batch = {
        "input_ids": torch.tensor(
            [f["input_ids"] + [0] * (longest - len(f["input_ids"])) for f in features]
        ),
        "attention_mask": torch.tensor(
            [f["attention_mask"] + [0] * (longest - len(f["attention_mask"])) for f in features]
        ),
    }
    if "labels" in features[0]:
        labels = [f["labels"] for f in features]
        if isinstance(labels[0], list):
            labels = [lab + [-100] * (longest - len(lab)) for lab in labels]
        batch["labels"] = torch.tensor(labels)
    return batch


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    return {"accuracy": float((logits.argmax(-1) == labels).mean()), "n": float(len(labels))}


@pytest.fixture(scope="module")
def eval_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    lengths = rng.integers(6, 40, size=48)
    return Dataset.from_dict(
        {
            "input_ids": [rng.integers(1, 100, size=n).tolist() for n in lengths],
            "attention_mask": [[1] * n for n in lengths],
            "labels": rng.integers(0, 2, size=48).tolist(),
            "idx": list(range(48)),  # a column the model cannot take: must be filtered out
        }
    )


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, eval_dataset) -> tuple[dict, Path, dict]:
    """One real report: teacher object, a student object and a student saved as a folder."""
    saved = tmp_path_factory.mktemp("student3")
    _classifier(3, seed=2).save_pretrained(saved)
    models = {"teacher": _classifier(6, seed=0), "student-2l": _classifier(2, seed=1)}
    report = build_report(
        models["teacher"],
        {"student-2l": models["student-2l"], "student-3l": str(saved)},
        eval_dataset,
        pad_collator,
        accuracy,
        metric_name="accuracy",
        alpha=0.5,
        teacher_name="teacher-6l",
        batch_sizes=(1, 8),
        warmup=1,
        repeats=5,
        eval_batch_size=16,
    )
    out = tmp_path_factory.mktemp("report")
    paths = write_report(report, out)
    return report, out, paths


# ------------------------------------------------------------------------------ measurements


def test_count_parameters_excludes_embeddings() -> None:
    model = _classifier(2)
    total, no_emb = count_parameters(model)
    emb = model.bert.embeddings
    embedding_params = sum(
        m.weight.numel()
        for m in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings)
    )
    assert total == sum(p.numel() for p in model.parameters())
    assert no_emb == total - embedding_params
    assert isinstance(total, int) and isinstance(no_emb, int)


def test_count_parameters_counts_tied_lm_head_once() -> None:
    model = BertForMaskedLM(_config(2, tie_word_embeddings=True))
    word = model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight is word  # really tied
    unique = {p.data_ptr(): p.numel() for _, p in model.named_parameters(remove_duplicate=False)}
    total, no_emb = count_parameters(model)
    assert total == sum(unique.values())
    emb = model.bert.embeddings
    embedding_params = word.numel() + emb.position_embeddings.weight.numel() + (
        emb.token_type_embeddings.weight.numel()
    )
    assert no_emb == total - embedding_params


def test_safetensors_size_of_model_and_folder(tmp_path: Path) -> None:
    model = _classifier(2)
    model.save_pretrained(tmp_path / "saved")
    from_folder = safetensors_size(tmp_path / "saved")
    assert from_folder == safetensors_size(model)
    assert from_folder > 4 * count_parameters(model)[0] * 0.99  # float32 weights + header
    with pytest.raises(FileNotFoundError):
        safetensors_size(tmp_path)


def test_evaluate_model_matches_manual_loop(eval_dataset: Dataset) -> None:
    model = _classifier(2).train()  # must be switched to eval (no dropout) and restored
    metrics = evaluate_model(model, eval_dataset, pad_collator, accuracy, batch_size=7)
    assert model.training
    model.eval()
    with torch.no_grad():
        hits = [
            int(
                model(
                    input_ids=torch.tensor([ex["input_ids"]]),
                    attention_mask=torch.tensor([ex["attention_mask"]]),
                ).logits.argmax(-1)
                == ex["labels"]
            )
            for ex in eval_dataset
        ]
    # Argmaxes: exact, as the two logits differ by >= 1.5e-4 here, far above what padding changes in float32.
    assert metrics == {"accuracy": pytest.approx(np.mean(hits)), "n": 48.0}


def test_evaluate_model_pads_token_logits_across_batches() -> None:
    torch.manual_seed(0)
    model = BertForTokenClassification(_config(1)).eval()
    lengths = [3, 9, 5, 12, 4]
    data = Dataset.from_dict(
        {
            "input_ids": [list(range(1, n + 1)) for n in lengths],
            "attention_mask": [[1] * n for n in lengths],
            "labels": [[i % 2 for i in range(n)] for n in lengths],
        }
    )
    seen = {}

    def token_accuracy(eval_pred) -> dict[str, float]:
        seen["shapes"] = (eval_pred.predictions.shape, eval_pred.label_ids.shape)
        mask = eval_pred.label_ids != -100
        hits = eval_pred.predictions.argmax(-1)[mask] == eval_pred.label_ids[mask]
        return {"accuracy": float(hits.mean()), "tokens": float(mask.sum())}

    metrics = evaluate_model(model, data, pad_collator, token_accuracy, batch_size=2)
    assert seen["shapes"] == ((5, 12, 2), (5, 12))
    assert metrics["tokens"] == sum(lengths)


def test_measure_latency_shape(eval_dataset: Dataset) -> None:
    """Per batch size: p50 <= p90 timings and the mean padded length of the batches timed, which are
    `repeats` batches of distinct rows in the seed-0 shuffled order, each padded to its longest row."""
    import random

    result = measure_latency(
        _classifier(2), eval_dataset, pad_collator, batch_sizes=(1, 4), warmup=1, repeats=3
    )
    order = list(range(len(eval_dataset)))
    random.Random(0).shuffle(order)
    lengths = [len(eval_dataset[i]["input_ids"]) for i in order]
    for size in (1, 4):
        key = f"batch_{size}"
        stats = result[key]
        assert set(stats) == {"p50", "p90", "mean"}
        assert 0 < stats["p50"] <= stats["p90"]
        padded = [max(lengths[start:start + size]) for start in range(0, 3 * size, size)]
        assert result["seq_len"][key] == pytest.approx(sum(padded) / 3)
    assert result["throughput_batch_size"] == 4
    assert result["throughput_samples_per_s"] == pytest.approx(4000 / result["batch_4"]["mean"])
    assert result["threads"] == torch.get_num_threads()


def test_measure_latency_from_inputs_callable() -> None:
    def make(batch_size: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.ones(batch_size, 16, dtype=torch.long)}

    result = measure_latency(_classifier(1), make, batch_sizes=(2,), warmup=0, repeats=2)
    assert result["seq_len"] == {"batch_2": 16.0}
    assert result["batch_2"]["p50"] > 0


@pytest.mark.parametrize(
    "kwargs", [{"repeats": 0}, {"best_of": 0}, {"warmup": -1}, {"batch_sizes": ()}]
)
def test_measure_latency_rejects_bad_settings(kwargs: dict, eval_dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="repeats >= 1"):
        measure_latency(_classifier(1), eval_dataset, pad_collator, **kwargs)


def test_measure_latency_ranks_shallow_student_faster(eval_dataset: Dataset) -> None:
    """Interleaved timing: a 3-layer student beats its 6-layer teacher at batch 1, reliably."""
    results = measure_latencies(
        {"teacher": _classifier(6), "student": _classifier(3)},
        eval_dataset,
        pad_collator,
        batch_sizes=(1,),
        warmup=3,
        repeats=40,
    )
    assert results["student"]["batch_1"]["p50"] < results["teacher"]["batch_1"]["p50"]


# ------------------------------------------------------------------------------ report


MODEL_KEYS = {
    "name": str,
    "params": int,
    "params_no_embeddings": int,
    "size_bytes": int,
    "score": float,
    "metrics": dict,
    "latency_ms": dict,
    "speedup": float,
}


def test_report_json_schema(report_dir) -> None:
    _, out, paths = report_dir
    assert paths["json"] == out / "report.json"
    data = json.loads((out / "report.json").read_text())
    assert isinstance(data["alpha"], float) and data["metric_name"] == "accuracy"
    assert isinstance(data["threads"], int) and isinstance(data["device"], str)
    models = [data["teacher"], *data["students"]]
    assert [m["name"] for m in models] == ["teacher-6l", "student-2l", "student-3l"]
    for model in models:
        for key, kind in MODEL_KEYS.items():
            assert isinstance(model[key], kind), key
        assert "distillation_metric" in model
        assert set(model["latency_ms"]) == {"batch_1", "batch_8"}
        for stats in model["latency_ms"].values():
            assert isinstance(stats["p50"], float) and isinstance(stats["p90"], float)
        assert model["score"] == model["metrics"]["accuracy"]
    assert data["teacher"]["distillation_metric"] is None
    assert data["teacher"]["speedup"] == 1.0
    for student in data["students"]:
        assert isinstance(student["distillation_metric"], float)
        assert set(student["distillation_metric_by_alpha"]) == {"0.25", "0.5", "0.75"}


def test_report_dm_and_speedup_follow_formula(report_dir) -> None:
    report, out, _ = report_dir
    data = json.loads((out / "report.json").read_text())
    teacher = data["teacher"]
    assert teacher["params"] > data["students"][1]["params"] > data["students"][0]["params"]
    for student in data["students"]:
        for alpha, dm in student["distillation_metric_by_alpha"].items():
            expected = float(alpha) * student["params"] / teacher["params"] + (1 - float(alpha)) * (
                1 - student["score"] / teacher["score"]
            )
            assert dm == pytest.approx(expected, abs=1e-12)
        assert student["distillation_metric"] == student["distillation_metric_by_alpha"]["0.5"]
        speedup = teacher["latency_ms"]["batch_1"]["p50"] / student["latency_ms"]["batch_1"]["p50"]
        assert student["speedup"] == pytest.approx(speedup)
    assert data == json.loads(json.dumps(report))  # the file is the report, nothing lost


def test_report_sizes(report_dir) -> None:
    report, _, _ = report_dir
    for model in [report["teacher"], *report["students"]]:
        assert model["size_bytes"] >= 4 * model["params"]
        assert model["params_no_embeddings"] < model["params"]


def test_report_files_written_without_temp_files(report_dir) -> None:
    _, out, paths = report_dir
    assert sorted(os.listdir(out)) == ["report.json", "report.md", "report.png"]
    assert {p.name for p in paths.values()} == {"report.json", "report.md", "report.png"}
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_markdown_teacher_first_then_by_dm(report_dir) -> None:
    report, out, _ = report_dir
    text = (out / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows[0].startswith("| **teacher-6l** (teacher)")
    by_dm = sorted(report["students"], key=lambda s: s["distillation_metric"])
    assert [row.split("|")[1].strip() for row in rows[1:]] == [s["name"] for s in by_dm]
    assert "DM (α=0.5)" in text and f"{report['threads']} threads" in text
    assert report["device"] in text


def _synthetic_report(dms: dict[str, float | None]) -> dict:
    def model(name: str, params: int, dm: float | None) -> dict:
        return {
            "name": name,
            "params": params,
            "params_no_embeddings": params // 2,
            "size_bytes": params * 4,
            "score": 0.9,
            "metrics": {"accuracy": 0.9},
            "latency_ms": {"batch_1": {"p50": 1.0, "p90": 1.2}},
            "speedup": 1.0,
            "distillation_metric": dm,
        }

    return {
        "alpha": 0.5,
        "metric_name": "accuracy",
        "teacher": model("t", 1000, None),
        "students": [model(name, 100, dm) for name, dm in dms.items()],
        "threads": 2,
        "device": "cpu",
    }


def test_markdown_ranks_by_dm_with_missing_last() -> None:
    text = report_to_markdown(_synthetic_report({"c": 0.3, "none": None, "a": -0.1, "b": 0.2}))
    names = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert names[1:] == ["**t** (teacher)", "a", "b", "c", "none"]
    assert "-0.1000" in text and "n/a" in text


def test_write_report_is_atomic_on_failure(tmp_path: Path, monkeypatch) -> None:
    report = _synthetic_report({"s": 0.2})
    write_report(report, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_replace(src, dst) -> None:
        raise OSError("killed mid-write")

    monkeypatch.setattr(os, "replace", failing_replace)
    changed = {**report, "alpha": 0.75}
    with pytest.raises(OSError, match="killed"):
        write_report(changed, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_build_report_rejects_bad_alpha(eval_dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="alpha"):
        build_report(
            _classifier(1), {"s": _classifier(1)}, eval_dataset, pad_collator, accuracy, alpha=2
        )


# ------------------------------------------------------------------------------ tables and package


def test_markdown_table_right_aligns_numeric_columns() -> None:
    table = markdown_table(
        ["model", "params", "score", "DM", "note"],
        [["teacher", "22.7M", "91.20%", "–", "six layers"], ["l3", "17.4M", "+0.12", "1.2e-05", ""]],
    )
    lines = table.splitlines()
    assert lines[0] == "| model | params | score | DM | note |"
    assert lines[1] == "|---|---:|---:|---:|---|"
    assert lines[3] == "| l3 | 17.4M | +0.12 | 1.2e-05 |  |"


def test_markdown_table_escapes_cells_and_takes_any_value() -> None:
    table = markdown_table(["a|b", "n"], [["x|y\nz", 3], [None, 0.5]], align="lr")
    assert table.splitlines() == ["| a\\|b | n |", "|---|---:|", "| x\\|y z | 3 |", "| None | 0.5 |"]


@pytest.mark.parametrize(
    "rows, align, match",
    [([["a"]], None, "2 cells"), ([["a", "b"]], "l", "align"), ([["a", "b"]], "lc", "align")],
)
def test_markdown_table_rejects_bad_shapes(rows: list, align: str | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        markdown_table(["h1", "h2"], rows, align=align)


def test_report_markdown_aligns_numbers_and_escapes_names() -> None:
    report = _synthetic_report({"a|b": 0.1})
    lines = report_to_markdown(report).splitlines()
    assert lines[1] == "|---|" + "---:|" * 8 + "---|"  # numbers right, the format column left
    assert lines[3].startswith("| a\\|b | 0.0001 |")


def test_package_reexports_its_public_names() -> None:
    assert set(hfkd.report.__all__) == {
        "DM_ALPHAS", "atomic_write", "build_report", "count_parameters", "distillation_metric",
        "evaluate_model", "measure_latencies", "measure_latency", "plot_report", "rank_students",
        "report_to_markdown", "safetensors_size", "write_report",
    }
    assert hfkd.report.write_report is write_report and hfkd.report.distillation_metric is distillation_metric
    assert all(callable(getattr(hfkd.report, name)) for name in hfkd.report.__all__ if name != "DM_ALPHAS")


def test_recipe_summary_table_from_output_folders(tmp_path: Path) -> None:
    from hfkd.app.report_cli import summarize

    for name, layers, score in (("teacher", 6, 0.9), ("student", 2, 0.81)):
        _classifier(layers).save_pretrained(tmp_path / name)
        (tmp_path / name / "eval_results.json").write_text(json.dumps({"eval_accuracy": score}))
    summary = summarize(str(tmp_path / "teacher"), {"l2|student": str(tmp_path / "student")})
    lines = summary["markdown"].splitlines()
    assert lines[0] == "| model | params | eval_accuracy | kept of teacher | DM (α=0.5) |"
    assert lines[1] == "|---|---:|---:|---:|---:|"
    dm = summary["models"][1]["distillation_metric"]
    assert lines[2].startswith("| teacher |") and lines[2].endswith("| 90.00% | 100.0% | – |")
    assert lines[3].startswith("| l2\\|student |") and lines[3].endswith(f"| 81.00% | 90.0% | {dm:.4f} |")
