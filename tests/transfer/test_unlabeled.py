"""Transfer sets: unlabeled rows (label -100) get KD but no CE, each term exactly normalised over its own items."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, concatenate_datasets
from transformers import BertForSequenceClassification, BertForTokenClassification, DataCollatorWithPadding

from conftest import VOCAB, bert_config, seq_cls_dataset, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.app.task_data import DataArguments, DataError
from hfkd.objective.items import UNLABELED, local_counts, unlabeled_items, with_unlabeled_rows
from hfkd.teacher.cache import build_teacher_cache
from hfkd.transfer.unlabeled import (
    TransferSetError,
    check_unlabeled_labels,
    filter_confident,
    mark_unlabeled,
    mix_unlabeled,
    teacher_confidence,
    warn_if_unreadable,
)

pytestmark = pytest.mark.usefixtures("datasets_cache")  # Arrow caches in tmp_path (conftest)

UNLABELED_ROWS = [1, 2, 5]  # 2 of the first 4 rows, 1 of the last 4: micro-batches of 2 and 3 labelled rows


def config(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, per_device_train_batch_size=8,
                    max_steps=1, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", save_strategy="no",
                    seed=0, disable_tqdm=True, logging_steps=1, alpha_kd=1.0, alpha_ce=1.0, temperature=2.0)
    return DistillationConfig(**{**defaults, **kw})


def mixed(data: Dataset, rows=UNLABELED_ROWS, token_task: bool = False) -> Dataset:
    def unlabel(row, index):
        if index in rows:
            row["labels"] = [UNLABELED] * len(row["labels"]) if token_task else UNLABELED
        return row
    return data.map(unlabel, with_indices=True)


def float64_pair(task="sequence"):
    torch.manual_seed(0)
    cls = BertForSequenceClassification if task == "sequence" else BertForTokenClassification
    return cls(bert_config(layers=4, labels=3)).double(), cls(bert_config(layers=2, labels=3)).double()


def step_terms(tmp_path, data, **kw):
    """The logged ce_loss and kd_loss (per-item means) of one step on all of `data`, weights untouched."""
    teacher, student = float64_pair()
    trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                  args=config(tmp_path, learning_rate=0.0, **kw), train_dataset=data)
    trainer.train()
    return next(h for h in trainer.state.log_history if "kd_loss" in h), (teacher, student)


def test_ce_covers_labelled_rows_only_and_kd_every_row(tmp_path):
    data = seq_cls_dataset(n=8)
    logs, (teacher, student) = step_terms(tmp_path, mixed(data))
    batch = {k: torch.tensor(data[k]) for k in ("input_ids", "attention_mask")}
    labels = torch.tensor(data["labels"])
    labelled = torch.tensor([i not in UNLABELED_ROWS for i in range(8)])
    with torch.no_grad():
        s, t = student(**batch).logits, teacher(**batch).logits
    ce = F.cross_entropy(s[labelled], labels[labelled])  # float64 reference over the labelled rows alone
    kd = 4.0 * F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True,
                        reduction="batchmean")  # every row, T² = 4
    assert logs["ce_loss"] == pytest.approx(float(ce), abs=2e-6)  # logged rounded to 6 decimals
    assert logs["kd_loss"] == pytest.approx(float(kd), abs=2e-6)
    assert (logs["labelled_items"], logs["all_items"]) == (5, 8)


def test_gradient_accumulation_is_exact_with_unlabeled_rows(tmp_path):
    """One SGD update from 2×4 accumulated mixed rows equals one from the batch of 8 (float64 models).

    The micro-batches hold 2 and 3 labelled rows of 4: normalising CE by all rows, or KD by the
    labelled ones, or either per micro-batch, moves the weights by ~1e-3; the runs agree to ~1e-16
    (the float32 loss arithmetic on the same values), 1e-6 leaves room for nothing else.
    """
    data = mixed(seq_cls_dataset(n=8))
    results = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        teacher, student = float64_pair()
        args = config(tmp_path, alpha_hidden=1.0, per_device_train_batch_size=batch_size,
                      gradient_accumulation_steps=accumulation)
        DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data).train()
        results.append(student.state_dict())
    for key, value in results[0].items():
        torch.testing.assert_close(value, results[1][key], atol=1e-6, rtol=1e-5, msg=key)


def test_gradient_accumulation_is_exact_for_unlabeled_token_rows(tmp_path):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (8, 6), generator=g)
    tags = (ids % 3).masked_fill(torch.rand(8, 6, generator=g) < 0.3, -100)
    data = mixed(Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 6] * 8,
                                    "labels": tags.tolist()}), token_task=True)
    results = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        teacher, student = float64_pair("token")
        args = config(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation)
        DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data).train()
        results.append(student.state_dict())
    for key, value in results[0].items():
        torch.testing.assert_close(value, results[1][key], atol=1e-6, rtol=1e-5, msg=key)


def test_item_counts_of_unlabeled_token_rows():
    labels = torch.tensor([[-100, 1, 2, -100], [-100, -100, -100, -100]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    mask = with_unlabeled_rows(labels.ne(-100), attention)
    assert mask.tolist() == [[False, True, True, False], [True, True, True, False]]
    assert int(unlabeled_items({"labels": labels, "attention_mask": attention}, causal=False)) == 3
    assert unlabeled_items({"labels": labels, "attention_mask": attention}, causal=True) == 0
    assert local_counts(labels, mask, 2) == (2, 5)
    assert local_counts(torch.tensor([0, -100, 1]), None, 3) == (2, 3)


def test_cached_teacher_equals_online_with_unlabeled_rows(tmp_path):
    data = mixed(seq_cls_dataset(n=16), rows=[0, 3, 4, 9, 15])
    teacher, student = float64_pair()
    twin = BertForSequenceClassification(student.config).double()
    twin.load_state_dict(student.state_dict())
    collator = DataCollatorWithPadding(_tokenizer(tmp_path))
    args = dict(per_device_train_batch_size=4, max_steps=4, optim="adamw_torch", learning_rate=1e-3)
    online = DistillationTrainer(model=student, teacher_model=teacher, data_collator=collator,
                                 args=config(tmp_path / "online", **args), train_dataset=data)
    online.train()
    cache = build_teacher_cache(teacher, data, collator, tmp_path / "cache", batch_size=16)
    assert cache["labels"] == data["labels"]  # the unlabeled rows are cached, still marked
    cached = DistillationTrainer(model=twin, teacher_model=None, data_collator=collator,
                                 args=config(tmp_path / "cached", **args), train_dataset=cache)
    cached.train()
    for (name, p), q in zip(online.model.named_parameters(), cached.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=name)  # see test_teacher_cache.assert_same_weights


def _tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, VOCAB)]))
    return BertTokenizerFast(vocab=str(path))


# ---------------------------------------------------------------------------- data mixing and filtering


def test_unlabeled_ratio_takes_that_many_rows_per_labelled_row():
    labelled = seq_cls_dataset(n=10)
    unlabeled = mark_unlabeled(seq_cls_dataset(n=50, seed=1).remove_columns("labels"))
    assert set(unlabeled["labels"]) == {UNLABELED}
    train = mix_unlabeled(labelled, unlabeled, ratio=2.5)
    assert (len(train), np.sum(np.array(train["labels"]) == UNLABELED)) == (35, 25)
    assert len(mix_unlabeled(labelled, unlabeled, max_samples=7)) == 17
    assert len(mix_unlabeled(labelled, unlabeled)) == 60
    with pytest.raises(TransferSetError, match="needs 60 unlabeled rows"):
        mix_unlabeled(labelled, unlabeled, ratio=6)


def test_unlabeled_rows_that_are_labelled_rows_are_dropped_before_sampling():
    labelled = seq_cls_dataset(n=10)
    pile = seq_cls_dataset(n=50, seed=1).remove_columns("labels")
    pile = concatenate_datasets([labelled.remove_columns("labels").select(range(4)), pile])
    unlabeled = mark_unlabeled(pile)
    assert len(mix_unlabeled(labelled, unlabeled)) == 60  # 54 unlabeled rows, 4 of them labelled ones
    labelled_ids = {tuple(ids) for ids in labelled["input_ids"]}
    mixed = mix_unlabeled(labelled, unlabeled, max_samples=50)
    extra = [tuple(ids) for ids, label in zip(mixed["input_ids"], mixed["labels"]) if label == UNLABELED]
    assert len(extra) == 50 and not labelled_ids & set(extra)


def test_confidence_filter_drops_unsure_unlabeled_rows_only():
    logits = [[4.0, 0.0], [0.1, 0.0], [0.0, 0.2], [0.0, 3.0], [0.0, 0.0]]
    data = Dataset.from_dict({"input_ids": [[1]] * 5, "labels": [0, UNLABELED, 1, UNLABELED, UNLABELED],
                              "teacher_logits": logits})
    confidence = teacher_confidence(np.array(logits), 2)
    assert confidence[3] == pytest.approx(1 / (1 + np.exp(-3.0)))
    kept, report = filter_confident(data, 0.9, num_classes=2)
    assert (report.kept, report.dropped) == (1, 2)
    assert kept["labels"] == [0, 1, UNLABELED]  # labelled rows stay, however unsure the teacher
    two_teachers = teacher_confidence(np.array([[4.0, 0.0, 0.0, 4.0]]), 2)  # they disagree: 0.5
    assert two_teachers[0] == pytest.approx(0.5)


# ---------------------------------------------------------------------------- bad input


def test_all_rows_unlabeled_with_ce_is_refused(tmp_path):
    teacher, student = seq_cls_pair()
    data = mixed(seq_cls_dataset(n=4), rows=range(4))
    with pytest.raises(TransferSetError, match="no labelled row.*alpha_ce=0"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path), train_dataset=data)
    DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, alpha_ce=0.0), train_dataset=data)
    selected = mixed(seq_cls_dataset(n=4), rows=[2, 3]).select([2, 3])  # the selection, not the table, counts
    with pytest.raises(TransferSetError, match="no labelled row"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path), train_dataset=selected)


@pytest.mark.parametrize("ratio", [0, -1.0, float("inf"), float("nan")])
def test_unlabeled_ratio_out_of_range_is_refused(ratio):
    with pytest.raises(TransferSetError, match="unlabeled_ratio"):
        DataArguments(train_file="train.tsv", unlabeled_ratio=ratio)


@pytest.mark.parametrize("threshold", [-0.1, 1.0, 2])
def test_min_confidence_out_of_range_is_refused(threshold):
    with pytest.raises(TransferSetError, match="unlabeled_min_confidence"):
        DataArguments(train_file="train.tsv", unlabeled_min_confidence=threshold)


def test_confidence_filter_needs_cached_logits():
    with pytest.raises(TransferSetError, match="teacher_cache_dir"):
        filter_confident(Dataset.from_dict({"input_ids": [[1]], "labels": [UNLABELED]}), 0.5, num_classes=2)


def test_unlabeled_file_with_other_classes_is_refused(caplog):
    with pytest.raises(TransferSetError, match=r"labels \['spam'\] .* classes \['0', '1'\]"):
        check_unlabeled_labels(["spam", "1", ""], ["0", "1"], "the unlabeled data")
    with caplog.at_level(logging.WARNING):
        check_unlabeled_labels([1, 0, None], ["0", "1"], "the unlabeled data")
    assert "values are ignored" in caplog.text


def test_transfer_set_of_unknown_tokens_warns_with_the_share(tmp_path, caplog):
    tokenizer = _tokenizer(tmp_path)
    rows = [tokenizer(text)["input_ids"] for text in ("das ist nicht w5", "wir sind w6 hier")]
    with caplog.at_level(logging.WARNING):
        share = warn_if_unreadable(rows, tokenizer)
    assert share == pytest.approx(6 / 8)
    assert "75% of the transfer set's tokens are unknown" in caplog.text


def test_recipe_data_reads_unlabeled_file_and_blank_train_labels(tmp_path):
    from hfkd.app.task_data import load_raw_datasets, prepare_classification_datasets

    (tmp_path / "train.tsv").write_text("sentence\tlabel\nw5 w6\t0\nw7\t\nw8 w9\t1\n", encoding="utf-8")
    (tmp_path / "extra.tsv").write_text("sentence\nw10 w11\nw12\nw13\n", encoding="utf-8")
    args = DataArguments(train_file=str(tmp_path / "train.tsv"), unlabeled_file=str(tmp_path / "extra.tsv"),
                         unlabeled_rows_in_train=True, unlabeled_ratio=1.5)
    processed, labels = prepare_classification_datasets(load_raw_datasets(args), _tokenizer(tmp_path), args)
    assert labels == ["0", "1"]
    assert sorted(processed["train"]["labels"]) == [UNLABELED] * 3 + [0, 1]  # 2 labelled + 1.5 × 2
    with pytest.raises(DataError, match="unlabeled_rows_in_train"):
        no_blank = DataArguments(train_file=str(tmp_path / "train.tsv"))
        prepare_classification_datasets(load_raw_datasets(no_blank), _tokenizer(tmp_path), no_blank)
