"""Loading teachers and checking that a teacher can teach a student, before any compute is spent.

Every error is one line that names both sides and the fix.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import AutoModel

from hfkd.models import TASK_AUTO_CLASSES, DistillationSetupError, class_name, is_default_labels, task_of
from hfkd.adapters import is_adapter_folder, load_pretrained


AUTO_DTYPE = "auto"


def parse_dtype(name: str | None, field: str = "teacher_dtype", device: torch.device | str | None = None) -> torch.dtype | None:
    """'bfloat16' -> torch.bfloat16 (None stays None); a name torch lacks is one line naming the choices.

    'auto' is bfloat16 where `device` multiplies it natively, else None (as loaded): a CPU without
    bf16 matrix instructions emulates them, and a bf16 teacher there is slower than fp32, not faster.
    """
    if name is None:
        return None
    if name == AUTO_DTYPE:
        return torch.bfloat16 if device is not None and native_bf16(device) else None
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{field}={name!r} is not a torch floating dtype; use 'auto', 'bfloat16', 'float16' or 'float32'.")
    return dtype


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` has bf16 matrix instructions: a CUDA GPU that supports bf16, or a CPU with
    AVX512-BF16 or AMX tiles (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported",
                                                                              "_is_amx_tile_supported"))
    return False


def teacher_load_kwargs(args: Any, trust_remote_code: bool | None = None, **extra: Any) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for a teacher: the user's, and eager attention when a term reads
    attention maps (SDPA returns none).

    Running a checkpoint's own code is never switched on in passing: `teacher_model_init_kwargs` may
    set `trust_remote_code` only to the boolean True, and only where the caller's explicit flag
    (`trust_remote_code`, the recipes' `--trust_remote_code`) is not False.
    """
    user = dict(args.teacher_model_init_kwargs or {})
    asked = user.get("trust_remote_code", False)
    if asked is not False and (asked is not True or trust_remote_code is False):
        raise DistillationSetupError(
            f"teacher_model_init_kwargs sets trust_remote_code={asked!r}, which runs code from the checkpoint: "
            "state it with the explicit flag (--trust_remote_code), or as the boolean true in Python."
        )
    kwargs = {**extra, **user}
    if trust_remote_code is not None:
        kwargs.setdefault("trust_remote_code", trust_remote_code)
    if args.needs_output("attentions"):
        kwargs.setdefault("attn_implementation", "eager")
    return kwargs


def use_eager_attention(*models: nn.Module) -> None:
    """Switch models already loaded to eager attention, which returns the maps attention terms compare."""
    for model in models:
        model.set_attn_implementation("eager")


def load_teacher(teacher: nn.Module | str, student: nn.Module, args: Any) -> nn.Module:
    """Return the teacher model, loading a name/path with the student's task Auto class.

    A folder holding a PEFT adapter (`adapter_config.json`) loads its base model, applies the
    adapter and merges it (`hfkd.adapters.load_pretrained`).
    """
    if isinstance(teacher, nn.Module):
        return teacher
    if not isinstance(teacher, str):
        raise TypeError(f"teacher_model must be a model or a name/path, got {type(teacher).__name__}.")
    task = task_of(student)
    auto_class = TASK_AUTO_CLASSES[task][1] if task else AutoModel
    kwargs = teacher_load_kwargs(args)
    try:
        return load_trained_teacher(auto_class, teacher, **kwargs)
    except OSError as error:
        raise DistillationSetupError(
            f"cannot load teacher {teacher!r} with {auto_class.__name__}: {error}".splitlines()[0]
        ) from error


def load_trained_teacher(auto_class: Any, path: str, **kwargs: Any) -> nn.Module:
    """Load a teacher checkpoint, refusing one whose task head is not in it: transformers only warns
    and initialises the head at random, and such a teacher passes every other check.

    An adapter folder is loaded as is: its task head may live in the adapter (`modules_to_save`).
    """
    if os.path.isdir(path) and is_adapter_folder(path):
        return load_pretrained(auto_class, path, **kwargs)
    if path.endswith(".gguf") or kwargs.get("gguf_file"):  # a GGUF file: its head is in the file
        from hfkd.teacher.gguf import load_gguf_model, split_gguf_path

        folder, name = split_gguf_path(path) if path.endswith(".gguf") else (path, kwargs.pop("gguf_file"))
        kwargs.pop("gguf_file", None)
        return load_gguf_model(auto_class, folder, name, **kwargs)
    model, info = auto_class.from_pretrained(path, output_loading_info=True, **kwargs)
    if model.base_model is model:  # a bare encoder (AutoModel): no head to check, a missing pooler is usual
        return model
    base = f"{model.base_model_prefix}."
    fresh = sorted(key for key in (*info["missing_keys"], *(m[0] for m in info["mismatched_keys"]))
                   if not key.startswith(base))
    if fresh:
        raise DistillationSetupError(
            f"teacher {path} has no trained {class_name(model)} head ({', '.join(fresh[:3])} newly initialised): "
            "fine-tune the teacher on the task first (hfkd finetune), then distill from that checkpoint."
        )
    return model


def check_teacher_student_compatibility(
    teacher: nn.Module,
    student: nn.Module,
    student_tokenizer: Any = None,
    teacher_tokenizer: Any = None,
) -> None:
    """Same task head, vocabulary and label set, or a `DistillationSetupError` saying which differs."""
    t_task, s_task = task_of(teacher), task_of(student)
    if t_task != s_task:
        raise DistillationSetupError(
            f"task heads differ: teacher {class_name(teacher)} ({t_task}) vs student "
            f"{class_name(student)} ({s_task}); use a student with the teacher's head "
            "(hfkd.create_student(teacher) builds one)."
        )
    t_vocab, s_vocab = teacher.config.vocab_size, student.config.vocab_size
    if t_vocab != s_vocab:
        raise DistillationSetupError(
            f"vocabularies differ: teacher vocab_size={t_vocab}, student vocab_size={s_vocab}; both "
            "models read the same input_ids, so give the student the teacher's tokenizer and vocab size."
        )
    if student_tokenizer is not None and teacher_tokenizer is not None:
        t_map, s_map = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
        if t_map != s_map:
            differing = sorted(set(t_map.items()) ^ set(s_map.items()))
            raise DistillationSetupError(
                f"tokenizers differ in {len(differing)} token→id entries (e.g. {differing[0]!r}); "
                "teacher and student must share one tokenizer."
            )
    if s_task in ("sequence_classification", "token_classification"):
        t_labels, s_labels = teacher.config.num_labels, student.config.num_labels
        if t_labels != s_labels:
            raise DistillationSetupError(
                f"label counts differ: teacher num_labels={t_labels}, student num_labels={s_labels}; "
                "build the student with the teacher's id2label/label2id."
            )
        t_map, s_map = dict(teacher.config.id2label), dict(student.config.id2label)
        if not (is_default_labels(t_map) or is_default_labels(s_map)) and t_map != s_map:
            raise DistillationSetupError(
                f"label orders differ: teacher id2label={t_map}, student id2label={s_map}; the KD "
                "term compares logits position by position, so give the student the teacher's id2label."
            )
