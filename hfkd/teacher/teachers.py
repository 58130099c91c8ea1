"""The frozen teacher(s) of a run, in one place: loaded and checked, placed for the engine, made
cheaper with their fidelity measured, and run for a step.

The first teacher is the one representation terms (hidden states, attentions, relations) compare
with; the KD target combines every teacher (`hfkd.teacher.ensemble`), or comes from a cache.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from hfkd.models import DistillationSetupError, forward_arg_names, only, require_attentions
from hfkd.teacher.cache import TEACHER_LOGITS
from hfkd.teacher.ensemble import TeacherEnsemble, check_combination
from hfkd.teacher.fast import require_fidelity, speed_up_teacher, teacher_fidelity
from hfkd.teacher.loading import check_teacher_student_compatibility, load_teacher, parse_dtype, use_eager_attention
from hfkd.teacher.placement import DEVICE, prepare_teacher, teacher_placement

logger = logging.getLogger(__name__)


def model_name(model: nn.Module | str) -> str:
    return model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", None) or "teacher"


class Teachers:
    """The teachers of one `DistillationTrainer`.

    Args:
        sources: models or names/paths (loaded with the student's Auto class); may be empty when
            the KD target is cached or only labels are used.
        student: the student they teach (checked against each teacher).
        args: the `DistillationConfig`.
        tokenizer, teacher_tokenizers: compared token for token when both are given.
        needed: whether any active term needs a teacher (if not, sources are not loaded).
    """

    def __init__(self, sources: Sequence[nn.Module | str], student: nn.Module, args: Any,
                 tokenizer: Any = None, teacher_tokenizers: Any = None, needed: bool = True) -> None:
        self.args = args
        self.names = [model_name(source) for source in sources]
        self.ensemble = TeacherEnsemble.from_config(args.teacher_weights, args.teacher_combination, len(sources) or None)
        check_combination(args.kd_loss, args.teacher_combination, self.ensemble.size)
        self.models: list[nn.Module] = []
        if needed and sources:
            self.models = [load_teacher(source, student, args) for source in sources]
            self._check(student, tokenizer, teacher_tokenizers)
            if args.needs_output("attentions"):
                use_eager_attention(self.models[0], student)
        self.fidelity: dict[str, float] | None = None
        self.on_device = True
        self._inputs: list[frozenset[str]] = []
        self._checked_attentions = False

    @property
    def first(self) -> nn.Module | None:
        return self.models[0] if self.models else None

    @property
    def name(self) -> str:
        return self.names[0] if self.names else "teacher"

    def _check(self, student: nn.Module, tokenizer: Any, teacher_tokenizers: Any) -> None:
        """Every teacher against the student; with several, the error says which teacher."""
        if not isinstance(teacher_tokenizers, (list, tuple)):
            teacher_tokenizers = [teacher_tokenizers] * len(self.models)
        for number, (teacher, teacher_tokenizer) in enumerate(zip(self.models, teacher_tokenizers), start=1):
            try:
                check_teacher_student_compatibility(
                    teacher, student, student_tokenizer=tokenizer, teacher_tokenizer=teacher_tokenizer
                )
            except DistillationSetupError as error:
                if len(self.models) == 1:
                    raise
                raise DistillationSetupError(f"teacher {number} of {len(self.models)}: {error}") from None

    # ------------------------------------------------------------------ preparation

    def prepare(self, accelerator: Any, eval_batches: Callable[[], Iterable[Mapping[str, Any]]] | None) -> None:
        """Freeze and place every teacher for the engine; a cheaper forward only with its fidelity measured."""
        self.on_device = teacher_placement(accelerator) == DEVICE
        self.models = [self._prepare(teacher, accelerator, eval_batches) for teacher in self.models]
        self._inputs = [forward_arg_names(teacher) for teacher in self.models]

    def _prepare(self, teacher: nn.Module, accelerator: Any, eval_batches: Any) -> nn.Module:
        args = self.args
        dtype = parse_dtype(args.teacher_dtype, device=args.device)
        if not (args.teacher_quantization or args.teacher_compile):
            return prepare_teacher(teacher, accelerator, dtype=dtype)
        if not self.on_device:
            raise DistillationSetupError(
                "teacher_quantization/teacher_compile apply to a teacher on one device, not to one sharded by "
                "DeepSpeed/FSDP: unset them (use teacher_dtype or the engine's precision instead)."
            )
        teacher.requires_grad_(False)
        teacher.eval()
        reference = copy.deepcopy(teacher).to(args.device)
        fast = speed_up_teacher(teacher, device=args.device, dtype=dtype, quantization=args.teacher_quantization,
                                compile=args.teacher_compile)
        self.measure_fidelity(reference, fast, eval_batches() if eval_batches else None)
        return fast

    def measure_fidelity(self, reference: nn.Module, fast: nn.Module, batches: Iterable[Mapping[str, Any]] | None) -> None:
        """Compare the cheaper teacher with the full one on evaluation batches; refuse a poor copy."""
        args = self.args
        if batches is None:
            logger.warning("cheaper teacher in use but its fidelity is unmeasured: no eval_dataset was given")
            return
        self.fidelity = teacher_fidelity(reference, fast, batches, accepted_inputs=forward_arg_names(reference))
        logger.info("cheaper teacher vs full teacher: %s", self.fidelity)
        require_fidelity(self.fidelity, args.teacher_min_agreement,
                         f"the cheaper teacher (teacher_dtype={args.teacher_dtype}, teacher_quantization="
                         f"{args.teacher_quantization}, teacher_compile={args.teacher_compile})")

    # ------------------------------------------------------------------ per step

    def mode(self) -> AbstractContextManager:
        """inference_mode for a teacher on one device; no_grad when ZeRO-3/FSDP gather its weights in the forward."""
        return torch.inference_mode() if self.on_device else torch.no_grad()

    def forward(self, inputs: Mapping[str, Any], hidden_states: bool, attentions: bool,
                capture: AbstractContextManager | None = None) -> tuple[Any, Any]:
        """The first teacher's outputs for the step (and what `capture` recorded during it)."""
        with self.mode(), capture or nullcontext() as captured:
            outputs = self.models[0](**only(inputs, self._inputs[0], drop=("labels",)),
                                     output_hidden_states=hidden_states, output_attentions=attentions)
        if attentions and not self._checked_attentions:  # the first step with attention (stages may start without)
            require_attentions(outputs, "teacher")
            self._checked_attentions = True
        return outputs, captured

    def kd_target(self, inputs: Mapping[str, Any], first_outputs: Any, classes: int, temperature: float) -> torch.Tensor:
        """The KD target logits: cached or from the teachers, combined when there are several."""
        cached = inputs.get(TEACHER_LOGITS)
        if cached is not None:
            return self.ensemble.combine(self.ensemble.split_cached(cached, classes), temperature)
        per_teacher = [first_outputs.logits]
        with self.mode():
            for teacher, accepted in zip(self.models[1:], self._inputs[1:]):
                per_teacher.append(teacher(**only(inputs, accepted, drop=("labels",))).logits)
        return self.ensemble.combine(per_teacher, temperature)

    # ------------------------------------------------------------------ model card

    def describe(self) -> dict[str, str]:
        args = self.args
        settings = {"teacher": self.name}
        dtype = parse_dtype(args.teacher_dtype, device=args.device)
        cheaper = [f"{name}={getattr(args, name)}" for name in ("teacher_quantization", "teacher_compile") if getattr(args, name)]
        if dtype is not None:  # 'auto' named with what it chose on this device
            chosen = str(dtype).removeprefix("torch.")
            cheaper.insert(0, f"teacher_dtype={chosen}" if args.teacher_dtype == chosen else
                           f"teacher_dtype={args.teacher_dtype} ({chosen})")
        if cheaper:
            fidelity = self.fidelity
            settings["teacher_forward"] = ", ".join(cheaper) + (
                f" (argmax agreement with the full teacher {fidelity['argmax_agreement']:.2%}, mean KL "
                f"{fidelity['mean_kl']:.2e}, on {fidelity['items']} evaluation items)" if fidelity else " (unmeasured)")
        if self.ensemble.size > 1:
            settings["teachers"] = self.ensemble.describe(self.names or ["cached"] * self.ensemble.size)
        return settings
