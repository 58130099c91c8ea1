"""Crops of the labelled texts as a transfer set: what a crop is, that draws are seeded, and the recipe path."""

import logging

import pytest
from datasets import Dataset

from hfkd.app.task_data import DataArguments, DataError
from hfkd.objective.items import UNLABELED
from hfkd.transfer.crops import crop_dataset, crop_texts
from hfkd.transfer.unlabeled import TransferSetError

pytestmark = pytest.mark.usefixtures("datasets_cache")  # Arrow caches in tmp_path (conftest)

TEXTS = ["a gorgeous , witty , seductive movie .", "not good", "the plot is nothing but boilerplate cliches",
         "it 's a charming and often affecting journey .", "bad", "an utterly incompetent conclusion"]


def is_run_of(crop: str, text: str) -> bool:
    words, part = text.split(), crop.split()
    return any(words[start:start + len(part)] == part for start in range(len(words) - len(part) + 1))


def test_a_crop_is_a_contiguous_run_of_at_least_half_the_words_and_never_a_training_text():
    crops = crop_texts(TEXTS, 12, seed=0)
    assert len(crops) == 12 and len({crop for _, crop in crops}) == 12
    for index, crop in crops:
        words, source = crop.split(), TEXTS[index].split()
        assert is_run_of(crop, TEXTS[index]) and max(3, -(-len(source) // 2)) <= len(words) < len(source)
        assert crop not in TEXTS
    assert {index for index, _ in crops} <= {0, 2, 3, 5}  # texts of 3 words or fewer give no crop


def test_crops_are_seeded_and_a_small_text_set_gives_what_it_has(caplog):
    assert crop_texts(TEXTS, 8, seed=3) == crop_texts(TEXTS, 8, seed=3) != crop_texts(TEXTS, 8, seed=4)
    # "an utterly incompetent conclusion" (4 words) has exactly two crops of 3 words: no more can be drawn.
    with caplog.at_level(logging.WARNING, logger="hfkd"):
        crops = crop_texts(["an utterly incompetent conclusion", "bad"], 5, seed=0)
    assert sorted(crop for _, crop in crops) == ["an utterly incompetent", "utterly incompetent conclusion"]
    assert "2 of the 5 asked for" in caplog.text


def test_crop_dataset_keeps_the_pair_text_of_each_crops_source():
    pairs = Dataset.from_dict({"premise": TEXTS, "hypothesis": [f"claim {i}" for i in range(6)], "label": [0] * 6})
    crops = crop_dataset(pairs, "premise", "hypothesis", per_row=1.5, seed=0)
    assert crops.column_names == ["premise", "hypothesis"] and len(crops) == 9
    for row in crops:
        source = TEXTS[int(row["hypothesis"].split()[1])]
        assert is_run_of(row["premise"], source) and row["premise"] != source
    with pytest.raises(TransferSetError, match="unlabeled_crops=1 gave no crop: no training text has more than 3 words"):
        crop_dataset(Dataset.from_dict({"premise": ["not good", "bad"]}), "premise", None, per_row=1.0, seed=0)


def test_the_recipe_adds_the_crops_as_unlabeled_rows_and_refuses_bad_settings(tmp_path):
    from transformers import BertTokenizerFast

    from hfkd.app.task_data import load_raw_datasets, prepare_classification_datasets, prepare_lm_datasets

    vocab = tmp_path / "vocab.txt"
    words = sorted({word for text in TEXTS for word in text.split()})
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab))
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{text}\t{i % 2}\n" for i, text in enumerate(TEXTS)))
    args = DataArguments(train_file=str(train), validation_file=str(train), unlabeled_crops=2.0, augment_seed=5)
    raw = load_raw_datasets(args)
    processed, _ = prepare_classification_datasets(raw, tokenizer, args)
    labels = processed["train"]["labels"]
    assert len(labels) == 6 + 12 and labels.count(UNLABELED) == 12
    expected = {tuple(tokenizer(crop)["input_ids"]) for _, crop in crop_texts(TEXTS, 12, seed=5)}
    got = {tuple(ids) for ids, label in zip(processed["train"]["input_ids"], labels) if label == UNLABELED}
    assert got == expected
    assert UNLABELED not in processed["validation"]["labels"]

    with pytest.raises(DataError, match="unlabeled_crops=-1.0 must be a finite number >= 0"):
        DataArguments(train_file=str(train), unlabeled_crops=-1.0)
    with pytest.raises(DataError, match="unset unlabeled_file/unlabeled_dataset_name/unlabeled_crops"):
        prepare_lm_datasets(raw, tokenizer, args, task="masked_lm")
