"""On-policy / sequence-level distillation (hfkd.trainers.on_policy) on tiny random causal LMs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import causal_lm_pair, tiny_lm_tokenizer
from datasets import Dataset

import hfkd
from hfkd.models import DistillationSetupError
from hfkd.trainers import on_policy
from hfkd.trainers.on_policy import COMPLETION_IDS, PROMPT_IDS, PROMPT_MASK, PromptCollator, completion_batch

pytestmark = pytest.mark.usefixtures("datasets_cache")

PROMPTS = ["t5 t6 t7", "t8 t9", "t10 t11 t12 t13", "t14"]
COMPLETIONS = ["t20 t21", "t22", "t23 t24 t25", "t26 t27"]


def config(tmp_path, **overrides) -> hfkd.DistillationConfig:
    settings = {"output_dir": str(tmp_path / "out"), "max_steps": 2, "logging_steps": 1, "report_to": [],
                "save_strategy": "no", "disable_tqdm": True, "per_device_train_batch_size": 4, "temperature": 1.0,
                "alpha_kd": 1.0, "alpha_ce": 0.0, "kd_loss": "reverse_kl", "lmbda": 1.0, "max_new_tokens": 5,
                "use_cpu": True, "seed": 3}
    return hfkd.DistillationConfig(**{**settings, **overrides})


def prompt_data(completions: bool = True) -> Dataset:
    columns = {"prompt": PROMPTS, **({"completion": COMPLETIONS} if completions else {})}
    return Dataset.from_dict(columns)


def trainer_for(tmp_path, data=None, teacher=None, peft_config=None, **overrides) -> hfkd.DistillationTrainer:
    pair_teacher, student = causal_lm_pair()
    return hfkd.DistillationTrainer(model=student, teacher_model=teacher or pair_teacher, args=config(tmp_path, **overrides),
                                    train_dataset=data if data is not None else prompt_data(),
                                    processing_class=tiny_lm_tokenizer(), peft_config=peft_config)


# ---------------------------------------------------------------- batches and masks


def test_completion_batch_packs_right_and_labels_completion_tokens_only():
    prompt = torch.tensor([[0, 0, 7, 8], [5, 6, 7, 8]])
    prompt_mask = (prompt != 0).long()
    completion = torch.tensor([[20, 1, 0], [21, 22, 23]])
    completion_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    batch = completion_batch(prompt, prompt_mask, completion, completion_mask, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[7, 8, 20, 1, 0, 0, 0], [5, 6, 7, 8, 21, 22, 23]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]
    assert batch["labels"].tolist() == [[-100, -100, 20, 1, -100, -100, -100], [-100] * 4 + [21, 22, 23]]


def test_until_first_eos_keeps_the_eos_and_masks_what_follows():
    completion = torch.tensor([[1, 1, 1], [9, 1, 9], [9, 9, 9]])  # EOS first; EOS in the middle; no EOS
    assert on_policy.until_first_eos(completion, [1]).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_collator_left_pads_prompts_for_generation_and_builds_the_off_policy_batch():
    features = [{PROMPT_IDS: [5, 6, 7], COMPLETION_IDS: [20, 1]}, {PROMPT_IDS: [8], COMPLETION_IDS: [21, 22, 1]}]
    batch = PromptCollator(pad_token_id=0, fallback=None)(features)
    assert batch[PROMPT_IDS].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch[PROMPT_MASK].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["input_ids"].tolist() == [[5, 6, 7, 20, 1, 0], [8, 21, 22, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 20, 1, -100], [-100, 21, 22, 1, -100, -100]]


def test_empty_completions_give_a_zero_loss_not_nan(tmp_path):
    data = Dataset.from_dict({PROMPT_IDS: [[5, 6], [7, 8, 9]], COMPLETION_IDS: [[], []]})
    trainer = trainer_for(tmp_path, data, lmbda=0.0, per_device_train_batch_size=2)
    batch = trainer.data_collator([data[0], data[1]])
    assert (batch["labels"] == -100).all()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    assert torch.isfinite(loss) and loss.item() == 0.0


def test_eos_first_completions_train_without_nan(tmp_path):
    """Greedy student whose first token is EOS for every prompt: each completion is that one token."""
    teacher, student = causal_lm_pair()
    prompt = torch.tensor([[5, 6, 7]])
    first = int(student.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=1, do_sample=False,
                                 pad_token_id=0)[0, -1])
    for model in (teacher, student):
        model.config.eos_token_id = model.generation_config.eos_token_id = first
    data = Dataset.from_dict({PROMPT_IDS: [[5, 6, 7]] * 4})
    trainer = hfkd.DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, generation_temperature=0.0),
                                       train_dataset=data)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "kd_loss" in h]
    assert all(math.isfinite(h["kd_loss"]) for h in logs)
    assert [h["completion_length"] for h in logs] == [1.0, 1.0]


# ---------------------------------------------------------------- scheduling, reproducibility


@pytest.mark.parametrize("lmbda", [0.0, 0.3, 1.0])
def test_lmbda_is_the_share_of_student_sampled_steps(tmp_path, lmbda):
    args = config(tmp_path, lmbda=lmbda, seq_kd=lmbda == 0.0)
    teacher, student = causal_lm_pair()
    chooser = on_policy.OnPolicy(args, tiny_lm_tokenizer(), [student, teacher], prompt_data())
    draws = [chooser.uses_student(step) for step in range(2000)]
    # Binomial(2000, lmbda): 4 standard deviations (sqrt(2000 * 0.3 * 0.7) ≈ 20.5 draws).
    assert abs(sum(draws) - 2000 * lmbda) <= 4 * math.sqrt(2000 * lmbda * (1 - lmbda))
    # Fixed by (seed, step): a resumed run makes the same choices.
    again = on_policy.OnPolicy(args, tiny_lm_tokenizer(), [student, teacher], prompt_data())
    assert [again.uses_student(step) for step in range(2000)] == draws


def test_task_loss_is_left_out_on_student_samples_only(tmp_path):
    """alpha_ce on the student's own samples would fit the tokens it just drew: off on those steps only."""
    trainer = trainer_for(tmp_path, lmbda=0.5, alpha_ce=0.5, max_steps=8, logging_steps=1)
    trainer.train()
    student_steps = {step for step in range(8) if trainer.on_policy.uses_student(step)}
    assert 0 < len(student_steps) < 8  # both kinds of step occur with this seed
    logs = [h for h in trainer.state.log_history if "kd_loss" in h]
    with_ce = {step for step, h in enumerate(logs) if h.get("ce_loss", 0.0) > 0}
    assert with_ce == set(range(8)) - student_steps


def test_reference_ce_trains_the_task_loss_on_the_dataset_completions_on_student_steps(tmp_path):
    """MiniLLM's pre-training term: on a student-sampled step the task loss is the student's loss on the
    dataset's completions of the same prompts, beside KD on its own samples."""
    teacher, student = causal_lm_pair()
    before = copy.deepcopy(student).eval()  # the tiny Llama has no dropout: train and eval forwards agree
    trainer = hfkd.DistillationTrainer(model=student, teacher_model=teacher,
                                       args=config(tmp_path, alpha_ce=0.5, reference_ce=True, max_steps=1),
                                       train_dataset=prompt_data(), processing_class=tiny_lm_tokenizer())
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PROMPTS))])  # the whole first batch
    with torch.no_grad():
        expected = before(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss.item()
    trainer.train()
    log = next(h for h in trainer.state.log_history if "kd_loss" in h)
    assert trainer.on_policy.uses_student(0) and log["kd_loss"] > 0
    # Both are token means of the same fp32 losses (log rounded to 6 decimals): equal to far below 1e-4.
    assert log["ce_loss"] == pytest.approx(expected, abs=1e-4)


def test_mixed_run_logs_the_on_policy_share_and_completion_length(tmp_path):
    trainer = trainer_for(tmp_path, lmbda=0.5, max_steps=8, logging_steps=8)
    trainer.train()
    log = next(h for h in trainer.state.log_history if "on_policy_fraction" in h)
    expected = sum(trainer.on_policy.uses_student(step) for step in range(8)) / 8
    assert log["on_policy_fraction"] == pytest.approx(expected)
    assert 1 <= log["completion_length"] <= 5


def test_runs_repeat_and_generation_leaves_the_global_rng_alone(tmp_path):
    weights = []
    for run in range(2):
        trainer = trainer_for(tmp_path / str(run))
        torch.manual_seed(0)
        state = torch.random.get_rng_state()
        inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        trainer.on_policy.batch(trainer, trainer.model, inputs, None)
        assert torch.equal(torch.random.get_rng_state(), state)
        trainer.train()
        weights.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
    assert torch.equal(weights[0], weights[1])


# ---------------------------------------------------------------- who generates


def test_seq_kd_trains_on_teacher_completions(tmp_path):
    teacher, _ = causal_lm_pair()
    calls = []
    original = teacher.generate
    teacher.generate = lambda *a, **k: calls.append(1) or original(*a, **k)
    trainer = trainer_for(tmp_path, prompt_data(completions=False), teacher=teacher, lmbda=0.0, seq_kd=True)
    trainer.train()
    assert len(calls) == 2
    assert all(h["on_policy_fraction"] == 0.0 for h in trainer.state.log_history if "on_policy_fraction" in h)


def test_generation_uses_the_unwrapped_student_under_ddp(tmp_path, monkeypatch):
    """A DDP-wrapped student has no `generate`: the batch must come from `accelerator.unwrap_model`."""
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29517")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        trainer = trainer_for(tmp_path)
        wrapped = torch.nn.parallel.DistributedDataParallel(trainer.model)
        assert not hasattr(wrapped, "generate")
        inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        batch, items = trainer.on_policy.batch(trainer, wrapped, inputs, 7)
        assert items is None and batch["input_ids"].shape[1] <= inputs[PROMPT_IDS].shape[1] + 5
        assert wrapped.training  # generation ran in eval mode and restored training mode
    finally:
        dist.destroy_process_group()


def test_peft_student_generates_with_its_adapter(tmp_path):
    from peft import LoraConfig

    trainer = trainer_for(tmp_path, peft_config=LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_alpha=4))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if "lora_B" in n)
    assert all(h["completion_length"] > 0 for h in trainer.state.log_history if "completion_length" in h)


def test_several_teachers_and_gpt2(tmp_path):
    teacher, _ = causal_lm_pair("gpt2")
    other, student = causal_lm_pair("gpt2", seed=1)
    trainer = hfkd.DistillationTrainer(model=student, teacher_model=[teacher, other],
                                       args=config(tmp_path, kd_loss="jsd", jsd_beta=0.3),
                                       train_dataset=prompt_data(), processing_class=tiny_lm_tokenizer())
    trainer.train()
    assert all(math.isfinite(h["kd_loss"]) for h in trainer.state.log_history if "kd_loss" in h)


# ---------------------------------------------------------------- prompt formats


def test_chat_messages_render_with_the_template_and_split_off_the_answer():
    tokenizer = tiny_lm_tokenizer()
    data = Dataset.from_dict({"messages": [[{"role": "user", "content": "t5 t6"},
                                            {"role": "assistant", "content": "t7"}]]})
    row = on_policy.tokenize_prompts(data, tokenizer)[0]
    assert row[PROMPT_IDS] == tokenizer("<user> t5 t6 <assistant>", add_special_tokens=False)["input_ids"]
    assert row[COMPLETION_IDS] == tokenizer("t7", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_prompt_only_text_trains_on_policy(tmp_path):
    trainer = trainer_for(tmp_path, prompt_data(completions=False))
    trainer.train()
    assert set(trainer.train_dataset.column_names) == {PROMPT_IDS}


# ---------------------------------------------------------------- refused before compute


@pytest.mark.parametrize("field,value,words", [
    ("lmbda", 1.5, "lmbda must be in [0, 1]"), ("lmbda", -0.1, "lmbda must be in [0, 1]"),
    ("max_new_tokens", 0, "max_new_tokens must be an int > 0"),
    ("teacher_cache_dir", "cache", "unset teacher_cache_dir"),
])
def test_bad_settings_are_one_line(tmp_path, field, value, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        config(tmp_path, **{field: value})


def test_reference_ce_without_student_steps_is_refused(tmp_path):
    with pytest.raises(ValueError, match="lmbda=0 has none: set lmbda > 0, or unset reference_ce"):
        config(tmp_path, lmbda=0.0, seq_kd=True, reference_ce=True)


def test_bad_data_is_refused_before_compute(tmp_path):
    with pytest.raises(DistillationSetupError, match="a 'prompt' or 'messages' column"):
        trainer_for(tmp_path, Dataset.from_dict({"text": ["t5"]}))
    messages = Dataset.from_dict({"messages": [[{"role": "user", "content": "t5"}]]})
    teacher, student = causal_lm_pair()
    with pytest.raises(DistillationSetupError, match="no chat_template"):
        hfkd.DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path), train_dataset=messages,
                                 processing_class=tiny_lm_tokenizer(chat_template=False))
    with pytest.raises(DistillationSetupError, match="no completions for the off-policy steps"):
        trainer_for(tmp_path, prompt_data(completions=False), lmbda=0.5)
    with pytest.raises(DistillationSetupError, match="reference_ce trains on the dataset's reference completions"):
        trainer_for(tmp_path, prompt_data(completions=False), reference_ce=True)
    with pytest.raises(DistillationSetupError, match="prompt \\+ max_new_tokens=65 exceeds"):
        trainer_for(tmp_path, Dataset.from_dict({PROMPT_IDS: [[5] * 3]}), max_new_tokens=62)


def test_teacher_cache_is_refused_on_policy(tmp_path):
    from transformers import default_data_collator

    teacher, student = causal_lm_pair()
    rows = Dataset.from_dict({"input_ids": [[5, 6, 7, 8]] * 4, "labels": [[5, 6, 7, 8]] * 4})
    cache = hfkd.build_teacher_cache(teacher, rows, default_data_collator, tmp_path / "cache", top_k=4, temperature=1.0)
    with pytest.raises(DistillationSetupError, match="teacher-cache dataset"):
        hfkd.DistillationTrainer(model=student, args=config(tmp_path, kd_loss="kl"), train_dataset=cache)


def test_sampling_settings_reach_generate_unchanged(tmp_path, monkeypatch):
    """top_k=0 must stay off: a None would be filled with transformers' default top_k=50."""
    trainer = trainer_for(tmp_path, generation_top_p=0.9, generation_temperature=0.7)
    seen = {}
    original = type(trainer.model).generate

    def spy(model, *args, generation_config=None, **kwargs):
        seen.update(top_k=generation_config.top_k, top_p=generation_config.top_p,
                    temperature=generation_config.temperature, cache=generation_config.use_cache,
                    training=model.training, grad=torch.is_grad_enabled())
        return original(model, *args, generation_config=generation_config, **kwargs)

    monkeypatch.setattr(type(trainer.model), "generate", spy)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.train()
    trainer.on_policy.batch(trainer, trainer.model, inputs, None)
    assert seen == {"top_k": 0, "top_p": 0.9, "temperature": 0.7, "cache": True, "training": False, "grad": False}


def test_a_resumed_run_samples_what_the_uninterrupted_one_did(tmp_path):
    """float64 models (tests/tolerance.py, rule 3): resumed and uninterrupted differ only by float32 loss rounding."""
    from transformers import TrainerCallback

    class StopAt2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    def run(folder, callbacks=(), resume=None):
        teacher, student = causal_lm_pair()
        trainer = hfkd.DistillationTrainer(
            model=student.double(), teacher_model=teacher.double(), train_dataset=prompt_data(),
            processing_class=tiny_lm_tokenizer(), callbacks=list(callbacks),
            args=config(folder, lmbda=0.5, max_steps=4, save_strategy="steps", save_steps=2,
                        per_device_train_batch_size=2, learning_rate=1e-3))
        trainer.train(resume_from_checkpoint=resume)
        return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])

    uninterrupted = run(tmp_path / "a")
    run(tmp_path / "b", callbacks=[StopAt2()])
    resumed = run(tmp_path / "b", resume=True)
    assert torch.allclose(resumed, uninterrupted, rtol=0, atol=1e-5)
    assert not torch.allclose(resumed, run(tmp_path / "c", callbacks=[StopAt2()]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fsdp,zero_stage", [(False, 3), (True, None)])
def test_zero3_and_fsdp_are_refused_saying_why(tmp_path, fsdp, zero_stage):
    from types import SimpleNamespace

    trainer = trainer_for(tmp_path)
    plugin = SimpleNamespace(zero_stage=zero_stage) if zero_stage else None
    engine = SimpleNamespace(accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin)),
                             is_fsdp_enabled=fsdp, teachers_side=trainer.teachers_side)
    with pytest.raises(DistillationSetupError, match="would gather every layer's weights per generated token"):
        trainer.on_policy.check_engine(engine)


def test_a_prompt_eval_set_measures_the_loss_on_its_completions(tmp_path):
    teacher, student = causal_lm_pair()
    trainer = hfkd.DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path),
                                       train_dataset=prompt_data(), eval_dataset=prompt_data(),
                                       processing_class=tiny_lm_tokenizer())
    metrics = trainer.evaluate()
    # A random 100-token LM: its loss on the completions is near log(100), far from 0.
    assert 0.5 * math.log(100) < metrics["eval_loss"] < 2 * math.log(100)
