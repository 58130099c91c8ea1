"""`hfkd trim-vocab`: texts from text/table files and recipe configs, the output set, the refusals."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from hfkd.app.cli import main as cli_main
from tiny_tokenizers import corpus, other_texts, wordpiece

pytestmark = pytest.mark.usefixtures("datasets_cache")


@pytest.fixture
def workspace(tmp_path):
    """tmp/model (tiny BERT classifier + WordPiece tokenizer), train.txt, train.tsv, pairs.tsv, dev.tsv, recipe.yaml."""
    tokenizer = wordpiece()
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    texts = corpus(30, seed=2)
    (tmp_path / "train.txt").write_text("\n".join(texts[:20]) + "\n\n" + "\n".join(texts[20:]) + "\n")
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(texts)))
    (tmp_path / "pairs.tsv").write_text("sentence1\tsentence2\tlabel\n" +
                                        "".join(f"{a}\t{b}\t0\n" for a, b in zip(texts[:15], texts[15:])))
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t1\n" for t in other_texts()))
    (tmp_path / "recipe.yaml").write_text(f"task: sequence_classification\ntrain_file: {tmp_path / 'train.tsv'}\n"
                                          f"validation_file: {tmp_path / 'dev.tsv'}\n")
    return tmp_path


def trim(workspace, *args: str) -> None:
    cli_main(["trim-vocab", "--model", str(workspace / "model"), "--output_dir", str(workspace / "out"), *args])


def test_trims_on_a_text_file_and_reports_the_eval_texts(workspace, capsys):
    trim(workspace, "--texts", str(workspace / "train.txt"), "--eval_texts", str(workspace / "dev.tsv"))
    printed = capsys.readouterr().out
    assert "WordPiece vocabulary: kept" in printed and "eval texts: 4" in printed and "became unknown" in printed
    out = workspace / "out"
    assert {"config.json", "model.safetensors", "tokenizer.json", "trim_report.json"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "trim_report.json").read_text())
    assert report["text_sources"] == [str(workspace / "train.txt")] and report["texts"] == 30  # blank line skipped
    assert report["eval"]["texts"] == 4
    assert report["vocab_after"] < report["vocab_before"] and report["eval"]["changed_tokens"] > 0

    original = AutoModelForSequenceClassification.from_pretrained(workspace / "model").eval()
    trimmed = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer, trimmed_tokenizer = AutoTokenizer.from_pretrained(workspace / "model"), AutoTokenizer.from_pretrained(out)
    assert trimmed.config.vocab_size == report["vocab_after"] == len(trimmed_tokenizer)
    texts = corpus(30, seed=2)
    with torch.no_grad():
        before = original(**tokenizer(texts, padding=True, return_tensors="pt")).logits
        after = trimmed(**trimmed_tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert torch.equal(before, after)  # same ids' rows, same computation


def test_reads_a_recipe_configs_train_split_and_both_columns_of_pairs(workspace):
    trim(workspace, "--texts", str(workspace / "recipe.yaml"), "--eval_texts", str(workspace / "recipe.yaml"))
    report = json.loads((workspace / "out" / "trim_report.json").read_text())
    assert report["texts"] == 30 and report["eval"]["texts"] == 4  # train split for --texts, dev for --eval_texts
    trim(workspace, "--texts", str(workspace / "pairs.tsv"), "--overwrite_output_dir")
    report = json.loads((workspace / "out" / "trim_report.json").read_text())
    assert report["text_sources"] == [str(workspace / "pairs.tsv")] and report["texts"] == 30  # 15 pairs, both sides


def test_refuses_a_folder_it_did_not_write_and_needs_overwrite_for_its_own(workspace, capsys):
    foreign = workspace / "out"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        trim(workspace, "--texts", str(workspace / "train.txt"))
    assert exit_info.value.code == 2
    assert "holds files hfkd trim-vocab did not write (notes.txt)" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    (foreign / "notes.txt").unlink()
    trim(workspace, "--texts", str(workspace / "train.txt"))
    with pytest.raises(SystemExit):
        trim(workspace, "--texts", str(workspace / "train.txt"))
    assert "pass --overwrite_output_dir" in capsys.readouterr().err
    trim(workspace, "--texts", str(workspace / "train.tsv"), "--overwrite_output_dir")
    assert json.loads((foreign / "trim_report.json").read_text())["text_sources"] == [str(workspace / "train.tsv")]


def test_bad_texts_give_one_line(workspace, capsys):
    (workspace / "empty.txt").write_text("  \n \n")
    for source, message in ((workspace / "empty.txt", "empty.txt has no rows"),
                            (workspace / "missing.txt", "neither a file, a data folder nor a recipe config")):
        with pytest.raises(SystemExit):
            trim(workspace, "--texts", str(source))
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (workspace / "out").exists()
