"""Several teachers: the KD target is the documented combination, checks cover every teacher, caches work."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification, default_data_collator

from conftest import bert_config, seq_cls_dataset, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer, build_teacher_cache
from hfkd.teacher.cache import FINGERPRINT_NAME, load_teacher_cache, teacher_cache_fingerprint
from hfkd.models import DistillationSetupError
from tolerance import assert_within, float32_bound, kl_magnitudes

T = 2.0
WEIGHTS = [3.0, 1.0]  # normalised to 0.75, 0.25


def config(tmp_path, **kw):
    defaults = dict(
        output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, per_device_train_batch_size=8,
        max_steps=4, learning_rate=1e-3, logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True,
        alpha_kd=1.0, alpha_ce=0.0, temperature=T, teacher_weights=WEIGHTS,
    )
    return DistillationConfig(**{**defaults, **kw})


def three_models():
    first, student = seq_cls_pair()
    torch.manual_seed(7)
    second = BertForSequenceClassification(bert_config(layers=3))
    with torch.no_grad():  # confident, disagreeing teachers: a KD term far from 0
        first.classifier.weight.mul_(100)
        second.classifier.weight.mul_(-60)
    return first, second, student


def batch(n=8):
    ds = seq_cls_dataset(n, 10, seed=3)
    return {k: torch.tensor(ds[k]) for k in ds.column_names}


def outputs(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


@pytest.mark.parametrize("combination", ["prob_mean", "logit_mean"])
def test_kd_target_and_loss_equal_the_documented_combination(tmp_path, combination):
    first, second, student = three_models()
    trainer = DistillationTrainer(model=student, teacher_model=[first, second],
                                  args=config(tmp_path, teacher_combination=combination))
    inputs = batch()
    # The same float32 logits the trainer gets (same models, inputs and kernels), combined in float64.
    z1, z2, s = (outputs(m, inputs).double() for m in (first, second, student))
    if combination == "prob_mean":
        log_p = torch.logsumexp(torch.stack([math.log(0.75) + F.log_softmax(z1 / T, -1),
                                             math.log(0.25) + F.log_softmax(z2 / T, -1)]), 0)
    else:
        log_p = F.log_softmax((0.75 * z1 + 0.25 * z2) / T, -1)

    with torch.inference_mode():
        first_out = trainer.teacher(**{k: v for k, v in inputs.items() if k != "labels"})
    target = trainer.teachers_side.kd_target(inputs, first_out, classes=3, temperature=T)
    # hfkd combines in float32: a few ulps of each teacher's scaled logits and softmax normaliser.
    sizes = torch.stack([z.abs() / T for z in (z1, z2)] + [(z / T).logsumexp(-1, keepdim=True).abs().expand_as(z)
                                                           for z in (z1, z2)], -1)
    assert_within(F.log_softmax(target.double() / T, -1), log_p, float32_bound(sizes, n=3, ulps=2, dim=-1), "target")
    if combination == "logit_mean":
        assert_within(target, 0.75 * z1 + 0.25 * z2, float32_bound(torch.stack([0.75 * z1, 0.25 * z2], -1), dim=-1))
    student.train()
    loss = trainer.compute_loss(student, dict(inputs))
    # The loss against hfkd's own (float32) target: KL in float32, within a few ulps of its terms.
    log_target, norm_target = F.log_softmax(target.double() / T, -1), (target.double() / T).logsumexp(-1)
    log_q, norm_q = F.log_softmax(s / T, -1), (s / T).logsumexp(-1)
    expected = (log_target.exp() * (log_target - log_q)).sum(-1).mean() * T**2
    bound = float32_bound(kl_magnitudes(log_target, log_q, norm_target, norm_q) * T**2 / len(s), n=3)
    assert loss.item() == pytest.approx(expected.item(), abs=bound)


def test_every_teacher_is_checked_and_named(tmp_path):
    first, _, student = three_models()
    other_labels = BertForSequenceClassification(bert_config(labels=4))
    with pytest.raises(DistillationSetupError, match="teacher 2 of 2: label counts differ: teacher num_labels=4"):
        DistillationTrainer(model=student, teacher_model=[first, other_labels], args=config(tmp_path))
    other_vocab = BertForSequenceClassification(bert_config())
    other_vocab.config.vocab_size = 120
    with pytest.raises(DistillationSetupError, match="teacher 2 of 2: vocabularies differ"):
        DistillationTrainer(model=student, teacher_model=[first, other_vocab], args=config(tmp_path))
    with pytest.raises(ValueError, match="teacher_weights has 2 entries for 3 teacher"):
        DistillationTrainer(model=student, teacher_model=[first, first, first], args=config(tmp_path))


def test_bad_multi_teacher_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="set teacher_combination='logit_mean'"):
        config(tmp_path, kd_loss="mse")
    with pytest.raises(ValueError, match="teacher_weights .* sum to 0"):
        config(tmp_path, teacher_weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="teacher_combination='vote' is not supported"):
        config(tmp_path, teacher_combination="vote")


def test_hidden_terms_use_the_first_teacher(tmp_path, tiny_dataset):
    first, second, student = three_models()
    args = config(tmp_path, alpha_hidden=1.0, layer_mapping=[[2, 4]], max_steps=2)
    trainer = DistillationTrainer(model=student, teacher_model=[first, second], args=args, train_dataset=tiny_dataset)
    assert trainer.teacher is first and trainer.layer_pairs == [(2, 4)]  # layer 4 exists only in the first
    trainer.train()
    assert all(h["hidden_loss"] > 0 for h in trainer.state.log_history if "loss" in h)
    described = trainer.distillation_settings()["teachers"]
    assert "(0.75)" in described and "(0.25)" in described and "hidden/attention terms from the first" in described


def test_training_from_a_two_teacher_cache_equals_online(tmp_path):
    data = seq_cls_dataset(32, 12)
    states = []
    for use_cache in (False, True):
        # float64: the cache's batches of 5 and training's of 8 then give the same teacher logits to ~1e-16,
        # which round to the same float32 values (see test_teacher_cache.assert_same_weights).
        first, second, student = (m.double() for m in three_models())
        train = data
        if use_cache:
            cache_dir = tmp_path / "cache"
            build_teacher_cache([first, second], data, default_data_collator, cache_dir, batch_size=5)
            stored = json.loads((cache_dir / FINGERPRINT_NAME).read_text())
            assert isinstance(stored["teacher_sha256"], list) and len(stored["teacher_sha256"]) == 2
            train = load_teacher_cache(cache_dir, teacher_cache_fingerprint([first, second], data))
            assert len(train[0]["teacher_logits"]) == 6  # two teachers x 3 classes, side by side
        teachers = None if use_cache else [first, second]
        DistillationTrainer(model=student, teacher_model=teachers, args=config(tmp_path, alpha_ce=0.5),
                            train_dataset=train).train()
        states.append(student.state_dict())
    for key in states[0]:
        assert states[0][key].dtype in (torch.float64, torch.int64), key
        torch.testing.assert_close(states[0][key], states[1][key], atol=1e-5, rtol=1e-5)


def test_cache_with_the_wrong_teacher_count_is_named(tmp_path):
    first, second, student = three_models()
    data = seq_cls_dataset(16, 12)
    cache = build_teacher_cache([first, second], data, default_data_collator, tmp_path / "cache")
    trainer = DistillationTrainer(model=student, args=config(tmp_path, teacher_weights=None), train_dataset=cache)
    with pytest.raises(ValueError, match="hold 6 values per item but 1 teacher"):
        trainer.train()
