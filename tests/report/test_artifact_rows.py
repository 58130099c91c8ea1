"""Report rows for deployable artifacts: each scored by running that artifact, sized by its files, with
DM by parameters and by bytes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import BertForSequenceClassification, DataCollatorWithPadding

from conftest import SHARED_DIR
onnx = pytest.importorskip("onnx", reason="needs the export extra: pip install -e '.[export]'")
numpy_helper = onnx.numpy_helper
from deploy.artifacts import (  # noqa: F401 (fixtures)
    save, seq_cls_dir, seq_cls_onnx_int8, seq_cls_torch_int8, tiny_bert, tokenizer,
)
from hfkd.deploy.export import CHECK_TEXTS
from hfkd.report.io import read_references, write_report
from hfkd.report.measure import build_report

ALPHA = 0.5


def accuracy(eval_pred) -> dict[str, float]:
    return {"accuracy": float((eval_pred.predictions.argmax(-1) == eval_pred.label_ids).mean())}


def _shift_logits(folder: Path, out: Path, shift: float = 50.0) -> Path:
    """A copy of an ONNX artifact that always answers class 0 (its graph adds `shift` to that logit)."""
    shutil.copytree(folder, out)
    graph = onnx.load(out / "model.onnx")
    last = next(node for node in graph.graph.node if "logits" in node.output)
    last.output[list(last.output).index("logits")] = "logits_unshifted"
    graph.graph.initializer.append(numpy_helper.from_array(np.array([shift, 0, 0], np.float32), "logit_shift"))
    graph.graph.node.append(onnx.helper.make_node("Add", ["logits_unshifted", "logit_shift"], ["logits"]))
    onnx.save(graph, out / "model.onnx")
    return out


@pytest.fixture(scope="module")
def eval_set(seq_cls_dir: Path, tokenizer) -> Dataset:
    """The check sentences labelled with the fp32 student's own predictions: it scores 1.0 on them."""
    student = BertForSequenceClassification.from_pretrained(seq_cls_dir).eval()
    encoded = tokenizer(list(CHECK_TEXTS))
    with torch.no_grad():
        labels = [int(student(**tokenizer(t, return_tensors="pt")).logits.argmax()) for t in CHECK_TEXTS]
    assert 0 < labels.count(0) < len(labels)  # so an artifact that always says 0 scores in between
    return Dataset.from_dict({**encoded, "labels": labels})


@pytest.fixture(scope="module")
def artifact_report(tmp_path_factory, seq_cls_dir, seq_cls_onnx_int8, seq_cls_torch_int8, eval_set, tokenizer):
    root = tmp_path_factory.mktemp("artifact_report")
    teacher = save(tiny_bert(BertForSequenceClassification, seed=3), root / "teacher")
    broken = _shift_logits(seq_cls_onnx_int8, root / "broken_onnx")
    references = [{"case": "A vs B", "student_size": 10.0, "teacher_size": 100.0, "student_score": 90.0,
                   "teacher_score": 92.0, "source": "a paper"}]
    report = build_report(
        str(teacher),
        [("student", str(seq_cls_dir)), ("onnx-int8", str(seq_cls_onnx_int8)), ("torch-int8", str(seq_cls_torch_int8)),
         ("always-zero", str(broken))],
        eval_set, DataCollatorWithPadding(tokenizer), accuracy, alpha=ALPHA, teacher_name="teacher",
        batch_sizes=(1, 8), warmup=1, repeats=3, best_of=1, eval_batch_size=5, references=references,
    )
    paths = write_report(report, root / "report")
    return report, paths, {"teacher": teacher, "broken": broken}


def _rows(report: dict) -> dict[str, dict]:
    return {row["name"]: row for row in [report["teacher"], *report["students"]]}


def test_artifact_rows_name_their_format(artifact_report) -> None:
    rows = _rows(artifact_report[0])
    assert {name: row["format"] for name, row in rows.items()} == {
        "teacher": "pytorch fp32", "student": "pytorch fp32", "onnx-int8": "onnx int8",
        "torch-int8": "pytorch int8", "always-zero": "onnx int8"}
    for row in rows.values():
        assert set(row["latency_ms"]) == {"batch_1", "batch_8"} and set(row["speedup_by_batch"]) == {"batch_1", "batch_8"}


def test_scores_are_measured_on_each_artifact(artifact_report, eval_set, seq_cls_onnx_int8: Path, tokenizer) -> None:
    """An artifact's score is its own: the broken copy of the int8 export scores the share of class-0
    labels, not its source's 1.0; the int8 export's score is what ONNX Runtime, run here directly, gives."""
    import onnxruntime

    rows = _rows(artifact_report[0])
    labels = np.asarray(eval_set["labels"])
    assert rows["student"]["score"] == 1.0
    assert rows["always-zero"]["score"] == pytest.approx(float((labels == 0).mean()))
    assert rows["always-zero"]["score"] < rows["student"]["score"]
    session = onnxruntime.InferenceSession(str(seq_cls_onnx_int8 / "model.onnx"), providers=["CPUExecutionProvider"])
    direct = [int(session.run(["logits"], {k: np.asarray([v], np.int64) for k, v in tokenizer(t).items()})[0].argmax())
              for t in CHECK_TEXTS]
    assert rows["onnx-int8"]["score"] == pytest.approx(float((np.asarray(direct) == labels).mean()))


def test_sizes_and_dm_by_bytes_come_from_the_files(artifact_report, seq_cls_dir, seq_cls_onnx_int8,
                                                   seq_cls_torch_int8) -> None:
    report, _, folders = artifact_report
    rows = _rows(report)
    files = {"teacher": [folders["teacher"] / "model.safetensors"], "student": [seq_cls_dir / "model.safetensors"],
             "onnx-int8": [seq_cls_onnx_int8 / "model.onnx"], "torch-int8": [seq_cls_torch_int8 / "model_int8.pt"],
             "always-zero": [folders["broken"] / "model.onnx"]}
    sizes = {name: sum(os.path.getsize(f) for f in paths) for name, paths in files.items()}
    teacher = rows["teacher"]
    for name, row in rows.items():
        assert row["size_bytes"] == sizes[name]
        if name == "teacher":
            assert row["distillation_metric_bytes"] is None
            continue
        for alpha in ("0.25", "0.5", "0.75"):
            fidelity = (1 - float(alpha)) * (1 - row["score"] / teacher["score"])
            assert row["distillation_metric_bytes_by_alpha"][alpha] == pytest.approx(
                float(alpha) * sizes[name] / sizes["teacher"] + fidelity, abs=1e-12)
            assert row["distillation_metric_by_alpha"][alpha] == pytest.approx(
                float(alpha) * row["params"] / teacher["params"] + fidelity, abs=1e-12)
    assert rows["onnx-int8"]["params"] == rows["torch-int8"]["params"] == rows["student"]["params"]
    assert rows["onnx-int8"]["size_bytes"] < 0.5 * rows["student"]["size_bytes"]
    assert rows["onnx-int8"]["distillation_metric_bytes"] < rows["onnx-int8"]["distillation_metric"]


def test_report_files_show_every_artifact_and_the_references(artifact_report) -> None:
    report, paths, _ = artifact_report
    text = paths["markdown"].read_text()
    for name in ("onnx-int8", "torch-int8", "always-zero", "A vs B"):
        assert name in text
    assert "DM (α=0.5) by params" in text and "DM (α=0.5) by bytes" in text
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text())["references"][0]["case"] == "A vs B"


def test_shared_reference_table_reads() -> None:
    csv_path = SHARED_DIR / "reference" / "distillation_metric_cases.csv"
    if not csv_path.is_file():
        pytest.skip(f"{csv_path} absent: set HFKD_SHARED_DIR to the shared folder")
    rows = read_references(csv_path)
    assert rows and all(0 < r["student_size"] < r["teacher_size"] for r in rows)
    assert {"case", "source", "student_score", "teacher_score"} <= set(rows[0])


def test_cli_artifact_rows_and_references(tmp_path: Path, monkeypatch) -> None:
    from hfkd.app.report_cli import reference_rows, report_rows

    (tmp_path / "s").mkdir()
    (tmp_path / "a").mkdir()
    assert report_rows([str(tmp_path / "s")], [f"int8={tmp_path / 'a'}"]) == [("s", str(tmp_path / "s")),
                                                                          ("int8", str(tmp_path / "a"))]
    for bad, match in ((["noequals"], "NAME=PATH"), ([f"x={tmp_path / 'missing'}"], "no such folder")):
        with pytest.raises(ValueError, match=match):
            report_rows([], bad)
    with pytest.raises(ValueError, match="at least one --student or --artifact"):
        report_rows([], [])
    assert reference_rows("none") == []
    monkeypatch.setenv("HFKD_SHARED_DIR", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    found = reference_rows(None)  # falls back to ../shared beside the checkout when it exists
    assert found == (read_references(SHARED_DIR / "reference" / "distillation_metric_cases.csv")
                     if (SHARED_DIR / "reference" / "distillation_metric_cases.csv").is_file() else [])


def test_a_trimmed_student_is_scored_and_timed_in_its_own_tokens(tmp_path, seq_cls_dir, eval_set, tokenizer) -> None:
    """A student whose vocabulary was trimmed to the evaluation texts reads its own token ids: with
    them (`eval_datasets`) it scores what its untrimmed source scores (the same outputs on those texts);
    its ids are not the teacher's, so the teacher's tokenization would index past its embedding."""
    from transformers import AutoTokenizer

    from hfkd.deploy.vocabulary import trim_vocabulary

    model = BertForSequenceClassification.from_pretrained(seq_cls_dir)
    trimmed_model, trimmed_tokenizer, _ = trim_vocabulary(model, AutoTokenizer.from_pretrained(seq_cls_dir),
                                                          list(CHECK_TEXTS))
    trimmed = tmp_path / "trimmed"
    trimmed_model.save_pretrained(trimmed)
    trimmed_tokenizer.save_pretrained(trimmed)
    own = Dataset.from_dict({**trimmed_tokenizer(list(CHECK_TEXTS)), "labels": eval_set["labels"]})
    assert max(max(ids) for ids in eval_set["input_ids"]) >= trimmed_model.config.vocab_size
    report = build_report(str(seq_cls_dir), [("trimmed", str(trimmed))], eval_set, DataCollatorWithPadding(tokenizer),
                          accuracy, teacher_name="source", batch_sizes=(1, 4), warmup=1, repeats=2, best_of=1,
                          eval_datasets={"trimmed": own})
    assert report["students"][0]["score"] == report["teacher"]["score"] == 1.0
    assert report["students"][0]["params"] < report["teacher"]["params"]
    assert set(report["students"][0]["latency_ms"]) == {"batch_1", "batch_4"}
