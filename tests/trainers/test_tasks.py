"""Each task end to end on tiny models: train on a fixed batch, loss falls, eval runs, save + reload."""

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from conftest import VOCAB, bert_config
from hfkd import DistillationConfig, DistillationTrainer

N, LENGTH = 8, 12


def _ids(seed=0):
    return torch.randint(1, VOCAB, (N, LENGTH), generator=torch.Generator().manual_seed(seed))


def seq_data():
    ids = _ids()
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * LENGTH] * N,
                              "labels": (ids[:, 0] % 3).tolist()})


def token_data():
    ids = _ids()
    tags = ids % 3
    tags[:, -3:] = -100
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * LENGTH] * N, "labels": tags.tolist()})


def mlm_data():
    ids = _ids()
    labels = torch.full_like(ids, -100)
    masked = torch.rand(N, LENGTH, generator=torch.Generator().manual_seed(1)) < 0.3
    labels[masked] = ids[masked]
    inputs = ids.clone()
    inputs[masked] = 3  # a [MASK]-like id
    return Dataset.from_dict({"input_ids": inputs.tolist(), "attention_mask": [[1] * LENGTH] * N,
                              "labels": labels.tolist()})


def clm_data():
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, -4:] = 0  # one padded row: padded positions are not items
    labels = ids.masked_fill(mask == 0, -100)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})


def gpt2(layers):
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=64,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def llama(layers):
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64))


CASES = {
    "sequence_classification": (lambda n: BertForSequenceClassification(bert_config(layers=n)), seq_data,
                                AutoModelForSequenceClassification),
    "token_classification": (lambda n: BertForTokenClassification(bert_config(layers=n)), token_data,
                             AutoModelForTokenClassification),
    "masked_lm": (lambda n: BertForMaskedLM(bert_config(layers=n)), mlm_data, AutoModelForMaskedLM),
    "causal_lm_gpt2": (gpt2, clm_data, AutoModelForCausalLM),
    "causal_lm_llama": (llama, clm_data, AutoModelForCausalLM),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_task_end_to_end(task, tmp_path):
    make, data_fn, auto_class = CASES[task]
    torch.manual_seed(0)
    teacher, student = make(4), make(2)
    data = data_fn()
    args = DistillationConfig(
        output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, seed=0, per_device_train_batch_size=N,
        max_steps=12, learning_rate=3e-3, logging_steps=1, save_strategy="no", disable_tqdm=True,
        alpha_kd=1.0, alpha_ce=0.5, alpha_hidden=1.0, alpha_attention=1.0, temperature=2.0,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                  eval_dataset=data)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and metrics["eval_loss"] == metrics["eval_loss"]

    trainer.save_model(str(tmp_path / "student"))
    reloaded = auto_class.from_pretrained(tmp_path / "student").eval()
    student.eval()
    features = {k: torch.tensor(data[k]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**features).logits, student(**features).logits)  # same weights: exact
