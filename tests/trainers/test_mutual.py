"""Deep mutual learning: the loss against a hand computation, saving/evaluation layout, and the
peers' agreement the mutual KD term produces (on every seed tried)."""

import copy
import os
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import BertForSequenceClassification, Trainer, TrainingArguments

from conftest import VOCAB, bert_config, seq_cls_dataset
from hfkd.trainers.mutual import MutualDistillationConfig, MutualDistillationTrainer, peer_dir
from tolerance import assert_within, float32_bound, kl_magnitudes


def config(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, per_device_train_batch_size=8,
                    max_steps=2, learning_rate=1e-3, save_strategy="no", seed=0, disable_tqdm=True,
                    alpha_ce=0.5, alpha_kd=1.0, temperature=2.0)
    return MutualDistillationConfig(**{**defaults, **kw})


def peers(n=2, seed=0, hidden=(32, 32, 32)):
    torch.manual_seed(seed)
    return [BertForSequenceClassification(bert_config(layers=1 + i % 2, hidden=hidden[i])) for i in range(n)]


def batch(n=6, seed=0):
    rows = seq_cls_dataset(n=n, seed=seed)
    return {k: torch.tensor(v) for k, v in rows.to_dict().items()}


def keep_logits(models):
    """Forward hooks that keep each model's logits (gradients retained): [[logits of each call], ...]."""
    kept = [[] for _ in models]

    def hook(store, module, args, output):
        output.logits.retain_grad()
        store.append(output.logits)

    return kept, [m.register_forward_hook(partial(hook, store)) for store, m in zip(kept, models)]


def softmax_grad_sizes(target, log_q, norm_q, log_target=None, norm_target=None):
    """Per logit, the sizes a float32 gradient q - target of a softmax CE/KL is rounded from: q and the
    target, times the log-probabilities and normalisers they come from (exact float64 inputs)."""
    logs = 1 + log_q.abs() + norm_q.abs().unsqueeze(-1)
    if log_target is not None:
        logs = logs + log_target.abs() + norm_target.abs().unsqueeze(-1)
    return (target + log_q.exp()) * logs


def assert_grads_follow_from_logit_grads(models, logit_grads, inputs):
    """Each model's parameter gradients are its float64 backward pass of those logit gradients: hfkd's
    float32 loss arithmetic only enters through the logit gradients (checked against their own bound)."""
    for model, grad in zip(models, logit_grads):
        twin = copy.deepcopy(model)
        twin.zero_grad(set_to_none=True)
        twin(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.backward(grad)
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-12, rtol=1e-9, msg=name)  # float64 both


def test_loss_and_gradients_match_a_hand_computed_dml_objective(tmp_path):
    # float64 peers: the reference is exact, the error left is hfkd's float32 loss arithmetic.
    models = [m.double() for m in peers(3, hidden=(32, 16, 24))]
    weights = [1.0, 0.5, 2.0]
    args = config(tmp_path, alpha_ce=0.3, alpha_kd=0.7, temperature=2.0, peer_kd_weights=weights)
    trainer = MutualDistillationTrainer(peers=models, args=args)
    inputs = batch()
    trainer.model.train()
    kept, hooks = keep_logits(models)
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    for hook in hooks:
        hook.remove()
    assert [len(k) for k in kept] == [1, 1, 1]

    # Independent: CE_i + w_i * mean_j T² KL(p_j/T || p_i/T), targets p_j fixed (no gradient).
    twins = [copy.deepcopy(m).train() for m in models]
    logits = [m(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits for m in twins]
    for z in logits:
        z.retain_grad()
    labels, n = inputs["labels"], len(inputs["labels"])
    onehot = F.one_hot(labels, 3).double()
    expected, sizes, grad_sizes = 0.0, 0.0, []
    for i, (z_i, w_i) in enumerate(zip(logits, weights)):
        kls = [F.kl_div(F.log_softmax(z_i / 2, -1), F.softmax(z_j.detach() / 2, -1), reduction="batchmean") * 4
               for j, z_j in enumerate(logits) if j != i]
        expected = expected + 0.3 * F.cross_entropy(z_i, labels) + 0.7 * w_i * sum(kls) / len(kls)
        # What hfkd sums in float32: -log q_y with its normaliser, and each T² KL's terms (tests/tolerance.py).
        log_q1, norm_q1 = F.log_softmax(z_i, -1).detach(), z_i.logsumexp(-1).detach()
        log_q, norm_q = F.log_softmax(z_i / 2, -1).detach(), (z_i / 2).logsumexp(-1).detach()
        sizes += 0.3 * float((log_q1.gather(1, labels[:, None]).abs()[:, 0] + norm_q1.abs()).sum()) / n
        grad = 0.3 / n * softmax_grad_sizes(onehot, log_q1, norm_q1)
        kd_weight = 0.7 * w_i / len(kls)
        for j, z_j in enumerate(logits):
            if j != i:
                log_p, norm_p = F.log_softmax(z_j / 2, -1).detach(), (z_j / 2).logsumexp(-1).detach()
                sizes += kd_weight * 4 * float(kl_magnitudes(log_p, log_q, norm_p, norm_q).sum()) / n  # T² = 4
                grad = grad + kd_weight * 2 / n * softmax_grad_sizes(log_p.exp(), log_q, norm_q, log_p, norm_p)
        grad_sizes.append(grad)
    expected.backward()
    assert_within(loss, expected, float32_bound(sizes, n=3 * n), "loss")
    for i, (library, twin) in enumerate(zip(kept, logits)):
        assert_within(library[0].grad, twin.grad, float32_bound(grad_sizes[i], n=3, ulps=2, dim=-1).unsqueeze(-1),
                      f"peer {i} logit gradients")
    assert_grads_follow_from_logit_grads(models, [k[0].grad for k in kept], inputs)


def test_zero_kd_weight_peer_learns_from_labels_only(tmp_path):
    """[1, 0]: the second peer (a teacher trained alongside) gets the plain CE gradient."""
    models = [m.double() for m in peers(2)]  # float64: see the test above
    trainer = MutualDistillationTrainer(peers=models, args=config(tmp_path, peer_kd_weights=[1, 0]))
    inputs = batch()
    trainer.model.train()
    kept, hooks = keep_logits(models[1:])
    trainer.compute_loss(trainer.model, inputs).backward()
    for hook in hooks:
        hook.remove()
    twin = copy.deepcopy(models[1])
    logits = twin(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    logits.retain_grad()
    (0.5 * F.cross_entropy(logits, inputs["labels"])).backward()
    # The CE gradient 0.5 (q - onehot) / 6 per logit, within float32 rounding: no KD gradient on top.
    log_q, norm_q = F.log_softmax(logits, -1).detach(), logits.logsumexp(-1).detach()
    sizes = 0.5 / 6 * softmax_grad_sizes(F.one_hot(inputs["labels"], 3).double(), log_q, norm_q)
    assert_within(kept[0][0].grad, logits.grad, float32_bound(sizes, n=3, dim=-1).unsqueeze(-1), "logit gradients")
    assert_grads_follow_from_logit_grads(models[1:], [kept[0][0].grad], inputs)


def test_evaluation_per_peer_and_saved_layout(tmp_path):
    from hfkd.metrics import build_compute_metrics

    models = peers(2)
    data = seq_cls_dataset(n=16)
    trainer = MutualDistillationTrainer(peers=models, args=config(tmp_path), train_dataset=data, eval_dataset=data,
                                        compute_metrics=build_compute_metrics("sequence_classification"))
    trainer.train()
    metrics = trainer.evaluate()
    for i, model in enumerate(models):
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(data["input_ids"])).logits
        # An argmax: exact, as these logits' top-2 gaps (>= 2e-4) dwarf the float32 effect of batching.
        accuracy = (logits.argmax(-1) == torch.tensor(data["labels"])).float().mean().item()
        assert metrics[f"eval_peer{i}_accuracy"] == pytest.approx(accuracy)
    assert metrics["eval_accuracy"] == metrics["eval_peer0_accuracy"]
    assert metrics["eval_loss"] == metrics["eval_peer0_loss"]

    out = str(tmp_path / "saved")
    trainer.save_model(out)
    for i, model in enumerate(models):
        loaded = BertForSequenceClassification.from_pretrained(peer_dir(out, i))
        for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
            torch.testing.assert_close(p, q, msg=name)
    assert os.path.isdir(os.path.join(out, "peer1")) and not os.path.exists(os.path.join(out, "peer0"))

    # A checkpoint in that layout resumes every peer.
    fresh = peers(2, seed=1)
    resumed = MutualDistillationTrainer(peers=fresh, args=config(tmp_path))
    resumed._load_from_checkpoint(out)
    for model, other in zip(models, fresh):
        for p, q in zip(model.parameters(), other.parameters()):
            torch.testing.assert_close(p, q)


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="alpha_hidden"):
        config(tmp_path, alpha_hidden=1.0)
    with pytest.raises(ValueError, match="temperature_schedule"):
        config(tmp_path, temperature_schedule="linear", temperature_end=1.0)
    with pytest.raises(ValueError, match="peer_kd_weights"):
        MutualDistillationTrainer(peers=peers(2), args=config(tmp_path, peer_kd_weights=[1.0]))
    with pytest.raises(ValueError, match="at least 2 peers"):
        MutualDistillationTrainer(peers=peers(1), args=config(tmp_path))


def noisy_task(n, noise, seed, length=8, labels=3):
    """Label = first token mod 3, with a fraction `noise` of labels redrawn at random."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    y = ids[:, 0] % labels
    y = torch.where(torch.rand(n, generator=g) < noise, torch.randint(0, labels, (n,), generator=g), y)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * length] * n, "labels": y.tolist()})


def held_out_log_probs(model, data):
    model.eval()
    with torch.no_grad():
        return F.log_softmax(model(input_ids=torch.tensor(data["input_ids"])).logits.double(), -1)


def disagreement(log_p, log_q):
    """Symmetric KL between two models' predictions, averaged over the examples."""
    return float(((log_p.exp() * (log_p - log_q)).sum(-1) + (log_q.exp() * (log_q - log_p)).sum(-1)).mean() / 2)


@pytest.mark.parametrize("seed", range(5))
def test_mutual_learning_pulls_peer_predictions_together(tmp_path, seed):
    """The KD term of deep mutual learning makes the peers agree: on held-out inputs, two peers trained
    mutually (alpha_kd=1) disagree less (symmetric KL of their predictions) than the same two
    initialisations trained alone for the same steps on the same batches. Holds on every seed tried
    (0-4, all run here): at 60 steps the mutual KL is 0.51-0.76 of the alone KL, under the 0.9 asserted;
    with the KD gradient cut (the peers' own logits detached) it is 0.94 on seed 0 and the test fails.

    Whether mutual learning also ends *more accurate* than training alone (on 40% label noise) is true
    on most seeds, not all: a benchmark question (BENCHMARKS.md compares the methods), not asserted here."""
    train, test = noisy_task(256, 0.4, seed), noisy_task(256, 0.0, 1000 + seed)
    torch.manual_seed(seed)
    mutual = [BertForSequenceClassification(bert_config(layers=2)) for _ in range(2)]
    alone = [copy.deepcopy(m) for m in mutual]
    common = dict(output_dir=str(tmp_path / "o"), report_to=[], use_cpu=True, per_device_train_batch_size=32,
                  max_steps=60, learning_rate=1e-3, save_strategy="no", seed=seed, disable_tqdm=True,
                  logging_steps=1000)
    MutualDistillationTrainer(peers=mutual, args=MutualDistillationConfig(
        **common, alpha_ce=1.0, alpha_kd=1.0, temperature=1.0), train_dataset=train).train()
    for model in alone:
        Trainer(model=model, args=TrainingArguments(**common), train_dataset=train).train()
    kl_mutual = disagreement(*(held_out_log_probs(m, test) for m in mutual))
    kl_alone = disagreement(*(held_out_log_probs(m, test) for m in alone))
    assert kl_mutual < 0.9 * kl_alone, f"seed {seed}: peer KL {kl_mutual:.4g} (mutual) vs {kl_alone:.4g} (alone)"


def test_resume_skips_a_checkpoint_killed_while_saving(tmp_path):
    """`resume_from_checkpoint=True` takes the newest *complete* checkpoint (hfkd.trainers.checkpoints), as
    DistillationTrainer does; a truncated trainer_state.json marks the newer one as incomplete."""
    data = seq_cls_dataset(n=16)
    trainer = MutualDistillationTrainer(peers=peers(2), args=config(tmp_path, max_steps=4, save_strategy="steps",
                                                                    save_steps=2), train_dataset=data)
    trainer.train()
    out = tmp_path / "out"
    state = out / "checkpoint-4" / "trainer_state.json"
    state.write_text(state.read_text()[:40])  # killed mid-write
    resumed = MutualDistillationTrainer(peers=peers(2, seed=1), args=config(tmp_path, max_steps=4,
                                                                            save_strategy="no"), train_dataset=data)
    loaded = []
    original = resumed._load_from_checkpoint
    resumed._load_from_checkpoint = lambda path, model=None: (loaded.append(path), original(path, model))
    resumed.train(resume_from_checkpoint=True)
    assert loaded == [str(out / "checkpoint-2")]
    with pytest.raises(ValueError, match="checkpoint-4 is incomplete.*resume from .*checkpoint-2"):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-4"))
