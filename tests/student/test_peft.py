"""PEFT: a LoRA student distilled with every loss term, its adapter saved, merged, resumed; adapter teachers."""

import os

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from conftest import bert_config, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.objective.projections import PROJECTIONS_ATTR, PROJECTIONS_NAME


def config(tmp_path, **kw):
    defaults = dict(
        output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, per_device_train_batch_size=8,
        max_steps=4, learning_rate=1e-2, logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True,
        alpha_kd=1.0, alpha_ce=0.5, alpha_hidden=1.0, alpha_attention=1.0,
    )
    return DistillationConfig(**{**defaults, **kw})


def lora(task_type=None):
    return LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type=task_type)


def features(n=8, length=10):
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(1, 100, (n, length), generator=g), "attention_mask": torch.ones(n, length, dtype=torch.long)}


def logits(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def _is_trainable_name(name):
    return "lora_" in name or "modules_to_save" in name or name.startswith(PROJECTIONS_ATTR + ".")


def test_lora_student_trains_only_adapter_and_projections(tmp_path, tiny_dataset):
    teacher, student = seq_cls_pair(student_hidden=16)  # narrower: hidden states go through projections
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path),
                                  train_dataset=tiny_dataset, peft_config=lora())
    model = trainer.model
    assert isinstance(model, PeftModel) and trainer.projections is not None
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(_is_trainable_name(n) for n in trainable)
    assert {f"{PROJECTIONS_ATTR}.1.weight", f"{PROJECTIONS_ATTR}.2.weight"} <= trainable
    # A plain PeftModel's forward is (*args, **kwargs): inputs are filtered by the base model's signature.
    assert {"input_ids", "attention_mask", "token_type_ids"} <= trainer._student_inputs
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    trainer.train()

    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and changed <= trainable
    assert any("lora_B" in n for n in changed) and f"{PROJECTIONS_ATTR}.1.weight" in changed
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["hidden_loss"] > 0 and h["attention_loss"] > 0 for h in logged)


def test_adapter_saves_and_reloads_to_the_same_outputs_and_merges(tmp_path, tiny_dataset):
    # float64: merged weights W + BA and the adapter's W x + B A x then agree to ~1e-15, not to float32 rounding.
    teacher, student = (m.double() for m in seq_cls_pair(student_hidden=16))
    args = config(tmp_path, alpha_attention=0.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=tiny_dataset,
                                  peft_config=lora("SEQ_CLS"))
    trainer.train()
    inputs = features()
    trained = logits(trainer.model, inputs)

    trainer.save_model(str(tmp_path / "adapter"))
    files = set(os.listdir(tmp_path / "adapter"))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= files
    assert "model.safetensors" not in files
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert not any(PROJECTIONS_ATTR in k for k in saved) and any("classifier" in k for k in saved)
    assert "LORA r=4" in (tmp_path / "adapter" / "README.md").read_text()
    _, base = seq_cls_pair(student_hidden=16)  # the same untrained base student
    reloaded = PeftModel.from_pretrained(base.double(), tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded, inputs), trained)  # the same weights and operations: exact

    trainer.save_merged_student(str(tmp_path / "merged"))
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert isinstance(merged, BertForSequenceClassification) and merged.dtype == torch.float64
    torch.testing.assert_close(logits(merged, inputs), trained, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(trainer.model, inputs), trained)  # the trainer keeps its adapter


def test_merge_adapter_on_save_writes_a_plain_student(tmp_path, tiny_dataset):
    teacher, student = (m.double() for m in seq_cls_pair())  # float64: see the test above
    args = config(tmp_path, alpha_hidden=0.0, alpha_attention=0.0, max_steps=2, merge_adapter_on_save=True)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=tiny_dataset,
                                  peft_config=lora("SEQ_CLS"))
    trainer.train()
    trainer.save_model()
    files = set(os.listdir(tmp_path / "run"))
    assert {"config.json", "model.safetensors", "README.md"} <= files and "adapter_config.json" not in files
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run")
    assert merged.dtype == torch.float64
    torch.testing.assert_close(logits(merged, features()), logits(trainer.model, features()), atol=1e-5, rtol=1e-5)


def test_resume_restores_adapter_and_projections(tmp_path, tiny_dataset):
    teacher, student = seq_cls_pair(student_hidden=16)
    args = config(tmp_path, alpha_attention=0.0, save_strategy="steps", save_steps=2)
    DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=tiny_dataset,
                        peft_config=lora()).train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert {"adapter_model.safetensors", PROJECTIONS_NAME} <= set(os.listdir(checkpoint))

    _, fresh = seq_cls_pair(student_hidden=16)
    resumed = DistillationTrainer(model=fresh, teacher_model=teacher, args=config(
        tmp_path, alpha_attention=0.0, save_strategy="steps", save_steps=2, max_steps=6),
        train_dataset=tiny_dataset, peft_config=lora())
    resumed._load_from_checkpoint(str(checkpoint))
    saved = load_file(checkpoint / "adapter_model.safetensors")
    restored = get_peft_model_state_dict(resumed.model)
    assert set(saved) == set(restored)
    for key, value in saved.items():
        torch.testing.assert_close(restored[key], value)
    torch.testing.assert_close(resumed.projections["2"].weight.detach(), load_file(checkpoint / PROJECTIONS_NAME)["2.weight"])
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6


def test_adapter_teacher_loads_merged(tmp_path, tiny_dataset):
    teacher, student = seq_cls_pair()
    teacher.double().save_pretrained(tmp_path / "base")  # float64: merged and adapter logits agree to ~1e-15
    base = BertForSequenceClassification.from_pretrained(tmp_path / "base")
    adapted = get_peft_model(base, LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "teacher_adapter")
    expected = logits(adapted, features())
    assert not torch.allclose(expected, logits(teacher, features()))  # the adapter changes the teacher

    trainer = DistillationTrainer(model=student, teacher_model=str(tmp_path / "teacher_adapter"),
                                  args=config(tmp_path, alpha_hidden=0.0, alpha_attention=0.0), train_dataset=tiny_dataset)
    assert type(trainer.teacher) is BertForSequenceClassification  # merged: no adapter layers left
    assert trainer.teacher.dtype == torch.float64
    assert not any("lora" in n for n, _ in trainer.teacher.named_parameters())
    torch.testing.assert_close(logits(trainer.teacher, features()), expected, atol=1e-5, rtol=1e-5)


def test_peft_misuse_is_refused(tmp_path):
    teacher, student = seq_cls_pair()
    with pytest.raises(ValueError, match="merge_adapter_on_save=True but the student has no adapter"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, merge_adapter_on_save=True))
    wrapped = get_peft_model(BertForSequenceClassification(bert_config(layers=2)), lora())
    with pytest.raises(ValueError, match="already is a PeftModel"):
        DistillationTrainer(model=wrapped, teacher_model=teacher, args=config(tmp_path), peft_config=lora())
    with pytest.raises(TypeError, match="peft_config must be a peft.PeftConfig"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path), peft_config={"r": 4})
