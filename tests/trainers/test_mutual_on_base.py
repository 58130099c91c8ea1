"""What mutual learning gains by standing on DistillationTrainerBase: exact accumulation, the
non-finite skip mode, causal LMs, and a config that refuses the fields it cannot honour."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import BertForTokenClassification, GPT2Config, GPT2LMHeadModel, TrainerCallback

from conftest import VOCAB, bert_config
from hfkd.trainers.mutual import MutualDistillationConfig, MutualDistillationTrainer


def config(tmp_path, name="run", **kw):
    defaults = dict(output_dir=str(tmp_path / name), report_to=[], use_cpu=True, per_device_train_batch_size=8,
                    max_steps=2, learning_rate=1e-3, logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True,
                    alpha_kd=1.0, alpha_ce=1.0, temperature=2.0)
    return MutualDistillationConfig(**{**defaults, **kw})


def token_data(n: int = 8, length: int = 10, seed: int = 3) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    tags = ids % 4
    tags[torch.rand(n, length, generator=g) < 0.4] = -100  # uneven label counts per micro-batch
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * length] * n, "labels": tags.tolist()})


def token_peers():
    torch.manual_seed(0)
    return [BertForTokenClassification(bert_config(layers=layers, labels=4)).double() for layers in (2, 1)]


def test_mutual_learning_is_exact_under_gradient_accumulation(tmp_path):
    """2x4 accumulated examples give the update of one batch of 8 (float64: the bound is far above
    summation-order noise and far below the error of per-micro-batch means with these uneven counts)."""
    states = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        peers = token_peers()
        args = config(tmp_path, max_steps=1, optim="sgd", learning_rate=0.5, per_device_train_batch_size=batch_size,
                      gradient_accumulation_steps=accumulation, lr_scheduler_type="constant")
        MutualDistillationTrainer(peers=peers, args=args, train_dataset=token_data()).train()
        states.append([{k: v.clone() for k, v in peer.state_dict().items()} for peer in peers])
    initial = [p.state_dict() for p in token_peers()]
    for one, accumulated, start in zip(*states, initial):
        assert float((one["classifier.weight"] - start["classifier.weight"]).abs().max()) > 1e-4
        for key in one:
            torch.testing.assert_close(accumulated[key], one[key], atol=1e-12, rtol=0)


def test_mutual_learning_trains_causal_lms_on_shifted_positions(tmp_path):
    torch.manual_seed(0)
    peers = [GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=n, n_head=2, n_positions=16,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)) for n in (2, 1)]
    ids = torch.randint(1, VOCAB, (8, 6))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 6] * 8, "labels": ids.tolist()})
    trainer = MutualDistillationTrainer(peers=peers, args=config(tmp_path, alpha_kd=0.0), train_dataset=data)
    batch = trainer.data_collator([data[i] for i in range(8)])
    trainer.model.train()
    trainer.compute_loss(trainer.model, dict(batch))
    logged = float(trainer._term_sums["peer0_ce_loss"])
    with torch.no_grad():
        logits = peers[0](input_ids=batch["input_ids"]).logits
        expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB).double(),
                                                     batch["labels"][:, 1:].reshape(-1))
    # float32 log-softmax over 100 classes per position: a few ulps of log(100) plus the logits' size.
    assert logged == pytest.approx(float(expected), abs=1e-5)
    trainer._term_sums.clear()
    trainer._term_steps = 0
    trainer.train()
    assert all(torch.isfinite(p).all() for peer in peers for p in peer.parameters())


def test_mutual_learning_skips_a_non_finite_update(tmp_path):
    peers = token_peers()

    class Poison(TrainerCallback):
        """Makes the second peer's classifier infinite for step 2 only, snapshotting the first peer."""

        snapshots: dict = {}

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.saved = peers[1].classifier.weight.detach().clone()
                with torch.no_grad():
                    peers[1].classifier.weight.fill_(float("inf"))

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    peers[1].classifier.weight.copy_(self.saved)
            self.snapshots[state.global_step] = {k: v.clone() for k, v in peers[0].state_dict().items()}

    poison = Poison()
    args = config(tmp_path, max_steps=4, nonfinite_loss="skip")
    trainer = MutualDistillationTrainer(peers=peers, args=args, train_dataset=token_data(), callbacks=[poison])
    trainer.train()
    assert trainer.skipped_updates == 1 and trainer.state.global_step == 4
    assert all(torch.equal(poison.snapshots[1][k], v) for k, v in poison.snapshots[2].items())
    assert not all(torch.equal(poison.snapshots[2][k], v) for k, v in poison.snapshots[3].items())
    assert [h["skipped_updates"] for h in trainer.state.log_history if "skipped_updates" in h][-1] == 1


@pytest.mark.parametrize("field, value", [("hidden_loss", "cosine"), ("teacher_cache_dir", "cache"),
                                          ("temperature_schedule", "linear"), ("preset", "distilbert")])
def test_mutual_config_refuses_fields_it_cannot_honour(tmp_path, field, value):
    extra = {"temperature_end": 1.0} if field == "temperature_schedule" else {}
    with pytest.raises(ValueError, match=f"MutualDistillationConfig does not use {field}"):
        config(tmp_path, **{field: value}, **extra)
