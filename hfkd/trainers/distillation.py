"""`DistillationTrainer`: a `transformers.Trainer` whose `compute_loss` distills a frozen teacher.

Everything else (loops, accumulation, mixed precision, DDP/DeepSpeed/FSDP through Accelerate,
checkpointing, evaluation, Hub push) is the stock Trainer, reached through its hooks.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections import defaultdict
from contextlib import nullcontext
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hfkd.student.adapters import adapter_summary, is_peft_model, merged_copy, wrap_student
from hfkd.trainers.checkpoints import checked_resume_checkpoint
from hfkd.config import DistillationConfig
from hfkd.teacher.fast import speed_up_teacher, teacher_fidelity
from hfkd.objective.layer_mapping import resolve_layer_mapping
from hfkd.objective.losses import ATTENTION_LOSSES, HIDDEN_LOSSES, KD_LOSSES, TOPK_KD_LOSSES, task_ce_loss
from hfkd.teacher.ensemble import TeacherEnsemble, check_combination
from hfkd.teacher.placement import DEVICE, prepare_teacher, teacher_placement
from hfkd.objective.relations import RelationDistiller, parse_relations
from hfkd.objective.schedules import DistillationSchedule
from hfkd.objective.stages import LOSS_TERMS, stage_index, stage_unit
from hfkd.teacher.cache import (
    CACHE_COLUMNS,
    TEACHER_LOGITS,
    TEACHER_TOPK_LOGPROBS,
    TeacherCacheCollator,
    check_cache_fits,
    has_teacher_cache,
)
from hfkd.models import (
    DistillationSetupError,
    check_teacher_student_compatibility,
    forward_arg_names,
    is_causal_lm,
    load_teacher,
    require_attentions,
    task_of,
)

logger = logging.getLogger(__name__)

PROJECTIONS_NAME = "hfkd_projections.safetensors"
PROJECTIONS_ATTR = "hfkd_projections"
_PROJECTION_INITS = {
    "xavier": nn.init.xavier_uniform_,
    "normal": lambda weight: nn.init.normal_(weight, std=0.02),
    "identity": nn.init.eye_,
}


class DistillationTrainer(Trainer):
    """Trainer that adds the teacher's knowledge to the student's loss.

    Args:
        model: the student (a `PreTrainedModel`, or a `peft.PeftModel`); it is the model Trainer
            trains, evaluates and saves.
        teacher_model: a model, or a name/path loaded with the student's Auto class and
            `args.teacher_model_init_kwargs` (a PEFT adapter folder loads merged into its base), or
            a list of those: several teachers, combined per `args.teacher_weights` and
            `args.teacher_combination` (`hfkd.teacher.ensemble`). Frozen, in eval mode, and placed for
            the engine by `hfkd.teacher.placement` (on the device; a DeepSpeed engine; FSDP-sharded). May be
            None when only `alpha_ce` is active, or when only logit terms are and `train_dataset`
            carries cached teacher logits (`hfkd.teacher.cache.load_teacher_cache`).
        args: a `DistillationConfig`.
        teacher_processing_class: the teacher's tokenizer (or one per teacher), checked
            token-for-token against `processing_class` (the student's) when both are given.
        peft_config: a `peft.PeftConfig` (e.g. `LoraConfig`): train an adapter on the student
            instead of all its weights (`hfkd.student.adapters`).
        dataset_names: datasets named in the model card (the first is the evaluation set).
        Every other argument is `transformers.Trainer`'s.
    """

    # compute_loss normalises for gradient accumulation itself (see `_normalisers`).
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        teacher_model: PreTrainedModel | str | None = None,
        args: DistillationConfig | None = None,
        *trainer_args: Any,
        teacher_processing_class: Any = None,
        dataset_names: list[str] | None = None,
        peft_config: Any = None,
        **trainer_kwargs: Any,
    ) -> None:
        if model is None or isinstance(model, str):
            raise ValueError(
                "DistillationTrainer needs the student as a model object "
                "(e.g. hfkd.create_student(teacher) or AutoModelFor*.from_pretrained(...))."
            )
        if not isinstance(args, DistillationConfig):
            raise TypeError(
                f"args must be an hfkd.DistillationConfig, got {type(args).__name__}; "
                "DistillationConfig accepts every TrainingArguments field."
            )
        sources = list(teacher_model) if isinstance(teacher_model, (list, tuple)) else [teacher_model]
        sources = [source for source in sources if source is not None]
        teachers: list[nn.Module] = []
        # Trainer's positional order is (model, args, data_collator, train_dataset, ...).
        train_dataset = trainer_kwargs.get("train_dataset", trainer_args[1] if len(trainer_args) > 1 else None)
        cached = has_teacher_cache(train_dataset)
        if cached and args.uses("kd"):
            check_cache_fits(train_dataset, args.kd_loss, args.temperature)
        representations = args.uses("hidden") or args.uses("attention") or args.uses("relation")
        if not sources and (representations or (args.uses("kd") and not cached)):
            raise ValueError(
                "alpha_kd/alpha_hidden/alpha_attention/alpha_relation > 0 need a teacher: pass teacher_model=..., "
                "or (logit terms only) a train_dataset from hfkd.teacher.cache.load_teacher_cache, "
                "or set those weights to 0 to train on the labels alone."
            )
        self.ensemble = TeacherEnsemble.from_config(args.teacher_weights, args.teacher_combination, len(sources) or None)
        check_combination(args.kd_loss, args.teacher_combination, self.ensemble.size)
        if args.needs_teacher and sources:
            teachers = [load_teacher(source, model, args) for source in sources]
            self._check_teachers(teachers, model, trainer_kwargs.get("processing_class"), teacher_processing_class)
            if args.uses("attention"):
                for m in (teachers[0], model):
                    m.set_attn_implementation("eager")
        teacher = teachers[0] if teachers else None
        self.teacher_names = [_model_name(source) for source in sources]
        self.teacher_name = self.teacher_names[0] if self.teacher_names else "teacher"
        model = wrap_student(model, peft_config)
        if args.merge_adapter_on_save and not is_peft_model(model):
            raise ValueError(
                "merge_adapter_on_save=True but the student has no adapter: pass peft_config=... (or a "
                "PeftModel student), or unset merge_adapter_on_save."
            )
        self.dataset_names = list(dataset_names or [])
        self.layer_pairs = self._layer_pairs(model, teacher, args)
        self.projections = self._attach_projections(model, teacher, args)
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        # Have Trainer count label items over the whole accumulation window (num_items_in_batch).
        self.model_accepts_loss_kwargs = True
        if cached:
            self.data_collator = TeacherCacheCollator(self.data_collator)
        self.teacher_fidelity: dict[str, float] | None = None  # set when a cheaper teacher is measured
        self._teacher_on_device = teacher_placement(self.accelerator) == DEVICE
        self.teachers = [self._prepare_teacher(t) for t in teachers]
        self.teacher = self.teachers[0] if self.teachers else None  # also the one hidden/attention terms use
        self.relations = None
        if self.teacher is not None and args.uses("relation"):  # hooks go on the teacher that will run
            self.relations = RelationDistiller(
                model, self.teacher, parse_relations(args.relations), args.relation_heads,
                args.relation_student_layer, args.relation_teacher_layer, causal=is_causal_lm(model),
            )
        # Under DeepSpeed/FSDP the engine owns the projections (a student submodule); under DDP, hfkd does.
        self._engine_owns_projections = not self._teacher_on_device
        self._syncs_projections = (
            self.projections is not None and self.args.world_size > 1 and not self._engine_owns_projections
        )
        if self._syncs_projections:
            self._share_projections()
        self.schedule = DistillationSchedule(args)
        self.add_callback(self.schedule)
        self._student_inputs = forward_arg_names(model)
        self._teacher_inputs = [forward_arg_names(t) for t in self.teachers]
        self._causal = is_causal_lm(model)
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_steps = 0
        self._checked_outputs = False
        self.skipped_updates = 0
        self._guarded_optimizer: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def _check_teachers(teachers: list[nn.Module], student: nn.Module, tokenizer: Any, teacher_tokenizers: Any) -> None:
        """Every teacher against the student; with several, the error says which teacher."""
        if not isinstance(teacher_tokenizers, (list, tuple)):
            teacher_tokenizers = [teacher_tokenizers] * len(teachers)
        for number, (teacher, teacher_tokenizer) in enumerate(zip(teachers, teacher_tokenizers), start=1):
            try:
                check_teacher_student_compatibility(
                    teacher, student, student_tokenizer=tokenizer, teacher_tokenizer=teacher_tokenizer
                )
            except DistillationSetupError as error:
                if len(teachers) == 1:
                    raise
                raise DistillationSetupError(f"teacher {number} of {len(teachers)}: {error}") from None

    @staticmethod
    def _layer_pairs(
        student: nn.Module, teacher: nn.Module | None, args: DistillationConfig
    ) -> list[tuple[int, int]]:
        if teacher is None or not (args.uses("hidden") or args.uses("attention")):
            return []
        pairs = resolve_layer_mapping(
            args.layer_mapping,
            student_layers=student.config.num_hidden_layers,
            teacher_layers=teacher.config.num_hidden_layers,
            include_embeddings=args.include_embeddings,
            student_teacher_layers=getattr(student.config, "hfkd_teacher_layers", None),
        )
        if args.uses("attention") and not any(s > 0 and t > 0 for s, t in pairs):
            raise ValueError(
                f"alpha_attention > 0 but layer_mapping {pairs} only pairs embedding outputs, which "
                "have no attention maps; map at least one transformer layer."
            )
        return pairs

    def _attach_projections(
        self, student: nn.Module, teacher: nn.Module | None, args: DistillationConfig
    ) -> nn.ModuleDict | None:
        """Linear student→teacher width maps, one per mapped layer, registered on the student.

        Registering them on the student lets DDP/DeepSpeed/FSDP, the optimizer and checkpoint
        resumption treat them like any student weight; `_keys_to_ignore_on_save` keeps them out
        of the saved student. Checkpoints store them in `hfkd_projections.safetensors`, except under
        DeepSpeed/FSDP, whose own checkpoints (model and optimizer state) already hold them.
        """
        if teacher is None or not args.uses("hidden"):
            return None
        d_s, d_t = student.config.hidden_size, teacher.config.hidden_size
        if d_s == d_t:
            return None
        projections = nn.ModuleDict({str(s): nn.Linear(d_s, d_t) for s, _ in self.layer_pairs})
        for layer in projections.values():
            _PROJECTION_INITS[args.projection_init](layer.weight)
            nn.init.zeros_(layer.bias)
        projections.to(device=student.device, dtype=next(student.parameters()).dtype)
        student.add_module(PROJECTIONS_ATTR, projections)
        names = {f"{PROJECTIONS_ATTR}.{n}" for n, _ in projections.named_parameters()}
        student._keys_to_ignore_on_save = set(student._keys_to_ignore_on_save or ()) | names
        # DDP rejects parameters used outside the wrapped forward: it skips these, and
        # `_share_projections` keeps them identical across processes instead.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(student, sorted(names))
        return projections

    def _share_projections(self) -> None:
        """Same initial projections on every process (their gradients: see `training_step`)."""
        for parameter in self.projections.parameters():
            torch.distributed.broadcast(parameter.data, src=0)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """Stock step; then average the projections' gradients over processes (DDP skips them).

        Done after backward, not in gradient hooks: collectives issued from hooks could interleave
        with DDP's own bucket all-reduces in a different order on each process and deadlock.
        """
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._syncs_projections:
            grads = [p.grad for p in self.projections.parameters() if p.grad is not None]
            if grads:
                flat = torch.cat([g.reshape(-1) for g in grads])
                torch.distributed.all_reduce(flat)
                flat /= self.args.world_size
                offset = 0
                for grad in grads:
                    grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                    offset += grad.numel()
        return loss

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        """Frozen, and placed for the engine (`hfkd.teacher.placement`); made cheaper only with its fidelity measured."""
        args = self.args
        dtype = getattr(torch, args.teacher_dtype) if args.teacher_dtype else None
        if not (args.teacher_quantization or args.teacher_compile):
            return prepare_teacher(teacher, self.accelerator, dtype=dtype)
        if not self._teacher_on_device:
            raise DistillationSetupError(
                "teacher_quantization/teacher_compile apply to a teacher on one device, not to one sharded by "
                "DeepSpeed/FSDP: unset them (use teacher_dtype or the engine's precision instead)."
            )
        teacher.requires_grad_(False)
        teacher.eval()
        reference = copy.deepcopy(teacher).to(args.device)
        fast = speed_up_teacher(teacher, device=args.device, dtype=dtype, quantization=args.teacher_quantization,
                                compile=args.teacher_compile)
        self._measure_teacher_fidelity(reference, fast)
        return fast
    def _measure_teacher_fidelity(self, reference: nn.Module, fast: nn.Module) -> None:
        """Compare the cheaper teacher with the full one on evaluation batches; refuse a poor copy."""
        eval_dataset = self.eval_dataset
        if isinstance(eval_dataset, dict):
            eval_dataset = next(iter(eval_dataset.values()), None)
        if eval_dataset is None:
            logger.warning("cheaper teacher in use but its fidelity is unmeasured: no eval_dataset was given")
            return
        batches = ({k: v.to(self.args.device) for k, v in batch.items() if torch.is_tensor(v)}
                   for batch in self.get_eval_dataloader(eval_dataset))
        self.teacher_fidelity = teacher_fidelity(reference, fast, batches, accepted_inputs=forward_arg_names(reference))
        logger.info("cheaper teacher vs full teacher: %s", self.teacher_fidelity)
        agreement = self.teacher_fidelity["argmax_agreement"]
        if agreement < self.args.teacher_min_agreement:
            raise DistillationSetupError(
                f"the cheaper teacher (teacher_dtype={self.args.teacher_dtype}, teacher_quantization="
                f"{self.args.teacher_quantization}, teacher_compile={self.args.teacher_compile}) agrees with the "
                f"full teacher on {agreement:.1%} of evaluation items, below teacher_min_agreement="
                f"{self.args.teacher_min_agreement}: drop that option or lower the bound knowingly."
            )

    def _teacher_mode(self) -> Any:
        """inference_mode for a teacher on one device; no_grad when ZeRO-3/FSDP gather its weights in the forward."""
        return torch.inference_mode() if self._teacher_on_device else torch.no_grad()

    def _set_signature_columns_if_needed(self) -> None:
        # Keep the cached teacher columns, which remove_unused_columns would drop: no forward takes them.
        super()._set_signature_columns_if_needed()
        self._signature_columns += [c for c in CACHE_COLUMNS if c not in self._signature_columns]

    # ------------------------------------------------------------------ loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if not model.training:
            # Evaluation and prediction measure the student alone on its own task loss.
            outputs = model(**_only(inputs, self._student_inputs))
            return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

        args = self.args
        weights = self.current_loss_weights()
        labels = inputs.get("labels")
        if weights["ce"] > 0 and labels is None:
            raise ValueError(
                f"alpha_ce={weights['ce']} but the batch has no 'labels'; add a label column "
                "(or a collator that makes labels) or set alpha_ce=0."
            )
        want_hidden, want_attn = weights["hidden"] > 0, weights["attention"] > 0
        want_relation = weights["relation"] > 0
        model_inputs = _only(inputs, self._student_inputs, drop=("labels",))
        with self.relations.student.capture() if want_relation else nullcontext() as student_qkv:
            outputs = model(**model_inputs, output_hidden_states=want_hidden, output_attentions=want_attn)
        # Cached teacher outputs: [logits], or [top-k log-probs, top-k ids] (hfkd.teacher.cache).
        cached = [inputs[name] for name in CACHE_COLUMNS if name in inputs]
        teacher_out = None
        representations = want_hidden or want_attn or want_relation
        if self.teacher is not None and (representations or (weights["kd"] > 0 and not cached)):
            teacher_capture = self.relations.teacher.capture() if want_relation else nullcontext()
            with self._teacher_mode(), teacher_capture as teacher_qkv:
                teacher_out = self.teacher(
                    **_only(inputs, self._teacher_inputs[0], drop=("labels",)),
                    output_hidden_states=want_hidden,
                    output_attentions=want_attn,
                )
            if want_attn and not self._checked_outputs:  # the first step with attention (stages may start without)
                require_attentions(outputs, "student")
                require_attentions(teacher_out, "teacher")
                self._checked_outputs = True

        logits, labels_t, mask = self._aligned(outputs.logits, labels, inputs.get("attention_mask"))
        # One host sync per step for the local item count (used for normalising and logging).
        local_items = max(int(mask.sum()) if mask is not None else logits.shape[0], 1)
        per_item, per_step = self._normalisers(local_items, num_items_in_batch)
        position_mask = inputs.get("attention_mask")

        terms: dict[str, torch.Tensor] = {}
        if weights["ce"] > 0:
            ce_labels = labels_t if mask is None else labels_t[mask]
            ce_logits = logits if mask is None else logits[mask]
            terms["ce_loss"] = task_ce_loss(ce_logits, ce_labels, reduction="sum")
        temperature = self.schedule.current["temperature"]  # this step's (hfkd.objective.schedules)
        if weights["kd"] > 0:
            if TEACHER_TOPK_LOGPROBS in inputs:  # one teacher's top-k log-probs at the cache's temperature
                targets, kd_losses = [self._aligned(t, None, None)[0] for t in cached], TOPK_KD_LOSSES
            else:
                target = self._kd_target(inputs, teacher_out, logits.shape[-1], temperature)
                targets, kd_losses = [self._aligned(target, None, None)[0]], KD_LOSSES
            terms["kd_loss"] = kd_losses[args.kd_loss](
                logits,
                *targets,
                temperature=temperature,
                mask=mask,
                scale_by_t2=args.kd_scale_by_t2,
                reduction="sum",
                beta=args.jsd_beta,
            )
        if want_hidden:
            terms["hidden_loss"] = self._hidden_term(outputs, teacher_out, position_mask)
        if want_attn:
            terms["attention_loss"] = self._attention_term(outputs, teacher_out, position_mask)
        if want_relation:
            terms["relation_loss"] = self.relations.loss(student_qkv, teacher_qkv, position_mask)

        loss = 0.0
        for name, value in terms.items():
            weight = weights[name.removesuffix("_loss")]
            normalised = per_item(value) if name in ("ce_loss", "kd_loss") else per_step(value)
            loss = loss + weight * normalised
        if self._is_finite(loss, terms):
            for name, value in terms.items():  # log the per-item mean, whatever the accumulation window
                shown = value / local_items if name in ("ce_loss", "kd_loss") else value
                self._term_sums[name] += shown.detach()
            self._term_steps += 1
        return (loss, outputs) if return_outputs else loss

    def _kd_target(self, inputs: dict[str, Any], teacher_out: Any, classes: int, temperature: float) -> torch.Tensor:
        """The KD target logits: cached or from the teachers, combined when there are several."""
        cached = inputs.get(TEACHER_LOGITS)
        if cached is not None:
            return self.ensemble.combine(self.ensemble.split_cached(cached, classes), temperature)
        per_teacher = [teacher_out.logits]
        with self._teacher_mode():
            for teacher, accepted in zip(self.teachers[1:], self._teacher_inputs[1:]):
                per_teacher.append(teacher(**_only(inputs, accepted, drop=("labels",))).logits)
        return self.ensemble.combine(per_teacher, temperature)

    def current_loss_weights(self) -> dict[str, float]:
        """Weight of each term ('ce', 'kd', 'hidden', 'attention', 'relation') for the step being
        computed: the active stage's with `stages` (hfkd.objective.stages), else the loss-weight schedule's
        (hfkd.objective.schedules; constant by default). compute_loss reads its weights only here."""
        if self.args.stages:
            return self.args.loss_weights(self.state.global_step, self.state.max_steps)
        return {term: self.schedule.current[f"alpha_{term}"] for term in LOSS_TERMS}

    def _aligned(
        self, logits: torch.Tensor, labels: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Logits, labels and item mask, shifted for causal LMs; mask None for sequence tasks."""
        if logits.dim() == 2:
            return logits, labels, None
        if self._causal:
            logits = logits[:, :-1]
            labels = labels[:, 1:] if labels is not None else None
            attention_mask = attention_mask[:, 1:] if attention_mask is not None else None
        if labels is not None:
            return logits, labels, labels.ne(-100)
        if attention_mask is not None:
            return logits, None, attention_mask.bool()
        return logits, None, torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)

    def _normalisers(self, local_items: int, num_items_in_batch: Any):
        """Scalers that make gradient accumulation (and DDP averaging) exact.

        Label-level terms (CE, KD) are sums divided by the label count of the whole accumulated
        batch (`num_items_in_batch`, summed over processes by Trainer); representation terms
        (hidden, attention) are micro-batch means divided by the number of accumulation steps.
        """
        steps = getattr(self, "current_gradient_accumulation_steps", 1) or 1
        if num_items_in_batch is None:
            denominator = local_items * steps
            return (lambda v: v / denominator), (lambda v: v / steps)
        processes = self.accelerator.num_processes
        scale = processes if self.args.average_tokens_across_devices and processes > 1 else 1
        return (lambda v: v * scale / num_items_in_batch), (lambda v: v / steps)

    def _hidden_term(self, outputs: Any, teacher_out: Any, mask: torch.Tensor | None) -> torch.Tensor:
        loss_fn = HIDDEN_LOSSES[self.args.hidden_loss]
        values = []
        for s, t in self.layer_pairs:
            student_h = outputs.hidden_states[s]
            if self.projections is not None:
                student_h = self.projections[str(s)](student_h)
            values.append(loss_fn(student_h, teacher_out.hidden_states[t], mask))
        return torch.stack(values).mean()

    def _attention_term(self, outputs: Any, teacher_out: Any, mask: torch.Tensor | None) -> torch.Tensor:
        loss_fn = ATTENTION_LOSSES[self.args.attention_loss]
        values = [
            loss_fn(outputs.attentions[s - 1], teacher_out.attentions[t - 1], mask)
            for s, t in self.layer_pairs
            if s > 0 and t > 0
        ]
        return torch.stack(values).mean()

    def _is_finite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> bool:
        """Raise on a NaN/inf loss, or (nonfinite_loss='skip') warn and let `_guard_optimizer_step` drop the update."""
        if bool(torch.isfinite(loss)):
            return True
        bad = ", ".join(name for name, value in terms.items() if not bool(torch.isfinite(value))) or "loss"
        step = self.state.global_step + 1
        if self.args.nonfinite_loss == "raise":
            raise FloatingPointError(
                f"non-finite {bad} at step {step}: training stopped, the last saved checkpoint is intact. "
                "Lower the learning rate or temperature, use fp32/bf16 instead of fp16, check the inputs, "
                "or set nonfinite_loss='skip'."
            )
        logger.warning("non-finite %s at step %d: this optimizer update will be skipped", bad, step)
        return False

    def _guard_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """nonfinite_loss='skip': an update whose gradients hold NaN/inf is dropped, on every process.

        Checked on the gradients at step time (as AMP's GradScaler does), not on the loss: after DDP's
        all-reduce every process sees the same NaN, and under FSDP one flag is reduced across shards.
        """
        step = optimizer.step

        def guarded_step(*args: Any, **kwargs: Any) -> Any:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            bad = torch.zeros((), device=grads[0].device if grads else self.args.device)
            for grad in grads:
                bad = torch.maximum(bad, (~torch.isfinite(grad)).any().to(bad.dtype))
            if self.args.world_size > 1:
                torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
            if not bool(bad):
                return step(*args, **kwargs)
            optimizer.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            if self.skipped_updates > self.args.max_skipped_updates:
                raise FloatingPointError(
                    f"{self.skipped_updates} optimizer updates skipped for non-finite gradients (last at step "
                    f"{self.state.global_step + 1}), more than max_skipped_updates={self.args.max_skipped_updates}: "
                    "training stopped; lower the learning rate or temperature, or check the inputs."
                )
            return None

        optimizer.step = guarded_step
        self._guarded_optimizer = optimizer

    # ------------------------------------------------------------------ logging

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and flush_term_means(self, logs):
            logs.update({name: self.schedule.current[name] for name in self.schedule.scheduled})
            if self.args.stages:  # 1-based stage of the last step logged
                last_step = max(self.state.global_step - 1, 0)
                logs["stage"] = 1 + stage_index(self.args.stages, last_step, self.state.max_steps)
        if "loss" in logs and self.args.nonfinite_loss == "skip":
            logs["skipped_updates"] = self.skipped_updates
        super().log(logs, start_time)

    # ------------------------------------------------------------------ optimizer and saving

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Stock optimizer, with the projections moved to groups at `projection_learning_rate`."""
        optimizer = super().create_optimizer(model)
        if self.args.nonfinite_loss == "skip" and optimizer is not self._guarded_optimizer:
            self._guard_optimizer_step(optimizer)
        if self.projections is None or self.args.projection_learning_rate is None:
            return optimizer
        projection_ids = {id(p) for p in self.projections.parameters()}
        moved_groups = []
        for group in optimizer.param_groups:
            moved = [p for p in group["params"] if id(p) in projection_ids]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in projection_ids]
                settings = {k: v for k, v in group.items() if k != "params"}
                moved_groups.append({**settings, "params": moved, "lr": self.args.projection_learning_rate})
        for group in moved_groups:
            optimizer.add_param_group(group)
        return optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the clean student (a PEFT student: its adapter, or merged with `merge_adapter_on_save`)
        and, outside checkpoints, its model card."""
        if not _internal_call and self.args.merge_adapter_on_save:
            self.save_merged_student(output_dir)
        else:
            super().save_model(output_dir, _internal_call)
        if not _internal_call and self.args.should_save:
            self.write_model_card(output_dir or self.args.output_dir)

    def save_merged_student(self, output_dir: str | None = None) -> None:
        """Write the PEFT student with its adapter merged in: a plain `AutoModelFor*` checkpoint.

        Needs the whole student on each process (not under DeepSpeed ZeRO-3 or sharded FSDP).
        """
        student = self.accelerator.unwrap_model(self.model)
        if not is_peft_model(student):
            raise ValueError("save_merged_student needs a PEFT student (peft_config=...); use save_model instead.")
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        merged_copy(student).save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def create_model_card(self, model_name: str | None = None, license: str | None = None,
                          dataset: str | list[str] | None = None, **_: Any) -> None:
        """Trainer.push_to_hub's hook: our card replaces the generic one."""
        if self.is_world_process_zero():
            self.write_model_card(self.args.output_dir, model_name=model_name, license=license, dataset=dataset)

    def write_model_card(self, output_dir: str, model_name: str | None = None, license: str | None = None,
                         dataset: str | list[str] | None = None, report: dict | None = None) -> None:
        """README.md with Hub metadata, the distillation settings and (if measured) the report."""
        from hfkd.report.model_card import build_model_card, write_model_card

        report_path = os.path.join(output_dir, "report", "report.json")
        if report is None and os.path.isfile(report_path):
            with open(report_path, encoding="utf-8") as handle:
                report = json.load(handle)
        datasets = [dataset] if isinstance(dataset, str) else list(dataset or self.dataset_names or ["unknown"])
        metrics = next((h for h in reversed(self.state.log_history) if "eval_loss" in h), {})
        text = build_model_card(
            model_name=model_name or self.args.hub_model_id or os.path.basename(os.path.normpath(output_dir)),
            teacher_name=self.teacher_name,
            dataset_names=datasets,
            metrics={k: v for k, v in metrics.items() if k.startswith("eval_")},
            task=task_of(self.model) or "feature-extraction",
            distillation_settings=self.distillation_settings(),
            report=report,
            license=license,
        )
        write_model_card(output_dir, text)

    def distillation_settings(self) -> dict[str, Any]:
        """What the model card says about how this student was made."""
        args = self.args

        def objective(weights: dict[str, float]) -> str:
            return " + ".join(f"{w}·{t.upper()}" for t, w in weights.items() if w > 0)

        settings: dict[str, Any] = {}
        if args.preset:
            settings["preset"] = args.preset
        if args.stages:
            unit = stage_unit(args.stages)
            settings["stages"] = "; ".join(
                f"{stage[unit]} {unit}: {objective({t: stage[f'alpha_{t}'] for t in LOSS_TERMS})}"
                for stage in args.stages
            )
        else:
            settings["loss"] = objective(args.loss_weights())
        settings["kd_loss"] = f"{args.kd_loss} (T={args.temperature}, T² scaling {'on' if args.kd_scale_by_t2 else 'off'})"
        if args.uses("hidden"):
            settings["hidden_loss"] = args.hidden_loss
        if args.uses("attention"):
            settings["attention_loss"] = f"{args.attention_loss} (post-softmax attention probabilities)"
        if self.relations is not None:
            settings["relations"] = (
                f"{args.relations} KL, {self.relations.num_heads} relation heads, student layer "
                f"{self.relations.student.layer} ↔ teacher layer {self.relations.teacher.layer}"
            )
        if self.layer_pairs:
            settings["layer_map (student→teacher hidden states)"] = ", ".join(f"{s}→{t}" for s, t in self.layer_pairs)
        copied = getattr(self.model.config, "hfkd_teacher_layers", None)
        if copied is not None:
            settings["student_init"] = f"teacher layers {list(copied)} (0-based)"
        if self.projections is not None:
            settings["projections"] = "linear, student width → teacher width, not part of the saved student"
        settings["teacher"] = self.teacher_name
        cheaper = [f"{name}={getattr(args, name)}" for name in ("teacher_dtype", "teacher_quantization", "teacher_compile")
                   if getattr(args, name)]
        if cheaper:
            fidelity = self.teacher_fidelity
            settings["teacher_forward"] = ", ".join(cheaper) + (
                f" (argmax agreement with the full teacher {fidelity['argmax_agreement']:.2%}, mean KL "
                f"{fidelity['mean_kl']:.2e}, on {fidelity['items']} evaluation items)" if fidelity else " (unmeasured)")
        if self.ensemble.size > 1:
            settings["teachers"] = self.ensemble.describe(self.teacher_names or ["cached"] * self.ensemble.size)
            settings["teachers"] += "; hidden/attention terms from the first" if self.layer_pairs else ""
        scheduled = self.schedule.describe()
        if scheduled:
            settings["schedules"] = scheduled
        adapter = adapter_summary(self.model)
        if adapter:
            settings["adapter"] = adapter + (" (merged into the saved student)" if self.args.merge_adapter_on_save else "")
        return settings

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if state_dict is not None:  # DeepSpeed/FSDP hand over a gathered dict: keep the student only
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(PROJECTIONS_ATTR + ".")}
        super()._save(output_dir, state_dict=state_dict)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        if self.projections is not None and self.args.should_save and not self._engine_owns_projections:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            state = {k: v.detach().cpu().contiguous() for k, v in self.projections.state_dict().items()}
            tmp = os.path.join(folder, PROJECTIONS_NAME + ".tmp")
            save_file(state, tmp, metadata={"format": "pt"})
            os.replace(tmp, os.path.join(folder, PROJECTIONS_NAME))
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """Stock `train()`; a checkpoint a kill left half-written is never resumed from
        (`hfkd.trainers.checkpoints.checked_resume_checkpoint`)."""
        resume = checked_resume_checkpoint(self.args.output_dir, resume_from_checkpoint)
        return super().train(resume, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.projections is None or self._engine_owns_projections:
            return
        path = os.path.join(resume_from_checkpoint, PROJECTIONS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"checkpoint {resume_from_checkpoint} has no {PROJECTIONS_NAME}: it was not written by a "
                "DistillationTrainer with the same width projections; resume from a matching checkpoint."
            )
        self.projections.load_state_dict(load_file(path, device=str(self.args.device)))


def _model_name(model: nn.Module | str) -> str:
    return model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", None) or "teacher"


def flush_term_means(trainer: Any, logs: dict[str, float]) -> bool:
    """Move the per-term loss sums (`trainer._term_sums` over `trainer._term_steps` steps) into `logs`
    as means and reset them; False when no step was summed since the last log."""
    if not trainer._term_steps:
        return False
    for name, total in trainer._term_sums.items():
        logs[name] = round(float(total) / trainer._term_steps, 6)
    trainer._term_sums.clear()
    trainer._term_steps = 0
    return True


def _only(inputs: dict[str, Any], accepted: frozenset[str], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in inputs.items() if k in accepted and k not in drop}

