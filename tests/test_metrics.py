"""hfkd.metrics: bundled evaluate modules match scikit-learn/scipy/seqeval, offline."""

import math
import socket
import sys

import numpy as np
import pytest
import seqeval.metrics
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import EvalPrediction

from hfkd.metrics import (
    BUNDLED_METRICS,
    DEFAULT_METRIC,
    build_compute_metrics,
    load_metric,
    perplexity_from_loss,
    preprocess_logits_for_metrics,
)

SEEDS = (0, 1, 2)
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Offline flags as on an air-gapped machine, and any socket connection fails loudly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_bundled_metrics_are_the_documented_set():
    assert set(BUNDLED_METRICS) == {
        "accuracy", "f1", "matthews_correlation", "pearsonr", "spearmanr", "seqeval", "perplexity"
    }


@pytest.mark.parametrize("name", sorted(BUNDLED_METRICS))
def test_every_bundled_module_loads_offline(name):
    module = load_metric(name)
    assert module.name == name


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    preds, refs = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    result = load_metric("accuracy").compute(predictions=preds, references=refs)
    assert result["accuracy"] == pytest.approx(accuracy_score(refs, preds))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_classes,average", [(2, "binary"), (5, "macro"), (5, "micro"), (5, "weighted")])
def test_f1_matches_sklearn(seed, num_classes, average):
    rng = np.random.default_rng(seed)
    preds, refs = rng.integers(0, num_classes, 300), rng.integers(0, num_classes, 300)
    result = load_metric("f1").compute(predictions=preds, references=refs, average=average)
    assert result["f1"] == pytest.approx(f1_score(refs, preds, average=average))


def test_f1_rejects_an_unknown_average():
    with pytest.raises(ValueError, match="average='samples' is not supported"):
        load_metric("f1").compute(predictions=[0, 1], references=[0, 1], average="samples")


@pytest.mark.parametrize("seed", SEEDS)
def test_matthews_correlation_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, 3, 200)
    preds = np.where(rng.random(200) < 0.6, refs, rng.integers(0, 3, 200))
    result = load_metric("matthews_correlation").compute(predictions=preds, references=refs)
    assert result["matthews_correlation"] == pytest.approx(matthews_corrcoef(refs, preds))


@pytest.mark.parametrize("seed", SEEDS)
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    refs = rng.normal(size=150)
    preds = refs + rng.normal(scale=0.8, size=150)
    pearson = load_metric("pearsonr").compute(predictions=preds, references=refs, return_pvalue=True)
    spearman = load_metric("spearmanr").compute(predictions=preds, references=refs, return_pvalue=True)
    assert pearson["pearsonr"] == pytest.approx(pearsonr(refs, preds).statistic)
    assert pearson["p-value"] == pytest.approx(pearsonr(refs, preds).pvalue)
    assert spearman["spearmanr"] == pytest.approx(spearmanr(refs, preds).statistic)
    assert spearman["spearmanr_pvalue"] == pytest.approx(spearmanr(refs, preds).pvalue)


def _random_tag_sequences(rng, count):
    lengths = rng.integers(1, 12, count)
    refs = [[TAGS[i] for i in rng.integers(0, len(TAGS), n)] for n in lengths]
    preds = [[tag if rng.random() < 0.7 else TAGS[rng.integers(0, len(TAGS))] for tag in seq] for seq in refs]
    return preds, refs


@pytest.mark.parametrize("seed", SEEDS)
def test_seqeval_matches_the_seqeval_package(seed):
    preds, refs = _random_tag_sequences(np.random.default_rng(seed), 40)
    result = load_metric("seqeval").compute(predictions=preds, references=refs)
    assert result["precision"] == pytest.approx(seqeval.metrics.precision_score(refs, preds, zero_division=0))
    assert result["recall"] == pytest.approx(seqeval.metrics.recall_score(refs, preds, zero_division=0))
    assert result["f1"] == pytest.approx(seqeval.metrics.f1_score(refs, preds, zero_division=0))
    assert result["accuracy"] == pytest.approx(seqeval.metrics.accuracy_score(refs, preds))
    assert set(result["per_type"]) <= {"PER", "LOC", "ORG"}


def test_seqeval_strict_mode_follows_the_scheme():
    refs = [["B-PER", "I-PER", "O"]]
    preds = [["I-PER", "I-PER", "O"]]  # lenient (CoNLL) accepts a chunk opened by I-; IOB2 strict does not
    metric = load_metric("seqeval")
    assert metric.compute(predictions=preds, references=refs)["f1"] == 1.0
    assert metric.compute(predictions=preds, references=refs, mode="strict", scheme="IOB2")["f1"] == 0.0


def test_seqeval_without_the_package_fails_at_load_with_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "seqeval", None)
    monkeypatch.setitem(sys.modules, "seqeval.metrics", None)
    with pytest.raises(ImportError, match="pip install seqeval"):
        load_metric("seqeval")


@pytest.mark.parametrize("seed", SEEDS)
def test_perplexity_is_exp_of_token_weighted_nll(seed):
    rng = np.random.default_rng(seed)
    losses, counts = rng.uniform(1.0, 5.0, 10), rng.integers(1, 500, 10)
    result = load_metric("perplexity").compute(predictions=losses, references=counts)
    assert result["perplexity"] == pytest.approx(math.exp((losses * counts).sum() / counts.sum()))
    single = load_metric("perplexity").compute(predictions=[losses[0]], references=[1])
    assert single["perplexity"] == pytest.approx(perplexity_from_loss(losses[0]))


def test_perplexity_from_loss_handles_overflow():
    assert perplexity_from_loss(0.0) == 1.0
    assert perplexity_from_loss(2.0) == pytest.approx(math.exp(2.0))
    assert perplexity_from_loss(1e6) == math.inf


def test_unknown_metric_raises_a_value_error_listing_bundled_names():
    with pytest.raises(ValueError, match="not bundled with hfkd") as info:
        load_metric("surely_not_a_metric_xyz")
    for name in BUNDLED_METRICS:
        assert name in str(info.value)


# ---------------------------------------------------------------- build_compute_metrics


def test_sequence_classification_binary_defaults():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(64, 2)), rng.integers(0, 2, 64)
    result = build_compute_metrics("sequence_classification")(EvalPrediction(predictions=logits, label_ids=labels))
    preds = logits.argmax(-1)
    assert set(result) == {"accuracy", "f1"}
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert result["f1"] == pytest.approx(f1_score(labels, preds, average="binary"))
    assert all(isinstance(value, float) for value in result.values())


def test_sequence_classification_multiclass_uses_macro_f1_and_first_tuple_element():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(80, 4)), rng.integers(0, 4, 80)
    hidden = rng.normal(size=(80, 3, 8))
    fn = build_compute_metrics("sequence_classification")
    result = fn(EvalPrediction(predictions=(logits, hidden), label_ids=labels))
    assert result["f1"] == pytest.approx(f1_score(labels, logits.argmax(-1), average="macro"))


def test_sequence_classification_argmaxed_ids_use_id2label_for_the_class_count():
    rng = np.random.default_rng(2)
    preds, labels = rng.integers(0, 2, 50), rng.integers(0, 2, 50)  # only 2 classes seen, 3 exist
    fn = build_compute_metrics("sequence_classification", id2label={0: "a", 1: "b", 2: "c"})
    result = fn(EvalPrediction(predictions=preds, label_ids=labels))
    assert result["f1"] == pytest.approx(f1_score(labels, preds, average="macro"))


def test_sequence_classification_named_metrics_and_f1_variants():
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(60, 3)), rng.integers(0, 3, 60)
    fn = build_compute_metrics("sequence_classification", ["matthews_correlation", "f1_weighted", "f1_micro"])
    result = fn(EvalPrediction(predictions=logits, label_ids=labels))
    preds = logits.argmax(-1)
    assert set(result) == {"matthews_correlation", "f1_weighted", "f1_micro"}
    assert result["matthews_correlation"] == pytest.approx(matthews_corrcoef(labels, preds))
    assert result["f1_weighted"] == pytest.approx(f1_score(labels, preds, average="weighted"))
    assert result["f1_micro"] == pytest.approx(f1_score(labels, preds, average="micro"))


@pytest.mark.parametrize("task", ["sequence_classification", "sequence_regression"])
def test_regression_outputs_give_correlations(task):
    rng = np.random.default_rng(4)
    labels = rng.uniform(0, 5, 40)
    logits = (labels + rng.normal(size=40)).reshape(-1, 1)
    result = build_compute_metrics(task)(EvalPrediction(predictions=logits, label_ids=labels))
    assert set(result) == {"pearsonr", "spearmanr"}
    assert result["pearsonr"] == pytest.approx(pearsonr(labels, logits[:, 0]).statistic)
    assert result["spearmanr"] == pytest.approx(spearmanr(labels, logits[:, 0]).statistic)


def test_token_classification_scores_entities_and_skips_ignored_labels():
    rng = np.random.default_rng(5)
    id2label = dict(enumerate(TAGS))
    labels = rng.integers(0, len(TAGS), (6, 10))
    labels[:, 0] = -100  # [CLS]
    labels[:, 7:] = -100  # padding
    labels[2, 3] = -100  # a non-first sub-word
    logits = rng.normal(size=(6, 10, len(TAGS)))
    result = build_compute_metrics("token_classification", id2label=id2label)(
        EvalPrediction(predictions=logits, label_ids=labels)
    )
    preds = logits.argmax(-1)
    refs_tags = [[TAGS[l] for l in row if l != -100] for row in labels]
    pred_tags = [[TAGS[p] for p, l in zip(prow, row) if l != -100] for prow, row in zip(preds, labels)]
    assert set(result) == {"precision", "recall", "f1", "accuracy"}
    assert result["f1"] == pytest.approx(seqeval.metrics.f1_score(refs_tags, pred_tags, zero_division=0))
    assert result["accuracy"] == pytest.approx(seqeval.metrics.accuracy_score(refs_tags, pred_tags))


def test_token_classification_needs_id2label_and_seqeval():
    with pytest.raises(ValueError, match="needs id2label"):
        build_compute_metrics("token_classification")
    with pytest.raises(ValueError, match="seqeval"):
        build_compute_metrics("token_classification", ["accuracy"], id2label={0: "O"})


def test_masked_lm_token_accuracy_ignores_unmasked_positions():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(4, 12, 30)).astype(np.float32)
    labels = np.full((4, 12), -100)
    masked = rng.random((4, 12)) < 0.3
    labels[masked] = rng.integers(0, 30, masked.sum())
    result = build_compute_metrics("masked_lm")(EvalPrediction(predictions=logits, label_ids=labels))
    expected = (logits.argmax(-1)[masked] == labels[masked]).mean()
    assert result["accuracy"] == pytest.approx(expected)


def test_causal_lm_compares_position_t_with_label_t_plus_1():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 50, (3, 9))
    labels[:, -2:] = -100  # padding
    preds = np.zeros_like(labels)
    preds[:, :-1] = np.where(labels[:, 1:] == -100, 0, labels[:, 1:])  # each position predicts the next token
    result = build_compute_metrics("causal_lm")(EvalPrediction(predictions=preds, label_ids=labels))
    assert result == {"accuracy": 1.0}
    masked = build_compute_metrics("masked_lm")(EvalPrediction(predictions=preds, label_ids=labels))
    assert masked["accuracy"] < 0.5


def test_preprocess_logits_for_metrics_argmaxes_the_first_output():
    torch = pytest.importorskip("torch")
    logits = torch.randn(2, 5, 11)
    ids = preprocess_logits_for_metrics((logits, torch.randn(2, 5, 3)), torch.zeros(2, 5))
    assert torch.equal(ids, logits.argmax(-1))
    result = build_compute_metrics("masked_lm")(EvalPrediction(predictions=ids.numpy(), label_ids=ids.numpy()))
    assert result["accuracy"] == 1.0


@pytest.mark.parametrize("task", sorted(DEFAULT_METRIC))
def test_default_metric_is_a_key_of_the_task_output(task):
    rng = np.random.default_rng(8)
    if task in ("sequence_classification", "sequence_regression"):
        width = 3 if task == "sequence_classification" else 1
        pred = EvalPrediction(predictions=rng.normal(size=(20, width)), label_ids=rng.integers(0, 3, 20))
        fn = build_compute_metrics(task)
    elif task == "token_classification":
        logits, labels = rng.normal(size=(3, 6, len(TAGS))), rng.integers(0, len(TAGS), (3, 6))
        pred = EvalPrediction(predictions=logits, label_ids=labels)
        fn = build_compute_metrics(task, id2label=dict(enumerate(TAGS)))
    else:
        pred = EvalPrediction(predictions=rng.normal(size=(2, 6, 9)), label_ids=rng.integers(0, 9, (2, 6)))
        fn = build_compute_metrics(task)
    assert DEFAULT_METRIC[task] in fn(pred)


def test_unknown_task_raises():
    with pytest.raises(ValueError, match="unknown task"):
        build_compute_metrics("summarization")
