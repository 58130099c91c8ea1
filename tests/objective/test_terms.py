"""User-registered objective terms: they train, log, schedule, stage, reach the model card and are
exact under gradient accumulation, like the built-in ones."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import BertForTokenClassification

import hfkd
from conftest import bert_config, seq_cls_dataset, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.objective.terms import TERMS, unregister_term


def margin(ctx):
    """Hinge on the student's top-1 vs top-2 logit gap, summed over the items that count."""
    top2 = ctx.student_logits.topk(2, dim=-1).values
    return torch.relu(1.0 - (top2[..., 0] - top2[..., 1]))[ctx.item_mask()].sum()


def teacher_agreement(ctx):
    """Squared distance between student and teacher logits per item (needs the teacher)."""
    return (ctx.student_logits - ctx.teacher_logits).pow(2).sum(-1)[ctx.item_mask()].sum()


@pytest.fixture
def registered():
    hfkd.register_term("margin", margin, needs={"labels"}, normalise="per_item")
    hfkd.register_term("agree", teacher_agreement, needs={"teacher_logits"}, normalise="per_item")
    yield
    unregister_term("margin")
    unregister_term("agree")


def config(tmp_path, name="run", **kw):
    defaults = dict(output_dir=str(tmp_path / name), report_to=[], use_cpu=True, per_device_train_batch_size=8,
                    max_steps=4, learning_rate=1e-3, logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True,
                    alpha_kd=0.5, alpha_ce=0.5)
    return DistillationConfig(**{**defaults, **kw})


def test_a_registered_term_trains_logs_and_reaches_the_model_card(tmp_path, registered):
    teacher, student = seq_cls_pair()
    args = config(tmp_path, term_weights={"margin": 0.5, "agree": 0.1})
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=seq_cls_dataset(32))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    student.train()
    loss = trainer.compute_loss(student, dict(batch))
    logged = {name: float(value) for name, value in trainer._term_sums.items()}
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
        top2 = logits.topk(2, dim=-1).values
        expected_margin = torch.relu(1.0 - (top2[:, 0] - top2[:, 1])).mean()
    assert logged["margin_loss"] == pytest.approx(float(expected_margin), rel=1e-6, abs=1e-7)
    expected = sum(w * logged[f"{n}_loss"] for n, w in (("ce", 0.5), ("kd", 0.5), ("margin", 0.5), ("agree", 0.1)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    trainer._term_sums.clear()
    trainer._term_steps = 0

    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4 and all("margin_loss" in h and "agree_loss" in h for h in logs)
    settings = trainer.distillation_settings()
    assert "0.5·MARGIN" in settings["loss"] and "0.1·AGREE" in settings["loss"]
    assert settings["margin_loss"] == "user-registered term (per_item)"


def test_a_registered_term_is_scheduled_and_staged(tmp_path, registered):
    teacher, student = seq_cls_pair()
    args = config(tmp_path, term_weights={"margin": 1.0}, loss_weight_schedule="linear",
                  loss_weights_end={"alpha_margin": 0.0})
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=seq_cls_dataset(32))
    trainer.train()
    weights = [h["alpha_margin"] for h in trainer.state.log_history if "loss" in h]
    assert weights == pytest.approx([1.0, 0.75, 0.5, 0.25])

    teacher, student = seq_cls_pair()
    stages = [{"max_steps": 2, "alpha_margin": 1.0, "alpha_kd": 0.0}, {"max_steps": 2, "alpha_margin": 0.0}]
    args = config(tmp_path, "staged", max_steps=-1, term_weights={"margin": 1.0}, stages=stages)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=seq_cls_dataset(32))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [("margin_loss" in h, "kd_loss" in h, h["stage"]) for h in logs] == [
        (True, False, 1), (True, False, 1), (False, True, 2), (False, True, 2)]


def _ragged_token_data(n: int = 8, length: int = 10, labels: int = 4) -> Dataset:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (n, length), generator=g)
    tags = ids % labels
    tags[torch.rand(n, length, generator=g) < 0.4] = -100  # uneven label counts per example
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * length] * n, "labels": tags.tolist()})


def test_a_registered_per_item_term_is_exact_under_gradient_accumulation(tmp_path, registered):
    """One update from 2x4 accumulated examples equals one from a batch of 8, although the micro-batches
    hold different numbers of labelled tokens. float64, so the 1e-12 bound is far above any summation-order
    difference between CPUs and far below the error a per-micro-batch mean would make."""
    data = _ragged_token_data()
    results = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        teacher = BertForTokenClassification(bert_config(layers=4, labels=4)).double()
        student = BertForTokenClassification(bert_config(layers=2, labels=4)).double()
        args = config(tmp_path, alpha_kd=0.0, alpha_ce=0.0, term_weights={"margin": 1.0}, max_steps=1, optim="sgd",
                      learning_rate=0.5, per_device_train_batch_size=batch_size,
                      gradient_accumulation_steps=accumulation, lr_scheduler_type="constant")
        DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data).train()
        results.append({k: v.clone() for k, v in student.state_dict().items()})
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], atol=1e-12, rtol=0)
    torch.manual_seed(0)  # the same initial student as both runs: the update itself is far from zero
    BertForTokenClassification(bert_config(layers=4, labels=4))
    initial = BertForTokenClassification(bert_config(layers=2, labels=4)).double().state_dict()
    assert float((results[0]["classifier.weight"] - initial["classifier.weight"]).abs().max()) > 1e-4


def test_bad_term_registrations_and_weights_are_refused(tmp_path, registered):
    with pytest.raises(ValueError, match="term_weights names 'nope', which is not registered"):
        config(tmp_path, term_weights={"nope": 1.0})
    with pytest.raises(ValueError, match="built-in term 'kd': set alpha_kd instead"):
        config(tmp_path, term_weights={"kd": 1.0})
    with pytest.raises(ValueError, match="alpha_margin must be a finite number >= 0"):
        config(tmp_path, term_weights={"margin": -1.0})
    with pytest.raises(ValueError, match="already registered"):
        hfkd.register_term("margin", margin)
    with pytest.raises(ValueError, match="unknown; choose from"):
        hfkd.register_term("other", margin, needs={"logits"})
    with pytest.raises(ValueError, match="normalise='mean'"):
        hfkd.register_term("other", margin, normalise="mean")
    with pytest.raises(ValueError, match="built-in term"):
        unregister_term("ce")
    assert "other" not in TERMS


def test_a_term_needing_full_logits_is_refused_with_a_top_k_cache(tmp_path, registered):
    from transformers import GPT2Config, GPT2LMHeadModel, default_data_collator

    from hfkd.teacher.cache import build_teacher_cache

    torch.manual_seed(0)
    teacher, student = (GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=16, n_layer=n, n_head=2, n_positions=16))
                        for n in (2, 1))
    ids = torch.randint(1, 100, (8, 6))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 6] * 8, "labels": ids.tolist()})
    collator = default_data_collator
    cache = build_teacher_cache(teacher, data, collator, tmp_path / "cache", top_k=5, temperature=2.0)
    with pytest.raises(ValueError, match=r"term\(s\) \['agree'\] need the teacher's full logits"):
        DistillationTrainer(model=student, args=config(tmp_path, temperature=2.0, term_weights={"agree": 1.0}),
                            train_dataset=cache, data_collator=collator)
