"""TinyBERT-style augmentation: replacements are the MLM's top-k guesses, deterministic, cached,
and a teacher cache of the plain train split is refused for the augmented one."""


import datasets
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertTokenizerFast

from conftest import TOKENIZER_DIR, needs_example_checkpoint
from hfkd.transfer.augment import AUGMENTED_COLUMN, AugmentationSettings, _Augmenter, augment_dataset, load_masked_lm
from hfkd.app.task_data import DataArguments, DataError

WORDS = ["good", "bad", "movie", "film", "great", "awful", "plot", "actor", "fun", "dull", "very", "quite"]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    """A tiny random BertForMaskedLM with a word-level vocabulary (its guesses are arbitrary but fixed)."""
    root = tmp_path_factory.mktemp("mlm")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "!", "##s"] + WORDS
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(root / "vocab.txt"))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=64))
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def sentences():
    return datasets.Dataset.from_dict({
        "sentence": ["good movie !", "a very dull plot", "great actor , fun film", "awful films 12", "quite bad"],
        "label": [1, 0, 1, 0, 0],
    })


def top_k_guesses(model, tokenizer, words, index, k):
    """Independent: mask word `index` in the sentence, keep the k best whole alphabetic tokens."""
    ids = [tokenizer.cls_token_id] + [tokenizer.convert_tokens_to_ids(w) for w in words] + [tokenizer.sep_token_id]
    ids[index + 1] = tokenizer.mask_token_id
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, index + 1]
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(logits))))
    ranked = [vocab[i] for i in logits.argsort(descending=True).tolist()]
    return [t for t in ranked if t.isalpha() and t not in tokenizer.all_special_tokens][:k]


def test_copies_replace_only_single_piece_words_by_the_mlm_top_k(mlm_dir):
    model, tokenizer = load_masked_lm(str(mlm_dir))
    settings = AugmentationSettings(copies=4, probability=0.5, top_k=3, seed=0)
    data = sentences()
    out = augment_dataset(data, "sentence", model, tokenizer, settings)
    assert len(out) == len(data) * 5
    assert out[AUGMENTED_COLUMN] == [0, 1, 2, 3, 4] * len(data)
    assert out["label"] == [label for label in data["label"] for _ in range(5)]
    replaced = 0
    for row, text in enumerate(data["sentence"]):
        words = text.split()
        assert out["sentence"][row * 5] == text
        for copy_index in range(1, 5):
            new = out["sentence"][row * 5 + copy_index].split()
            assert len(new) == len(words)
            for i, (old, word) in enumerate(zip(words, new)):
                if word == old:
                    continue
                replaced += 1
                # Only whole words of the MLM's vocabulary: never "a" (unknown), ",", "12", "films" (2 pieces).
                assert old in WORDS, (old, word)
                assert word in top_k_guesses(model, tokenizer, words, i, 3), (text, i, word)
    assert replaced > 5


def test_augmentation_is_deterministic_and_cached(mlm_dir, tmp_path, monkeypatch):
    model, tokenizer = load_masked_lm(str(mlm_dir))
    path = tmp_path / "train.csv"
    sentences().to_csv(path, index=False)
    data = datasets.load_dataset("csv", data_files=str(path), split="train", cache_dir=str(tmp_path / "c"))
    settings = AugmentationSettings(copies=3, probability=0.5, top_k=3, seed=1)
    first = augment_dataset(data, "sentence", model, tokenizer, settings, batch_size=2)
    # Same rows for another batch size (each row draws from its own seeded generator) ...
    in_memory = datasets.Dataset.from_dict(data.to_dict())
    assert augment_dataset(in_memory, "sentence", model, tokenizer, settings, batch_size=64)["sentence"] == \
        first["sentence"]
    # ... other rows for another seed ...
    other = augment_dataset(data, "sentence", model, tokenizer, AugmentationSettings(3, 0.5, 3, seed=2))
    assert other["sentence"] != first["sentence"]
    # ... and a second run with the same MLM and settings reads the datasets cache, not the MLM.
    monkeypatch.setattr(_Augmenter, "__call__", lambda *a, **k: pytest.fail("augmentation recomputed"))
    again = augment_dataset(data, "sentence", model, tokenizer, settings, batch_size=2)
    assert again["sentence"] == first["sentence"]
    assert again.cache_files == first.cache_files


def test_checkpoint_without_mlm_head_and_bad_settings_are_refused(mlm_dir, tmp_path):
    BertForSequenceClassification(BertConfig(vocab_size=20, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                             intermediate_size=64)).save_pretrained(tmp_path / "cls")
    BertTokenizerFast(vocab=str(mlm_dir / "vocab.txt")).save_pretrained(tmp_path / "cls")
    with pytest.raises(ValueError, match="no trained masked-LM head"):
        load_masked_lm(str(tmp_path / "cls"))
    with pytest.raises(DataError, match="needs augment_mlm"):
        DataArguments(train_file="x.csv", augment_copies=2)
    with pytest.raises(DataError, match="augment_prob"):
        DataArguments(train_file="x.csv", augment_copies=2, augment_mlm="m", augment_prob=0.0)
    with pytest.raises(DataError, match="augment_unlabeled is set but augment_copies is 0"):
        DataArguments(train_file="x.csv", augment_unlabeled=True)


@pytest.mark.parametrize("unlabeled", [False, True])
def test_copies_keep_their_label_or_go_unlabeled_for_the_teacher_alone(mlm_dir, unlabeled):
    from hfkd.app.task_data import prepare_classification_datasets
    from hfkd.objective.items import UNLABELED

    data = sentences()
    args = DataArguments(train_file="x.csv", augment_copies=2, augment_mlm=str(mlm_dir), augment_unlabeled=unlabeled)
    processed, _ = prepare_classification_datasets(datasets.DatasetDict(train=data), load_masked_lm(str(mlm_dir))[1],
                                                   args)
    labels = processed["train"]["labels"]
    assert len(labels) == 3 * len(data)
    # Rows come as each original followed by its two copies.
    assert labels[::3] == data["label"]
    copies = [label for i, label in enumerate(labels) if i % 3]
    assert copies == ([UNLABELED] * 2 * len(data) if unlabeled else [label for label in data["label"] for _ in "ab"])


@needs_example_checkpoint
def test_teacher_cache_of_plain_data_is_refused_for_augmented_data(tmp_path):
    """cache-teacher without augmentation, distill with it: refused; cache-teacher with it: used."""
    from transformers import AutoTokenizer

    from hfkd.app.recipes import main, run_cache_teacher, run_distillation

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(0)
    small = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(BertConfig(**small)).save_pretrained(tmp_path / "teacher")
    BertForMaskedLM(BertConfig(**small)).save_pretrained(tmp_path / "mlm")
    for name in ("teacher", "mlm"):
        tokenizer.save_pretrained(tmp_path / name)
    rows = ["sentence\tlabel"] + [f"a {w} movie with a {v} plot\t{i % 2}" for i, (w, v) in
                                   enumerate(zip(["good", "bad", "fine", "dull"] * 3, ["great", "weak", "long"] * 4))]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    common = ["--teacher_model_name_or_path", str(tmp_path / "teacher"), "--student_num_layers", "1",
              "--train_file", str(tmp_path / "train.tsv"), "--max_seq_length", "32", "--report_to", "none",
              "--use_cpu", "--teacher_cache_dir", str(tmp_path / "cache"), "--alpha_kd", "1", "--alpha_ce", "0",
              "--per_device_train_batch_size", "8", "--max_steps", "1", "--save_strategy", "no", "--debug"]
    augment = ["--augment_copies", "2", "--augment_mlm", str(tmp_path / "mlm"), "--augment_top_k", "5"]
    assert main(run_cache_teacher, [*common, "--output_dir", str(tmp_path / "c1")]) == {"cached_rows": 12}
    with pytest.raises(ValueError, match="stale teacher cache.*augmentation"):
        main(run_distillation, [*common, *augment, "--output_dir", str(tmp_path / "s1")])
    assert main(run_cache_teacher, [*common, *augment, "--output_dir", str(tmp_path / "c2")]) == {"cached_rows": 36}
    main(run_distillation, [*common, *augment, "--output_dir", str(tmp_path / "s2")])
    with pytest.raises(ValueError, match="stale teacher cache.*augmentation"):
        main(run_distillation, [*common, "--output_dir", str(tmp_path / "s3")])
