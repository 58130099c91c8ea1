"""hfkd.deploy: exports are checked against their PyTorch source, refused outside the bound, written
whole or not at all, and usable alone (`hfkd predict`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

onnx = pytest.importorskip("onnx", reason="needs the export extra: pip install -e '.[export]'")
numpy_helper = onnx.numpy_helper
from deploy.artifacts import (  # noqa: F401 (fixtures)
    LABELS, fit, save, seq_cls_dir, seq_cls_onnx_int8, seq_cls_torch_int8, token_cls_dir, tokenizer,
)
from hfkd.app.cli import main as cli_main
from hfkd.deploy import ExportError, check_artifact, export_model, load_artifact, load_torch_int8, predict
from hfkd.deploy.export import CHECK_TEXTS, DEFAULT_BOUNDS, check_batches
from hfkd.deploy.runtime import MANIFEST_NAME, artifact_logits

TEXTS = list(CHECK_TEXTS[:6])  # what the tiny models were fitted on: no near-ties for int8 to flip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_staging_left(parent: Path) -> bool:
    return not [n for n in os.listdir(parent) if n.startswith(".hfkd-")]


def _shift_logits(folder: Path, out: Path, shift: float = 50.0) -> Path:
    """A copy of an ONNX artifact whose graph adds `shift` to the class-0 logit: broken on purpose."""
    shutil.copytree(folder, out)
    graph = onnx.load(out / "model.onnx")
    last = next(node for node in graph.graph.node if "logits" in node.output)
    last.output[list(last.output).index("logits")] = "logits_unshifted"
    shift_values = np.zeros(3, np.float32)
    shift_values[0] = shift
    graph.graph.initializer.append(numpy_helper.from_array(shift_values, "logit_shift"))
    graph.graph.node.append(onnx.helper.make_node("Add", ["logits_unshifted", "logit_shift"], ["logits"]))
    onnx.save(graph, out / "model.onnx")
    return out


# ---------------------------------------------------------------------------------- checked exports


def test_onnx_int8_export_passes_both_checks(seq_cls_onnx_int8: Path) -> None:
    check = json.loads((seq_cls_onnx_int8 / "export_check.json").read_text())
    by_kind = {c["artifact"]: c for c in check["checks"]}
    assert set(by_kind) == {"onnx fp32", "onnx int8"}
    assert all(c["passed"] for c in by_kind.values()) and check["texts"] == len(CHECK_TEXTS)
    fp32, int8 = by_kind["onnx fp32"], by_kind["onnx int8"]
    assert fp32["relative_logit_diff"] <= DEFAULT_BOUNDS["fp32"].max_relative_error
    assert int8["argmax_agreement"] >= 0.99 and fp32["argmax_agreement"] == 1.0
    assert fp32["max_abs_logit_diff"] < int8["max_abs_logit_diff"]  # int8 rounding is what moves logits
    manifest = json.loads((seq_cls_onnx_int8 / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "onnx int8" and manifest["model_files"] == ["model.onnx"]
    assert manifest["inputs"] == ["input_ids", "token_type_ids", "attention_mask"]
    assert sorted(os.listdir(seq_cls_onnx_int8)) == sorted(
        ["config.json", "export_check.json", MANIFEST_NAME, "model.onnx", "tokenizer.json", "tokenizer_config.json"])
    assert _no_staging_left(seq_cls_onnx_int8.parent)


def test_onnx_int8_is_smaller_and_dynamic(seq_cls_onnx_int8: Path, seq_cls_dir: Path, tokenizer) -> None:
    """int8 weights: the file shrinks; any batch size and sequence length runs (dynamic dims)."""
    artifact = load_artifact(seq_cls_onnx_int8)
    assert artifact.size_bytes < 0.5 * sum(f.stat().st_size for f in seq_cls_dir.glob("*.safetensors"))
    for rows, text in ((1, "ok"), (5, " ".join(["word"] * 100))):
        batch = dict(tokenizer([text] * rows, return_tensors="np"))
        assert artifact_logits(artifact.model, batch).shape == (rows, 3)


def test_token_classification_onnx_int8_passes(token_cls_dir: Path, tmp_path: Path) -> None:
    manifest = export_model(token_cls_dir, tmp_path / "out", quantize="int8")
    assert manifest["task"] == "token_classification" and manifest["check_passed"]
    checks = json.loads((tmp_path / "out" / "export_check.json").read_text())["checks"]
    assert [c["artifact"] for c in checks] == ["onnx fp32", "onnx int8"] and all(c["passed"] for c in checks)
    assert checks[0]["positions"] > len(CHECK_TEXTS)  # every real token is a checked position


def test_torch_int8_export_reloads(seq_cls_torch_int8: Path, seq_cls_dir: Path, tokenizer) -> None:
    check = json.loads((seq_cls_torch_int8 / "export_check.json").read_text())["checks"]
    assert [c["artifact"] for c in check] == ["pytorch int8"] and check[0]["passed"]
    model = load_torch_int8(seq_cls_torch_int8)
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, torch.ao.nn.quantized.dynamic.Linear)
    source = load_artifact(seq_cls_dir).model
    batch = check_batches(tokenizer, TEXTS, source, 64)[0]
    diff = np.abs(artifact_logits(model, batch) - artifact_logits(source, batch)).max()
    assert 0 < diff <= check[0]["max_abs_logit_diff"] * 10  # int8, and as close as the check measured


def test_check_inputs_from_evaluation_rows(seq_cls_dir: Path, tokenizer) -> None:
    """Tokenized rows (what --config gives) are checked exactly as tokenized; pairs tokenize as pairs."""
    model = load_artifact(seq_cls_dir).model
    rows = [dict(tokenizer(t)) for t in TEXTS]
    from_rows = check_batches(tokenizer, rows, model, 64)[0]
    from_texts = check_batches(tokenizer, TEXTS, model, 64)[0]
    assert all(np.array_equal(from_rows[k], from_texts[k]) for k in from_texts)
    pairs = check_batches(tokenizer, [("first part", "second part")], model, 64)[0]
    assert pairs["token_type_ids"].max() == 1


# ---------------------------------------------------------------------------------- refusals


def test_broken_artifact_is_refused(seq_cls_onnx_int8: Path, seq_cls_dir: Path, tokenizer, tmp_path: Path) -> None:
    broken = _shift_logits(seq_cls_onnx_int8, tmp_path / "broken")
    with pytest.raises(ExportError, match=r"disagrees with its PyTorch source.*--allow_mismatch"):
        check_artifact(broken, load_artifact(seq_cls_dir).model, tokenizer)
    assert check_artifact(seq_cls_onnx_int8, load_artifact(seq_cls_dir).model, tokenizer)["passed"]


def test_export_outside_the_bound_writes_nothing(seq_cls_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A quantization that breaks the model is refused; the earlier export in OUT stays as it was;
    --allow_mismatch keeps it, recorded as failed."""
    import hfkd.deploy.export as export

    out = tmp_path / "out"
    export_model(seq_cls_dir, out, format="torch", quantize="int8")
    before = _snapshot(out)
    quantize = export.quantize_linear_int8

    def breaking(model):
        with torch.no_grad():
            model.classifier.bias[0] += 100.0
        return quantize(model)

    monkeypatch.setattr(export, "quantize_linear_int8", breaking)
    with pytest.raises(ExportError, match="pytorch int8 artifact disagrees"):
        export_model(seq_cls_dir, out, format="torch", quantize="int8")
    assert _snapshot(out) == before and _no_staging_left(tmp_path)
    manifest = export_model(seq_cls_dir, out, format="torch", quantize="int8", allow_mismatch=True)
    assert manifest["check_passed"] is False
    assert json.loads((out / "export_check.json").read_text())["allow_mismatch"] is True


def test_model_that_fails_to_trace_leaves_out_untouched(seq_cls_dir: Path, tokenizer, tmp_path: Path) -> None:
    class DataDependentForSequenceClassification(BertForSequenceClassification):
        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
            if int(input_ids.sum()) % 2:  # a Python branch on a tensor value: torch.export cannot trace it
                input_ids = input_ids.flip(1)
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    model = DataDependentForSequenceClassification(load_artifact(seq_cls_dir).model.config).eval()
    out = tmp_path / "out"
    export_model(seq_cls_dir, out, format="torch", quantize="int8")
    before = _snapshot(out)
    expected = r"DataDependentForSequenceClassification failed to trace for ONNX export .*--format torch"
    with pytest.raises(ExportError, match=expected) as error:
        export_model(model, out, tokenizer=tokenizer, texts=TEXTS)
    assert "\n" not in str(error.value)
    assert _snapshot(out) == before and _no_staging_left(tmp_path)


def test_refuses_a_folder_hfkd_did_not_create(seq_cls_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="holds files but no hfkd export"):
        export_model(seq_cls_dir, out, format="torch", quantize="int8")
    assert os.listdir(out) == ["notes.txt"]
    with pytest.raises(ExportError, match="is the model folder itself"):
        export_model(seq_cls_dir, seq_cls_dir, format="torch", quantize="int8")


@pytest.mark.parametrize("kwargs, match", [
    ({"format": "tflite"}, "--format 'tflite' is not supported: choose one of onnx, torch"),
    ({"quantize": "int4"}, "--quantize 'int4' is not supported"),
    ({"format": "torch"}, "--format torch needs --quantize int8"),
    ({"texts": ["  "]}, "at least one non-empty text"),
])
def test_bad_choices_are_one_line(kwargs: dict, match: str, seq_cls_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=match):
        export_model(seq_cls_dir, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_unsupported_head_and_missing_extra(tokenizer, tmp_path: Path, monkeypatch) -> None:
    bare = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=4, intermediate_size=64))
    with pytest.raises(ExportError, match=r"BertModel: its head \(none, a bare encoder\) is not one of"):
        export_model(bare, tmp_path / "out", tokenizer=tokenizer)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ExportError, match=r"needs onnxscript \(the `export` extra\): pip install 'hfkd\[export\]'"):
        export_model(bare, tmp_path / "out", tokenizer=tokenizer)


# ---------------------------------------------------------------------------------- predict and CLI


def test_predict_matches_the_pytorch_model(seq_cls_onnx_int8: Path, seq_cls_torch_int8: Path, seq_cls_dir: Path,
                                           tokenizer) -> None:
    source = load_artifact(seq_cls_dir).model
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        probs = source(**batch).logits.softmax(-1)
    expected = [LABELS[int(i)] for i in probs.argmax(-1)]
    for folder in (seq_cls_onnx_int8, seq_cls_torch_int8):
        rows = predict(folder, TEXTS)
        assert [r["label"] for r in rows] == expected
        assert [r["text"] for r in rows] == TEXTS
        for row, p in zip(rows, probs):
            assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
            assert row["probability"] == pytest.approx(float(p.max()), abs=0.02)  # int8: probabilities move a little


def test_predict_cli_prints_labels(seq_cls_onnx_int8: Path, tmp_path: Path, capsys) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("second text\n\nthird text\n")
    cli_main(["predict", "--model", str(seq_cls_onnx_int8), "--text", TEXTS[0], "--file", str(texts)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[2] for line in lines] == [TEXTS[0], "second text", "third text"]
    assert all(line.split("\t")[0] in LABELS.values() and 0 < float(line.split("\t")[1]) <= 1 for line in lines)


def test_predict_refuses_what_is_not_an_artifact(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        cli_main(["predict", "--model", str(tmp_path / "missing"), "--text", "hi"])
    assert "missing is not a folder: give the --output_dir of an hfkd export" in capsys.readouterr().err
    with pytest.raises(ExportError, match="at least one text"):
        predict(tmp_path, [])


def test_export_cli_errors_are_one_line(seq_cls_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x").write_text("x")
    with pytest.raises(SystemExit) as stop:
        cli_main(["export", "--model", str(seq_cls_dir), "--output_dir", str(tmp_path / "mine")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hfkd: error: --output_dir") and "--debug" in err[0]


def test_export_cli_checks_on_given_texts(seq_cls_dir: Path, tmp_path: Path, capsys) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    cli_main(["export", "--model", str(seq_cls_dir), "--format", "torch", "--quantize", "int8",
              "--texts", str(texts), "--output_dir", str(tmp_path / "out")])
    assert "pytorch int8: argmax agreement 100.00%" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "export_check.json").read_text())["texts"] == len(TEXTS)


# ---------------------------------------------------------------------------------- language-model heads


def _fit_lm(model: torch.nn.Module, tokenizer, steps: int = 60) -> torch.nn.Module:
    """A few full-batch steps of predicting the check sentences' own tokens: a random LM's logits over
    30k tokens differ by ~1e-3, so int8 rounding would flip its argmax on most positions; fitted, they
    peak like a trained model's."""
    batch = tokenizer(list(CHECK_TEXTS), padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return fit(model, batch, labels, steps)


@pytest.mark.slow
def test_masked_and_causal_lm_logits_export(tokenizer, tmp_path: Path) -> None:
    """Masked-LM and causal-LM (no KV cache) logits: fp32 and int8 ONNX pass their checks."""
    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=128))
    save(_fit_lm(mlm, tokenizer), tmp_path / "mlm")
    assert export_model(tmp_path / "mlm", tmp_path / "mlm_out", quantize="int8")["check_passed"]
    masked = predict(tmp_path / "mlm_out", ["the capital of france is [MASK]."])[0]
    assert len(masked["masks"]) == 1
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=128))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    save(_fit_lm(gpt, tokenizer), tmp_path / "gpt")
    assert export_model(tmp_path / "gpt", tmp_path / "gpt_out", quantize="int8")["check_passed"]
    assert "next_token" in predict(tmp_path / "gpt_out", ["hello there"])[0]
