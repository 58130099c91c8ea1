"""hfkd.app.task_data: loading local files, label handling, tokenization per task, and every error path."""

import json
from pathlib import Path

import datasets
import pytest
from transformers import BertTokenizerFast, BertTokenizerLegacy, HfArgumentParser

from conftest import SHARED_DIR
from hfkd.app.task_data import (
    DataArguments,
    DataError,
    build_data_collator,
    check_label_order,
    load_raw_datasets,
    prepare_classification_datasets,
    prepare_lm_datasets,
    prepare_token_classification_datasets,
)

SHARED_DATA = SHARED_DIR / "data"

WORDS = (
    "the a movie film is was good bad great awful plot acting john mary lives in paris london "
    "works at acme corp and . , ! ? what who where when how many question"
).split()
SIX_CLASS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


pytestmark = pytest.mark.usefixtures("datasets_cache")  # Arrow caches in tmp_path (conftest)


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    path.write_text("\n".join(specials + WORDS + ["ber", "##lin"]) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer(vocab_file) -> BertTokenizerFast:
    tok = BertTokenizerFast(vocab=str(vocab_file), model_max_length=512)
    assert tok.vocab_size == 5 + len(WORDS) + 2
    return tok


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def args(**kwargs) -> DataArguments:
    return DataArguments(**kwargs)


# ---------------------------------------------------------------- DataArguments


def test_data_arguments_parse_with_hf_argument_parser():
    (parsed,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(
        ["--train_file", "t.tsv", "--label_column", "Quality", "--max_train_samples", "10"]
    )
    assert parsed.train_file == "t.tsv" and parsed.label_column == "Quality" and parsed.max_train_samples == 10
    assert parsed.max_seq_length == 128 and parsed.mlm_probability == 0.15
    assert parsed.validation_split_name == "validation"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({}, "no data given"),
        ({"dataset_name": "glue", "train_file": "t.csv"}, "use one source"),
        ({"train_file": "t.csv", "mlm_probability": 1.5}, "mlm_probability=1.5"),
        ({"train_file": "t.csv", "max_seq_length": 0}, "max_seq_length=0"),
        ({"train_file": "t.csv", "max_train_samples": -3}, "max_train_samples=-3"),
    ],
)
def test_data_arguments_validation(kwargs, message):
    with pytest.raises(DataError, match=message):
        DataArguments(**kwargs)


# ---------------------------------------------------------------- load_raw_datasets


def test_csv_train_and_validation(tmp_path):
    train = write(tmp_path / "train.csv", "sentence,label\ngood movie,pos\nbad film,neg\nNA,neg\n")
    dev = write(tmp_path / "dev.csv", "sentence,label\ngreat plot,pos\n")
    raw = load_raw_datasets(args(train_file=train, validation_file=dev))
    assert list(raw) == ["train", "validation"]
    assert raw["train"].num_rows == 3 and raw["validation"].num_rows == 1
    assert raw["train"][2]["sentence"] == "NA"  # text, not a missing value


def test_tsv_is_read_in_glue_dialect_with_bom_stripped(tmp_path):
    text = '\ufeffQuality\t#1 String\t#2 String\n1\tHe said "hi\tand left\n0\t"quoted" start\tplain\n'
    raw = load_raw_datasets(args(train_file=write(tmp_path / "train.tsv", text)))
    assert raw["train"].column_names == ["Quality", "#1 String", "#2 String"]
    assert raw["train"].num_rows == 2
    assert raw["train"][0]["#1 String"] == 'He said "hi'
    assert raw["train"][1]["#1 String"] == '"quoted" start'


def test_json_jsonl_parquet_and_txt(tmp_path):
    rows = [{"text": "good movie", "label": 1}, {"text": "bad film", "label": 0}]
    jsonl = write(tmp_path / "a.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    json_array = write(tmp_path / "b.json", json.dumps(rows))
    parquet = str(tmp_path / "c.parquet")
    datasets.Dataset.from_list(rows).to_parquet(parquet)
    txt = write(tmp_path / "d.txt", "first line\nsecond line\n")
    for path in (jsonl, json_array, parquet):
        raw = load_raw_datasets(args(train_file=path))
        assert raw["train"].num_rows == 2 and set(raw["train"].column_names) == {"text", "label"}, path
    raw = load_raw_datasets(args(train_file=txt))
    assert raw["train"].column_names == ["text"] and raw["train"].num_rows == 2


def test_folder_with_train_dev_test_files(tmp_path):
    write(tmp_path / "train.tsv", "sentence\tlabel\ngood\t1\n")
    write(tmp_path / "dev.tsv", "sentence\tlabel\nbad\t0\n")
    write(tmp_path / "test.tsv", "index\tsentence\n0\tgreat\n")
    write(tmp_path / "notes.md", "not data")
    raw = load_raw_datasets(args(dataset_name=str(tmp_path)))
    assert list(raw) == ["train", "validation", "test"]
    assert raw["test"].column_names == ["index", "sentence"]


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no data files in folder"):
        load_raw_datasets(args(dataset_name=str(tmp_path)))
    write(tmp_path / "train.csv", "text,label\na,1\n")
    write(tmp_path / "train.tsv", "text\tlabel\na\t1\n")
    with pytest.raises(DataError, match="several train files .*train.csv, train.tsv"):
        load_raw_datasets(args(dataset_name=str(tmp_path)))


def test_validation_split_name_renames_a_split(tmp_path):
    train = write(tmp_path / "train.csv", "text,label\na,1\n")
    test = write(tmp_path / "test.csv", "text,label\nthe,0\n")
    raw = load_raw_datasets(args(train_file=train, test_file=test, validation_split_name="test"))
    assert list(raw) == ["train", "validation"] and raw["validation"][0]["text"] == "the"
    with pytest.raises(DataError, match=r"validation_split_name='dev' is not a split .*splits: train, test"):
        load_raw_datasets(args(train_file=train, test_file=test, validation_split_name="dev"))


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "train.csv"
    with pytest.raises(DataError, match=f"train file not found: {missing}"):
        load_raw_datasets(args(train_file=str(missing)))


def test_unsupported_extension(tmp_path):
    path = write(tmp_path / "train.xlsx", "x")
    with pytest.raises(DataError, match=r"unsupported file extension '\.xlsx'.*use one of .*\.csv"):
        load_raw_datasets(args(train_file=path))


def test_folder_passed_as_a_file(tmp_path):
    with pytest.raises(DataError, match="is a folder: pass a folder as dataset_name"):
        load_raw_datasets(args(train_file=str(tmp_path)))


@pytest.mark.parametrize("name,text", [("train.csv", "sentence,label\n"), ("train.txt", ""), ("train.jsonl", "\n")])
def test_empty_split(tmp_path, name, text):
    with pytest.raises(DataError, match="the train file .* has no rows"):
        load_raw_datasets(args(train_file=write(tmp_path / name, text)))


def test_trec_label_files_load_with_the_hub_columns(tmp_path, tokenizer):
    train = write(tmp_path / "train_5500.label", "HUM:ind Who is john ?\nLOC:city Where is paris ?\n\n"
                                                 "NUM:count How many acting ?\nHUM:gr Who works at acme corp ?\n")
    data_args = args(train_file=train, label_column="coarse_label")
    raw = load_raw_datasets(data_args)
    assert raw["train"].column_names == ["text", "coarse_label", "fine_label"]
    assert raw["train"]["text"][0] == "Who is john ?"
    assert raw["train"]["fine_label"] == ["HUM:ind", "LOC:city", "NUM:count", "HUM:gr"]
    processed, labels = prepare_classification_datasets(raw, tokenizer, data_args)
    assert labels == ["HUM", "LOC", "NUM"] and processed["train"]["labels"] == [0, 1, 2, 0]


@pytest.mark.parametrize("line", ["Who is john ?", "hum:ind Who is john ?", "HUM:ind", "HUM Who is john ?"])
def test_a_line_that_is_not_trec_is_named(tmp_path, line):
    train = write(tmp_path / "train.label", f"LOC:city Where is paris ?\n{line}\n")
    with pytest.raises(DataError, match=r"train\.label line 2 is not TREC's 'COARSE:fine question'"):
        load_raw_datasets(args(train_file=train))


# ---------------------------------------------------------------- sequence classification


def _six_class_csv(tmp_path) -> tuple[str, str, list[tuple[str, str]]]:
    rows = [(f"what {WORDS[i % 10]} question {i}", SIX_CLASS[(i * 5) % 6]) for i in range(30)]
    body = "".join(f"{text},{label}\n" for text, label in rows)
    train = write(tmp_path / "train.csv", "text,label\n" + body)
    dev = write(tmp_path / "dev.csv", "text,label\nwho is john,HUM\nwhere is paris,LOC\n")
    return train, dev, rows


def test_six_class_string_labels_map_to_sorted_ids(tmp_path, tokenizer):
    train, dev, rows = _six_class_csv(tmp_path)
    data_args = args(train_file=train, validation_file=dev, max_seq_length=6)
    processed, labels = prepare_classification_datasets(load_raw_datasets(data_args), tokenizer, data_args)
    assert labels == sorted(SIX_CLASS)
    assert processed["train"].column_names == ["input_ids", "token_type_ids", "attention_mask", "labels"]
    assert processed["train"]["labels"] == [labels.index(label) for _, label in rows]
    assert processed["validation"]["labels"] == [labels.index("HUM"), labels.index("LOC")]
    lengths = {len(ids) for split in processed.values() for ids in split["input_ids"]}
    assert max(lengths) == 6 and len(lengths) > 1  # truncated, not padded


def test_label2id_from_the_teacher_decides_ids(tmp_path, tokenizer):
    train, dev, _ = _six_class_csv(tmp_path)
    teacher = {label: i for i, label in enumerate(reversed(SIX_CLASS))}
    data_args = args(train_file=train, validation_file=dev)
    processed, labels = prepare_classification_datasets(load_raw_datasets(data_args), tokenizer, data_args, teacher)
    assert labels == list(reversed(SIX_CLASS))
    assert processed["validation"]["labels"] == [teacher["HUM"], teacher["LOC"]]


def test_labels_outside_label2id_are_named(tmp_path, tokenizer):
    train, dev, _ = _six_class_csv(tmp_path)
    data_args = args(train_file=train, validation_file=dev)
    with pytest.raises(DataError, match=r"data labels \['LOC', 'NUM'\] are not in the model's label2id"):
        prepare_classification_datasets(
            load_raw_datasets(data_args), tokenizer, data_args, {"ABBR": 0, "DESC": 1, "ENTY": 2, "HUM": 3}
        )


def test_validation_label_missing_from_train(tmp_path, tokenizer):
    train = write(tmp_path / "train.csv", "text,label\na,x\nthe,y\n")
    dev = write(tmp_path / "dev.csv", "text,label\na,z\n")
    data_args = args(train_file=train, validation_file=dev)
    with pytest.raises(DataError, match=r"labels \['z'\] appear outside the train split"):
        prepare_classification_datasets(load_raw_datasets(data_args), tokenizer, data_args)


def test_integer_labels_stay_ids_and_are_range_checked(tmp_path, tokenizer):
    train = write(tmp_path / "train.csv", "sentence,label\ngood,1\nbad,0\ngreat,2\n")
    data_args = args(train_file=train)
    raw = load_raw_datasets(data_args)
    processed, labels = prepare_classification_datasets(raw, tokenizer, data_args)
    assert labels == ["0", "1", "2"] and processed["train"]["labels"] == [1, 0, 2]
    with pytest.raises(DataError, match=r"integer labels \[2\] are outside 0..1"):
        prepare_classification_datasets(raw, tokenizer, data_args, {"negative": 0, "positive": 1})


def test_numeric_string_labels_sort_numerically(tmp_path, tokenizer):
    rows = [{"text": "a", "label": value} for value in ("10", "2", "1")]
    train = write(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    data_args = args(train_file=train)
    processed, labels = prepare_classification_datasets(load_raw_datasets(data_args), tokenizer, data_args)
    assert labels == ["1", "2", "10"] and processed["train"]["labels"] == [2, 1, 0]


def test_float_labels_mean_regression(tmp_path, tokenizer):
    train = write(tmp_path / "train.csv", "sentence1,sentence2,label\na,the,0.5\ngood,bad,4.2\n")
    data_args = args(train_file=train)
    processed, labels = prepare_classification_datasets(load_raw_datasets(data_args), tokenizer, data_args)
    assert labels == [] and processed["train"]["labels"] == pytest.approx([0.5, 4.2])


def test_whole_float_labels_are_class_ids_for_a_classifier(tmp_path, tokenizer):
    # 0.0/1.0 in a file, with a default-named two-class teacher: classification, not regression.
    train = write(tmp_path / "train.csv", "sentence,label\ngood,1.0\nbad,0.0\ngreat,1.0\n")
    data_args = args(train_file=train)
    processed, labels = prepare_classification_datasets(load_raw_datasets(data_args), tokenizer, data_args,
                                                        num_classes=2)
    assert labels == ["0", "1"] and processed["train"]["labels"] == [1, 0, 1]
    _, regression = prepare_classification_datasets(load_raw_datasets(data_args), tokenizer, data_args, num_classes=1)
    assert regression == []


@pytest.mark.parametrize(
    "text,message",
    [
        ("sentence,label\ngood,pos\nbad,\n", "row 2 of the train split has an empty 'label' label"),
        ("sentence,label\ngood,pos\n,neg\n", "row 2 of the train split has an empty 'sentence' text"),
        ("sentence,label\ngood,pos\n  ,neg\n", "row 2 of the train split has an empty 'sentence' text"),
        ("sentence,label\n1,pos\n2,neg\n", "text column 'sentence' of the train split holds int64 values"),
    ],
)
def test_empty_cells_and_numeric_text_are_refused_with_the_row(tmp_path, tokenizer, text, message):
    data_args = args(train_file=write(tmp_path / "train.csv", text))
    with pytest.raises(DataError, match=message):
        prepare_classification_datasets(load_raw_datasets(data_args), tokenizer, data_args)


def test_non_utf8_file_names_the_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("sentence,label\ngood,pos\ncaf\u00e9,neg\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"train.csv is not UTF-8 \(line 3, byte 4: b'\\xe9'\)"):
        load_raw_datasets(args(train_file=str(path)))


def test_sentence_pairs_are_auto_detected(tmp_path, tokenizer):
    train = write(tmp_path / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tjohn works\tmary lives\tentailment\n")
    data_args = args(train_file=train)
    processed, labels = prepare_classification_datasets(load_raw_datasets(data_args), tokenizer, data_args)
    assert labels == ["entailment"]
    assert processed["train"][0]["token_type_ids"].count(1) == 3  # "mary lives [SEP]"


def test_missing_columns_list_the_existing_ones(tmp_path, tokenizer):
    train = write(tmp_path / "train.csv", "body,target\ngood,1\n")
    raw = load_raw_datasets(args(train_file=train))
    with pytest.raises(DataError, match=r"none of the columns .* found \(columns: body, target\): set text_column"):
        prepare_classification_datasets(raw, tokenizer, args(train_file=train))
    missing_label = r"column 'label' is not in the train split \(columns: body, target\): set label_column"
    with pytest.raises(DataError, match=missing_label):
        prepare_classification_datasets(raw, tokenizer, args(train_file=train, text_column="body"))


def test_unlabeled_test_split_gets_no_labels(tmp_path, tokenizer):
    train = write(tmp_path / "train.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n")
    test = write(tmp_path / "test.tsv", "index\tsentence\n0\tgreat\n")
    data_args = args(train_file=train, test_file=test)
    processed, _ = prepare_classification_datasets(load_raw_datasets(data_args), tokenizer, data_args)
    assert "labels" in processed["train"].column_names
    assert processed["test"].column_names == ["input_ids", "token_type_ids", "attention_mask"]


def test_max_samples_shuffle_train_and_keep_the_first_eval_examples(tmp_path, tokenizer):
    train, dev, rows = _six_class_csv(tmp_path)
    data_args = args(train_file=train, validation_file=dev, max_train_samples=8, max_eval_samples=1)
    raw = load_raw_datasets(data_args)
    first, labels = prepare_classification_datasets(raw, tokenizer, data_args)
    again, _ = prepare_classification_datasets(raw, tokenizer, data_args)
    assert first["train"].num_rows == 8 and first["validation"].num_rows == 1
    assert first["train"]["input_ids"] == again["train"]["input_ids"]  # seeded: reproducible
    head = [tokenizer(text)["input_ids"] for text, _ in rows[:8]]
    assert first["train"]["input_ids"] != head  # a shuffled subset, not the file's head
    assert first["validation"]["labels"] == [labels.index("HUM")]


def test_check_label_order():
    check_label_order(["neg", "pos"], {0: "LABEL_0", 1: "LABEL_1"})  # default names carry no order
    check_label_order(["neg", "pos"], {0: "neg", 1: "pos"})
    check_label_order(["neg", "pos"], {"1": "pos", "0": "neg"})  # JSON-style string keys
    with pytest.raises(DataError, match=r"data \['neg', 'pos'\] vs model id2label \['pos', 'neg'\]"):
        check_label_order(["neg", "pos"], {0: "pos", 1: "neg"})


def test_classification_collator_pads_per_batch(tmp_path, tokenizer):
    train = write(tmp_path / "train.csv", "text,label\ngood,1\nthe movie was bad,0\n")
    data_args = args(train_file=train)
    processed, _ = prepare_classification_datasets(load_raw_datasets(data_args), tokenizer, data_args)
    batch = build_data_collator(tokenizer, data_args, "sequence_classification")(list(processed["train"]))
    assert batch["input_ids"].shape == (2, 6) and batch["labels"].tolist() == [1, 0]


# ---------------------------------------------------------------- token classification


def _ner_jsonl(tmp_path, rows) -> str:
    return write(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_token_classification_labels_the_first_sub_word_only(tmp_path, tokenizer):
    rows = [{"tokens": ["john", "lives", "in", "berlin"], "ner_tags": ["B-PER", "O", "O", "B-LOC"]}]
    data_args = args(train_file=_ner_jsonl(tmp_path, rows))
    processed = prepare_token_classification_datasets(load_raw_datasets(data_args), tokenizer, data_args, NER_LABELS)
    example = processed["train"][0]
    tokens = tokenizer.convert_ids_to_tokens(example["input_ids"])
    assert tokens == ["[CLS]", "john", "lives", "in", "ber", "##lin", "[SEP]"]
    assert example["labels"] == [-100, 1, 0, 0, 3, -100, -100]


def test_token_classification_accepts_tag_ids_and_label_column(tmp_path, tokenizer):
    rows = [{"words": ["mary", "lives"], "tags": [1, 0]}]
    data_args = args(train_file=_ner_jsonl(tmp_path, rows))
    processed = prepare_token_classification_datasets(load_raw_datasets(data_args), tokenizer, data_args, NER_LABELS)
    assert processed["train"][0]["labels"] == [-100, 1, 0, -100]


def test_token_classification_errors(tmp_path, tokenizer, vocab_file):
    rows = [{"tokens": ["john", "acme"], "ner_tags": ["B-PER", "B-ORG"]}]
    data_args = args(train_file=_ner_jsonl(tmp_path, rows))
    raw = load_raw_datasets(data_args)
    with pytest.raises(DataError, match=r"tags \['B-ORG'\] in the train split are not in label_list"):
        prepare_token_classification_datasets(raw, tokenizer, data_args, NER_LABELS)
    with pytest.raises(DataError, match="needs a fast tokenizer"):
        slow = BertTokenizerLegacy(vocab_file=str(vocab_file))
        prepare_token_classification_datasets(raw, slow, data_args, NER_LABELS)


# ---------------------------------------------------------------- language modelling


def _lm_text(tmp_path) -> str:
    lines = [" ".join(WORDS[i : i + 7]) for i in range(0, 28, 2)]
    return write(tmp_path / "valid.txt", "\n".join(lines[:7]) + "\n\n \n" + "\n".join(lines[7:]) + "\n")


def test_masked_lm_blocks(tmp_path, tokenizer):
    data_args = args(validation_file=_lm_text(tmp_path), block_size=16)
    processed = prepare_lm_datasets(load_raw_datasets(data_args), tokenizer, data_args, task="masked_lm")
    blocks = processed["validation"]
    assert blocks.num_rows == 14 * 9 // 16  # 14 non-blank lines of 7 words + [CLS]/[SEP]
    assert all(len(ids) == 16 for ids in blocks["input_ids"])
    assert "labels" not in blocks.column_names and "special_tokens_mask" in blocks.column_names
    batch = build_data_collator(tokenizer, data_args, "masked_lm")([blocks[i] for i in range(2)])
    assert batch["labels"].shape == (2, 16) and "special_tokens_mask" not in batch


def test_causal_lm_labels_copy_input_ids(tmp_path, tokenizer):
    data_args = args(validation_file=_lm_text(tmp_path), block_size=16, max_eval_samples=3)
    processed = prepare_lm_datasets(load_raw_datasets(data_args), tokenizer, data_args, task="causal_lm")
    assert processed["validation"].num_rows == 3
    assert processed["validation"]["labels"] == processed["validation"]["input_ids"]


def test_lm_errors(tmp_path, tokenizer):
    data_args = args(validation_file=_lm_text(tmp_path), block_size=1024)
    raw = load_raw_datasets(data_args)
    with pytest.raises(DataError, match="block_size=1024 exceeds the tokenizer's model_max_length=512"):
        prepare_lm_datasets(raw, tokenizer, data_args)
    short = args(validation_file=write(tmp_path / "short.txt", "good movie\n"), block_size=64)
    with pytest.raises(DataError, match="fewer than block_size=64 tokens"):
        prepare_lm_datasets(load_raw_datasets(short), tokenizer, short)


# ---------------------------------------------------------------- real GLUE files


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared GLUE/TREC data not at {SHARED_DATA}: set HFKD_SHARED_DIR to the shared folder")
    return SHARED_DATA


def test_real_mrpc_train_parses_3668_rows_of_5_columns(shared_data):
    raw = load_raw_datasets(args(train_file=str(shared_data / "mrpc" / "train.tsv")))
    assert raw["train"].num_rows == 3668
    assert raw["train"].column_names == ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    assert sum(raw["train"]["Quality"]) == 2474


def test_real_mrpc_folder_prepares_sentence_pairs(shared_data, tokenizer):
    data_args = args(dataset_name=str(shared_data / "mrpc"), label_column="Quality", max_train_samples=50)
    raw = load_raw_datasets(data_args)
    assert list(raw) == ["train", "validation"] and raw["validation"].num_rows == 408
    processed, labels = prepare_classification_datasets(raw, tokenizer, data_args)
    assert labels == ["0", "1"] and processed["train"].num_rows == 50
    assert 1 in processed["validation"][0]["token_type_ids"]


def test_real_sst2_dev_and_rte_labels(shared_data, tokenizer):
    sst2 = load_raw_datasets(args(validation_file=str(shared_data / "sst2" / "dev.tsv")))
    assert sst2["validation"].num_rows == 872 and sst2["validation"].column_names == ["sentence", "label"]
    assert sum(sst2["validation"]["label"]) == 444
    rte_args = args(validation_file=str(shared_data / "rte" / "dev.tsv"))
    processed, labels = prepare_classification_datasets(load_raw_datasets(rte_args), tokenizer, rte_args)
    assert labels == ["entailment", "not_entailment"]
    assert processed["validation"].num_rows == 277 and sum(processed["validation"]["labels"]) == 131


def test_real_trec_splits_and_coarse_labels(shared_data, tokenizer):
    trec = shared_data / "trec"
    data_args = args(train_file=str(trec / "train_5500.label"), validation_file=str(trec / "TREC_10.label"),
                     label_column="coarse_label")
    raw = load_raw_datasets(data_args)
    assert raw["train"].num_rows == 5452 and raw["validation"].num_rows == 500
    assert len(set(raw["train"]["fine_label"])) == 50 and len(set(raw["validation"]["fine_label"])) == 42
    processed, labels = prepare_classification_datasets(raw, tokenizer, data_args)
    assert labels == SIX_CLASS
    counts = [processed["validation"]["labels"].count(i) for i in range(6)]
    assert counts == [9, 138, 94, 65, 81, 113]  # ABBR, DESC, ENTY, HUM, LOC, NUM (data README)
