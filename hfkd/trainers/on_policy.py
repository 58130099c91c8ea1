"""On-policy and sequence-level distillation for causal LMs (GKD, Agarwal et al. 2024, arXiv:2306.13649).

The training data are prompts (with or without reference completions). At each optimizer step, with
probability `lmbda`, the student samples the completions it is trained on (on-policy); otherwise
they come from the teacher (`seq_kd`, sequence-level KD) or from the dataset (off-policy). The
completion then goes through the trainer's ordinary objective as a plain causal-LM batch whose
labels mask the prompt and everything after the first EOS, so `kd_loss` (`kl`, `reverse_kl`, `jsd`
with `jsd_beta`) compares teacher and student on completion tokens only. The task loss (`alpha_ce`)
applies to the dataset's and the teacher's completions, never to the student's own samples: their
labels are the tokens the student just drew, and fitting them only sharpens what it already believes.
With `reference_ce` a step on student samples keeps the task loss on the dataset's completions of the
same prompts (MiniLLM's pre-training term), through a second student forward on that batch.

Generation runs on the unwrapped model (DDP: `accelerator.unwrap_model`; a PEFT student generates
with its adapter), in eval mode, without gradients, with the KV cache, and with the torch RNG seeded
from (`seed`, optimizer step, micro-batch, process): runs repeat exactly, and a resumed run draws
the same samples the uninterrupted one would have, without disturbing the global RNG.
"""

from __future__ import annotations

import inspect
import random
from typing import Any

import torch
from torch import nn
from transformers import DataCollatorWithPadding, GenerationConfig, Trainer, default_data_collator

from hfkd.models import DistillationSetupError, check_sequence_length

PROMPT_IDS, PROMPT_MASK, COMPLETION_IDS = "prompt_input_ids", "prompt_attention_mask", "completion_input_ids"
ON_POLICY_COLUMNS = (PROMPT_IDS, COMPLETION_IDS)


def on_policy_enabled(args: Any) -> bool:
    """Whether a run generates its completions (student samples with lmbda > 0, teacher ones with seq_kd)."""
    return args.lmbda > 0 or args.seq_kd


def check_on_policy_settings(args: Any) -> None:
    """Refuse impossible generation settings before any compute (called from `DistillationConfig`)."""
    if not (isinstance(args.lmbda, (int, float)) and 0.0 <= args.lmbda <= 1.0):
        raise ValueError(f"lmbda must be in [0, 1] (the share of steps on student samples), got {args.lmbda!r}.")
    if isinstance(args.max_new_tokens, bool) or not isinstance(args.max_new_tokens, int) or args.max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be an int > 0 (completion length), got {args.max_new_tokens!r}.")
    if args.generation_temperature < 0:
        raise ValueError(f"generation_temperature must be >= 0 (0 = greedy), got {args.generation_temperature}.")
    if not 0.0 < args.generation_top_p <= 1.0:
        raise ValueError(f"generation_top_p must be in (0, 1], got {args.generation_top_p}.")
    if args.generation_top_k < 0:
        raise ValueError(f"generation_top_k must be >= 0 (0 = off), got {args.generation_top_k}.")
    if args.reference_ce and args.lmbda == 0:
        raise ValueError("reference_ce applies the task loss on steps trained on student samples, and lmbda=0 has "
                         "none: set lmbda > 0, or unset reference_ce.")
    if on_policy_enabled(args) and args.teacher_cache_dir:
        raise ValueError(
            "on-policy/seq_kd distillation with teacher_cache_dir: the targets depend on completions generated "
            "during training, which no cache holds; unset teacher_cache_dir (or set lmbda=0, seq_kd=False)."
        )


# ---------------------------------------------------------------- data


def is_prompt_dataset(dataset: Any) -> bool:
    """Whether a dataset holds prompts (text, chat or tokenized) rather than token-level LM rows."""
    columns = set(getattr(dataset, "column_names", None) or ())
    return bool(columns & {"prompt", "messages", PROMPT_IDS})


def tokenize_prompts(dataset: Any, tokenizer: Any, max_prompt_length: int | None = None) -> Any:
    """A `prompt` (+ `completion`) text dataset, or chat `messages`, as `prompt_input_ids` (+ `completion_input_ids`).

    Chat messages are rendered with the tokenizer's chat template: a final assistant message is the
    completion, the rest the prompt (with the generation prompt appended). A reference completion ends
    with the tokenizer's EOS token, as a generated one does. `max_prompt_length` keeps a prompt's first tokens.
    """
    columns = dataset.column_names
    if PROMPT_IDS in columns:
        return dataset
    if "prompt" not in columns and "messages" not in columns:
        raise DistillationSetupError(
            f"on-policy distillation needs a 'prompt' (text) or 'messages' (chat) column; the dataset has "
            f"{columns}: rename the prompt column to 'prompt'."
        )
    if tokenizer is None:
        raise DistillationSetupError("text prompts need the tokenizer: pass processing_class=tokenizer.")
    if "prompt" not in columns and not getattr(tokenizer, "chat_template", None):
        raise DistillationSetupError(
            "the dataset has chat 'messages' but the tokenizer has no chat_template: use an instruct "
            "tokenizer, set tokenizer.chat_template, or give plain 'prompt' text instead."
        )
    eos = tokenizer.eos_token_id

    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        prompt, completion = _prompt_and_completion(row, tokenizer)
        out = {PROMPT_IDS: tokenizer(prompt, add_special_tokens=False)["input_ids"][:max_prompt_length]}
        if completion is not None:
            out[COMPLETION_IDS] = tokenizer(completion, add_special_tokens=False)["input_ids"] + (
                [eos] if eos is not None else [])
        return out

    return dataset.map(encode, remove_columns=columns)


def _prompt_and_completion(row: dict[str, Any], tokenizer: Any) -> tuple[str, str | None]:
    if "prompt" in row:
        return row["prompt"], row.get("completion")
    messages = list(row["messages"])
    completion = messages.pop()["content"] if messages and messages[-1]["role"] == "assistant" else None
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt, completion


def longest(dataset: Any, column: str) -> int:
    """Longest list in a column of an Arrow-backed dataset, read from its offsets (0 if absent)."""
    if column not in dataset.column_names:
        return 0
    import pyarrow.compute as pc

    return pc.max(pc.list_value_length(dataset.data.column(column))).as_py() or 0


def _pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask


def completion_batch(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                     completion_mask: torch.Tensor, pad_token_id: int) -> dict[str, torch.Tensor]:
    """[left-padded prompt | completion] rows -> a right-padded causal-LM batch, labels on completion tokens only.

    Right padding keeps every token at its natural position, so models need no `position_ids`.
    """
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1).long()
    labels = torch.cat([torch.full_like(prompt_ids, -100), completion_ids.masked_fill(completion_mask == 0, -100)], 1)
    pads = (prompt_mask == 0).sum(1, keepdim=True)
    width = ids.shape[1]
    source = torch.arange(width, device=ids.device).unsqueeze(0) + pads
    inside = source < width
    source = source.clamp(max=width - 1)
    mask = mask.gather(1, source) * inside
    return {"input_ids": ids.gather(1, source).masked_fill(mask == 0, pad_token_id), "attention_mask": mask,
            "labels": labels.gather(1, source).masked_fill(mask == 0, -100)}


class PromptCollator:
    """Prompt rows -> left-padded `prompt_input_ids`/`prompt_attention_mask` (what `generate` takes) and,
    when the rows carry completions, the off-policy batch (`completion_batch`). Other rows (an LM
    evaluation set) go to `fallback`."""

    def __init__(self, pad_token_id: int, fallback: Any) -> None:
        self.pad_token_id, self.fallback = pad_token_id, fallback

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if PROMPT_IDS not in features[0]:
            return self.fallback(features)
        prompt_ids, prompt_mask = _pad([f[PROMPT_IDS] for f in features], self.pad_token_id, left=True)
        batch = {PROMPT_IDS: prompt_ids, PROMPT_MASK: prompt_mask}
        if COMPLETION_IDS in features[0]:
            completion_ids, completion_mask = _pad([f[COMPLETION_IDS] for f in features], self.pad_token_id, left=False)
            batch.update(completion_batch(prompt_ids, prompt_mask, completion_ids, completion_mask, self.pad_token_id))
        return batch


def until_first_eos(completion: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 up to and including each row's first EOS, 0 after it: the EOS itself is a target (the teacher's
    say on stopping), what `generate` pads after it is not."""
    if not eos_ids:
        return torch.ones_like(completion)
    is_eos = torch.isin(completion, torch.tensor(eos_ids, device=completion.device))
    before = is_eos.long().cumsum(1) - is_eos.long()  # EOS tokens strictly before each position
    return (before == 0).long()


# ---------------------------------------------------------------- the trainer's side


class OnPolicy:
    """Builds each training micro-batch's completions for a `DistillationTrainer` (see the module docstring)."""

    def __init__(self, args: Any, tokenizer: Any, models: list[nn.Module], dataset: Any) -> None:
        self.args = args
        if not is_prompt_dataset(dataset):
            raise DistillationSetupError(
                "lmbda > 0 or seq_kd=True generate completions for prompts: give a train_dataset with a "
                "'prompt' or 'messages' column (hfkd.trainers.on_policy.tokenize_prompts)."
            )
        self.dataset = dataset = tokenize_prompts(dataset, tokenizer)
        self.pad_token_id = _pad_token_id(tokenizer, models[0])
        self.eos_ids = _eos_ids(tokenizer, models[0])
        if COMPLETION_IDS not in dataset.column_names and args.lmbda < 1 and not args.seq_kd:
            raise DistillationSetupError(
                f"a prompt-only dataset has no completions for the off-policy steps (lmbda={args.lmbda} < 1): "
                "set lmbda=1, seq_kd=True, or give a 'completion' column."
            )
        if COMPLETION_IDS not in dataset.column_names and args.reference_ce:
            raise DistillationSetupError(
                "reference_ce trains on the dataset's reference completions, and this prompt-only dataset has none: "
                "give a 'completion' column (or messages ending with the assistant's turn), or unset reference_ce."
            )
        longest_prompt = longest(dataset, PROMPT_IDS)
        check_sequence_length(longest_prompt + args.max_new_tokens, "the longest prompt + max_new_tokens", *models)
        check_sequence_length(longest_prompt + longest(dataset, COMPLETION_IDS),
                              "the longest prompt + completion", *models)
        self._step, self._micro = -1, 0
        self.from_student = False  # whether the last micro-batch's completions are the student's own samples
        self._stats = {"steps": 0, "student_steps": 0, "tokens": 0, "completions": 0}

    def check_engine(self, trainer: Any) -> None:
        """Generation needs the whole student on each process: refuse ZeRO-3 and FSDP, saying why."""
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        if trainer.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3):
            raise DistillationSetupError(
                "on-policy/seq_kd generation under DeepSpeed ZeRO-3 or FSDP would gather every layer's weights "
                "per generated token on every process: use DDP or ZeRO-1/2 (or lmbda=0, seq_kd=False)."
            )
        if self.args.seq_kd and not trainer.teachers_side.on_device:
            raise DistillationSetupError(
                "seq_kd generates with the teacher, which DeepSpeed/FSDP placed as an engine: use DDP, or unset seq_kd."
            )

    def uses_student(self, step: int) -> bool:
        """Whether optimizer step `step` trains on student samples: a Bernoulli(lmbda) draw fixed by (seed, step)."""
        return random.Random(f"{self.args.seed}-lmbda-{step}").random() < self.args.lmbda

    def batch(self, trainer: Any, model: nn.Module, inputs: dict[str, Any], num_items: Any) -> tuple[dict[str, Any], Any]:
        """This micro-batch's training batch and item count: generated completions, or the dataset's.

        A generated batch is normalised on its own tokens (`num_items_in_batch` counted the dataset's)."""
        step = trainer.state.global_step
        if self._step == -1:
            self.check_engine(trainer)
        self._micro = self._micro + 1 if step == self._step else 0
        self._step = step
        student = self.from_student = self.uses_student(step)
        self._stats["steps"] += 1
        self._stats["student_steps"] += int(student)
        if not (student or self.args.seq_kd):
            return inputs, num_items
        generator = trainer.accelerator.unwrap_model(model) if student else trainer.teacher
        seed = hash((self.args.seed, step, self._micro, trainer.accelerator.process_index)) % 2**63
        completion = self.generate(generator, inputs[PROMPT_IDS], inputs[PROMPT_MASK], seed)
        mask = until_first_eos(completion, self.eos_ids)
        self._stats["tokens"] += int(mask.sum())
        self._stats["completions"] += mask.shape[0]
        return completion_batch(inputs[PROMPT_IDS], inputs[PROMPT_MASK], completion, mask, self.pad_token_id), None

    def generate(self, model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, seed: int) -> torch.Tensor:
        """Completions (prompt removed) sampled from `model` in eval mode, without gradients, with the KV cache."""
        args = self.args
        config = GenerationConfig(
            max_new_tokens=args.max_new_tokens, do_sample=args.generation_temperature > 0,
            temperature=args.generation_temperature or None, top_p=args.generation_top_p,
            top_k=args.generation_top_k, pad_token_id=self.pad_token_id,  # 0 stays off (None would become 50)
            eos_token_id=self.eos_ids or None, use_cache=True)
        was_training = model.training
        devices = [prompt_ids.device] if prompt_ids.device.type == "cuda" else []
        model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
        finally:
            model.train(was_training)
        return out[:, prompt_ids.shape[1]:]

    def logs(self) -> dict[str, float]:
        """Share of micro-batches on student samples and mean generated completion length, since the last log."""
        stats, logs = self._stats, {}
        if stats["steps"]:
            logs["on_policy_fraction"] = round(stats["student_steps"] / stats["steps"], 4)
        if stats["completions"]:
            logs["completion_length"] = round(stats["tokens"] / stats["completions"], 2)
        self._stats = dict.fromkeys(stats, 0)
        return logs


def _pad_token_id(tokenizer: Any, model: nn.Module) -> int:
    for source in (tokenizer, model.config):
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(source, name, None) if source is not None else None
            if isinstance(value, list):
                value = value[0] if value else None
            if value is not None:
                return int(value)
    return 0


def _eos_ids(tokenizer: Any, model: nn.Module) -> list[int]:
    value = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if value is None:
        value = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if value is None:
        value = getattr(model.config, "eos_token_id", None)
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]



class NoGeneration:
    """What `DistillationTrainer.on_policy` is in an ordinary token-level run: batches pass through."""

    from_student = False

    def batch(self, trainer: Any, model: nn.Module, inputs: dict[str, Any], num_items: Any) -> tuple[dict[str, Any], Any]:
        return inputs, num_items

    def logs(self) -> dict[str, float]:
        return {}


def on_policy_setup(trainer: Any, model: nn.Module, args: Any, trainer_args: tuple,
                    trainer_kwargs: dict[str, Any]) -> tuple[OnPolicy | NoGeneration, tuple, dict[str, Any]]:
    """The run's `OnPolicy` and the `Trainer` arguments it needs (its tokenized prompts, `PromptCollator`).

    `trainer_args` are `Trainer`'s positional arguments after `model` and `args`; a prompt dataset
    (`prompt`/`messages`/`prompt_input_ids` columns) switches the mode on even at lmbda=0.
    """
    names = list(inspect.signature(Trainer.__init__).parameters)[3:]  # after self, model, args
    kwargs = {**dict(zip(names, trainer_args)), **trainer_kwargs}
    dataset = kwargs.get("train_dataset")
    if trainer.cached and on_policy_enabled(args):
        raise DistillationSetupError(
            "lmbda > 0 / seq_kd=True with a teacher-cache dataset: the targets depend on completions generated "
            "during training, which no cache holds; pass the prompts and a teacher instead."
        )
    if not (on_policy_enabled(args) or is_prompt_dataset(dataset)):
        return NoGeneration(), trainer_args, trainer_kwargs
    tokenizer = kwargs.get("processing_class")
    on_policy = OnPolicy(args, tokenizer, [model, *trainer.teachers_side.models], dataset)
    fallback = kwargs.get("data_collator") or (
        DataCollatorWithPadding(tokenizer) if tokenizer is not None else default_data_collator)
    kwargs.update(train_dataset=on_policy.dataset, data_collator=PromptCollator(on_policy.pad_token_id, fallback))
    evaluation = kwargs.get("eval_dataset")
    if isinstance(evaluation, dict):
        kwargs["eval_dataset"] = {name: _tokenized_if_prompts(data, tokenizer) for name, data in evaluation.items()}
    elif evaluation is not None:
        kwargs["eval_dataset"] = _tokenized_if_prompts(evaluation, tokenizer)
    return on_policy, (), kwargs


def _tokenized_if_prompts(dataset: Any, tokenizer: Any) -> Any:
    """An evaluation set of prompts + completions: tokenized like the training prompts (its loss is on the completions)."""
    return tokenize_prompts(dataset, tokenizer) if is_prompt_dataset(dataset) else dataset
