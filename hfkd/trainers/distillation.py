"""`DistillationTrainer`: a `transformers.Trainer` whose loss distills frozen teacher(s) into the student.

The objective is a list of named terms (`hfkd.objective`), the teachers live in `hfkd.teacher.teachers`,
and everything shared with other families (evaluation, exact normalisation, logging, the non-finite
policy, safe resume) in `hfkd.trainers.base`. Loops, accumulation, mixed precision, DDP/DeepSpeed/FSDP
through Accelerate, checkpointing and Hub push are the stock Trainer's.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from hfkd.config import DistillationConfig
from hfkd.models import check_sequence_length, forward_arg_names, is_causal_lm, only, require_attentions, task_of
from hfkd.objective.items import local_counts
from hfkd.objective.objective import Objective
from hfkd.objective.projections import WidthProjections
from hfkd.objective.schedules import DistillationSchedule
from hfkd.objective.stages import stage_index, stage_unit, stage_weights
from hfkd.adapters import adapter_summary, is_peft_model, merged_copy, wrap_student
from hfkd.teacher.cache import (
    CACHE_COLUMNS,
    TEACHER_TOPK_INDICES,
    TEACHER_TOPK_LOGPROBS,
    TeacherCacheCollator,
    check_cache_fits,
    has_teacher_cache,
)
from hfkd.teacher.teachers import Teachers
from hfkd.transfer.unlabeled import check_labelled_rows
from hfkd.trainers.base import DistillationTrainerBase, Terms
from hfkd.trainers.on_policy import ON_POLICY_COLUMNS, on_policy_setup


class DistillationTrainer(DistillationTrainerBase):
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
            instead of all its weights (`hfkd.adapters`).
        dataset_names: datasets named in the model card (the first is the evaluation set).

    Every other argument is `transformers.Trainer`'s.
    """

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
        _check_arguments(model, args)
        sources = list(teacher_model) if isinstance(teacher_model, (list, tuple)) else [teacher_model]
        sources = [source for source in sources if source is not None]
        # Trainer's positional order is (model, args, data_collator, train_dataset, ...).
        train_dataset = trainer_kwargs.get("train_dataset", trainer_args[1] if len(trainer_args) > 1 else None)
        self.cached = has_teacher_cache(train_dataset)
        check_labelled_rows(train_dataset, args.uses("ce"))
        self.teachers_side = Teachers(sources, model, args, trainer_kwargs.get("processing_class"),
                                      teacher_processing_class, needed=args.needs_teacher)
        self.on_policy, trainer_args, trainer_kwargs = on_policy_setup(self, model, args, trainer_args, trainer_kwargs)
        model = wrap_student(model, peft_config)
        if args.merge_adapter_on_save and not is_peft_model(model):
            raise ValueError(
                "merge_adapter_on_save=True but the student has no adapter: pass peft_config=... (or a "
                "PeftModel student), or unset merge_adapter_on_save."
            )
        longest = _longest_input(train_dataset)
        if longest is not None:
            check_sequence_length(longest, "the longest train_dataset input_ids", model, *self.teachers_side.models)
        self.objective = Objective(args, model, self.teachers_side.first, is_causal_lm(model))
        self._check_teacher_sources(sources, train_dataset, args)
        self.dataset_names = list(dataset_names or [])
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        if self.cached:
            self.data_collator = TeacherCacheCollator(self.data_collator)
        self.teachers_side.prepare(self.accelerator, self.fidelity_batches)
        if self.teacher is not None:  # relation hooks go on the teacher that will run
            self.objective.attach_relations(model, self.teacher)
        # Under DeepSpeed/FSDP the engine owns the projections (a student submodule); under DDP, hfkd does.
        self._engine_owns_projections = not self.teachers_side.on_device
        self._syncs_projections = (self.projections is not None and self.args.world_size > 1
                                   and not self._engine_owns_projections)
        if self._syncs_projections:
            self.projections.broadcast()
        self.schedule = DistillationSchedule(args)
        self.add_callback(self.schedule)
        self._student_inputs = forward_arg_names(model)
        self._checked_attentions = False

    def _check_teacher_sources(self, sources: list, train_dataset: Any, args: DistillationConfig) -> None:
        """A teacher, or a cache that can stand in for it, for every term that compares with one."""
        if self.cached:
            self.objective.check_cache(TEACHER_TOPK_LOGPROBS in train_dataset.column_names)
            if args.uses("kd"):
                check_cache_fits(train_dataset, args.kd_loss, args.temperature)
        if not sources and self.objective.needs_teacher() and (self.objective.needs_beyond_logits() or not self.cached):
            raise ValueError(
                "alpha_kd/alpha_hidden/alpha_attention/alpha_relation > 0 need a teacher: pass teacher_model=..., "
                "or (logit terms only) a train_dataset from hfkd.teacher.cache.load_teacher_cache, "
                "or set those weights to 0 to train on the labels alone."
            )

    def fidelity_batches(self) -> Any:
        eval_dataset = self.eval_dataset
        if isinstance(eval_dataset, dict):
            eval_dataset = next(iter(eval_dataset.values()), None)
        if eval_dataset is None:
            return None
        return ({k: v.to(self.args.device) for k, v in batch.items() if torch.is_tensor(v)}
                for batch in self.get_eval_dataloader(eval_dataset))

    # ------------------------------------------------------------------ what other code reads

    @property
    def teachers(self) -> list[nn.Module]:
        return self.teachers_side.models

    @property
    def teacher(self) -> nn.Module | None:
        """The first teacher: the one representation terms compare with."""
        return self.teachers_side.first

    @property
    def teacher_name(self) -> str:
        return self.teachers_side.name

    @property
    def teacher_fidelity(self) -> dict[str, float] | None:
        return self.teachers_side.fidelity

    @property
    def projections(self) -> WidthProjections | None:
        return self.objective.projections

    @property
    def relations(self) -> Any:
        return self.objective.relations

    @property
    def layer_pairs(self) -> list[tuple[int, int]]:
        """The hidden-state term's layer map (else the first layer-mapped term's)."""
        pairs = self.objective.layer_pairs
        return pairs.get("hidden") or next(iter(pairs.values()), [])

    def evaluation_inputs(self) -> frozenset[str]:
        return self._student_inputs

    def signature_columns(self, columns: list[str]) -> list[str]:
        # Keep the cached teacher columns, which remove_unused_columns would drop: no forward takes them.
        return columns + [c for c in (*CACHE_COLUMNS, *ON_POLICY_COLUMNS) if c not in columns]

    # ------------------------------------------------------------------ loss

    def current_loss_weights(self) -> dict[str, float]:
        """Weight of each term for the step being computed: the active stage's with `stages`
        (hfkd.objective.stages), else the loss-weight schedule's (constant by default)."""
        if self.args.stages:
            return self.args.loss_weights(self.state.global_step, self.state.max_steps)
        return {key.removeprefix("alpha_"): value for key, value in self.schedule.current.items()
                if key.startswith("alpha_")}

    def training_terms(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any) -> tuple[Terms, Any]:
        dataset_batch = (inputs, num_items_in_batch)
        inputs, num_items_in_batch = self.on_policy.batch(self, model, inputs, num_items_in_batch)  # on-policy/seq_kd
        weights = self.current_loss_weights()
        reference_terms: Terms = {}
        if self.on_policy.from_student:  # its labels are the student's own samples: no task loss on them
            if self.args.reference_ce and weights.get("ce", 0.0) > 0:  # but on the dataset's completions (MiniLLM)
                reference_terms, _ = self.terms_on(model, *dataset_batch, {"ce": weights["ce"]}, count_items=False)
            weights = {**weights, "ce": 0.0}
        terms, outputs = self.terms_on(model, inputs, num_items_in_batch, weights)
        return {**reference_terms, **terms}, outputs

    def terms_on(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any, weights: dict[str, float],
                 count_items: bool = True) -> tuple[Terms, Any]:
        """The weighted, normalised terms of one student forward over `inputs` (and the teacher's, if needed).

        `count_items=False` keeps a second forward of the same micro-batch out of the logged item counts."""
        active = self.objective.active(weights)
        needs = self.objective.requests(active)
        self.objective.check_labels(active, weights, inputs.get("labels"))
        hidden, attentions, qkv = "hidden_states" in needs, "attentions" in needs, "qkv" in needs
        with self.relations.student.capture() if qkv else nullcontext() as student_qkv:
            outputs = model(**only(inputs, self._student_inputs, drop=("labels",)),
                            output_hidden_states=hidden, output_attentions=attentions)
        teacher_out, teacher_qkv = self._teacher_outputs(inputs, needs)
        if attentions and not self._checked_attentions:
            require_attentions(outputs, "student")
            self._checked_attentions = True
        temperature = self.schedule.current["temperature"]  # this step's (hfkd.objective.schedules)
        topk = (inputs[TEACHER_TOPK_LOGPROBS], inputs[TEACHER_TOPK_INDICES]) if TEACHER_TOPK_LOGPROBS in inputs else None
        kd_target = None
        if "teacher_logits" in needs and topk is None:
            kd_target = self.teachers_side.kd_target(inputs, teacher_out, outputs.logits.shape[-1], temperature)
        ctx = self.objective.context(outputs, teacher_out, inputs, temperature, kd_target, topk,
                                     (student_qkv, teacher_qkv))
        # One host sync per step for the local item counts, labelled and all (normalising and logging).
        labelled_items, all_items = local_counts(ctx.labels, ctx.mask, ctx.student_logits.shape[0])
        normalisers = self.normalisers(labelled_items, num_items_in_batch, all_items if count_items else None)
        terms = {term.log_key: (weights[term.name] * normalisers.normalise(term, value), normalisers.shown(term, value))
                 for term, value in self.objective.values(active, ctx).items()}
        return terms, outputs

    def _teacher_outputs(self, inputs: dict[str, Any], needs: set[str]) -> tuple[Any, Any]:
        """The first teacher's forward, when a term needs more than what the batch's cache holds."""
        cached_logits = any(name in inputs for name in CACHE_COLUMNS)
        if self.teacher is None or not (needs - {"labels", "teacher_logits"} or ("teacher_logits" in needs
                                                                               and not cached_logits)):
            return None, None
        capture = self.relations.teacher.capture() if "qkv" in needs else None
        return self.teachers_side.forward(inputs, "hidden_states" in needs, "attentions" in needs, capture)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """Stock step; then average the projections' gradients over processes (DDP skips them)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._syncs_projections:
            self.projections.average_gradients(self.args.world_size)
        return loss

    def extra_logs(self) -> dict[str, float]:
        logs = {name: self.schedule.current[name] for name in self.schedule.scheduled}
        if self.args.stages:  # 1-based stage of the last step logged
            last_step = max(self.state.global_step - 1, 0)
            logs["stage"] = 1 + stage_index(self.args.stages, last_step, self.state.max_steps)
        return {**logs, **self.on_policy.logs()}

    # ------------------------------------------------------------------ optimizer, saving, resuming

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Stock optimizer, with the projections moved to groups at `projection_learning_rate`."""
        optimizer = super().create_optimizer(model)
        if self.projections is not None and self.args.projection_learning_rate is not None:
            self.projections.move_to_own_groups(optimizer, self.args.projection_learning_rate)
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

    def save_weights(self, output_dir: str | None, state_dict: dict | None) -> None:
        if state_dict is not None:  # DeepSpeed/FSDP hand over a gathered dict: keep the student only
            state_dict = WidthProjections.strip(state_dict)
        super().save_weights(output_dir, state_dict)

    def save_checkpoint_extras(self, folder: str) -> None:
        if self.projections is not None and not self._engine_owns_projections:
            self.projections.save(folder)

    def load_checkpoint_weights(self, folder: str, model: nn.Module | None) -> None:
        super().load_checkpoint_weights(folder, model)
        if self.projections is not None and not self._engine_owns_projections:
            self.projections.load(folder, self.args.device)

    # ------------------------------------------------------------------ model card

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
        settings: dict[str, Any] = {"preset": args.preset} if args.preset else {}
        if args.stages:
            unit = stage_unit(args.stages)
            settings["stages"] = "; ".join(f"{stage[unit]} {unit}: {_objective_text(stage_weights(stage))}"
                                           for stage in args.stages)
        else:
            settings["loss"] = _objective_text(args.loss_weights())
        settings.update(self.objective.describe())
        copied = getattr(self.model.config, "hfkd_teacher_layers", None)
        if copied is not None:
            settings["student_init"] = f"teacher layers {list(copied)} (0-based)"
        settings.update(self.teachers_side.describe())
        if args.qat_start is not None:
            settings["quantization_aware"] = (f"last {1 - args.qat_start:.0%} of the steps fake-quantised int8 "
                                              f"({args.qat_scheme} rounding)")
        if "teachers" in settings and self.objective.layer_pairs:
            settings["teachers"] += "; hidden/attention terms from the first"
        scheduled = self.schedule.describe()
        if scheduled:
            settings["schedules"] = scheduled
        adapter = adapter_summary(self.model)
        if adapter:
            settings["adapter"] = adapter + (" (merged into the saved student)" if args.merge_adapter_on_save else "")
        return settings


def _objective_text(weights: dict[str, float]) -> str:
    return " + ".join(f"{w}·{t.upper()}" for t, w in weights.items() if w > 0)


def _longest_input(dataset: Any) -> int | None:
    """Longest `input_ids` row of an Arrow-backed dataset, read from its offsets (no decoding); None otherwise."""
    table = getattr(dataset, "data", None)
    if table is None or "input_ids" not in getattr(dataset, "column_names", ()):
        return None
    import pyarrow.compute as pc

    return pc.max(pc.list_value_length(table.column("input_ids"))).as_py()


def _check_arguments(model: Any, args: Any) -> None:
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
