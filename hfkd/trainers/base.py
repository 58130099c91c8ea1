"""`DistillationTrainerBase`: what every hfkd trainer shares, on top of `transformers.Trainer`.

It owns the evaluation branch (the student alone on its task loss), input filtering, exact
per-term normalisation and logging, the non-finite policy (`nonfinite_loss` raise/skip) and safe
resume. A family only says how a training micro-batch becomes named term values
(`training_terms`); `DistillationTrainer` and `MutualDistillationTrainer` are the two families.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from hfkd.models import is_causal_lm, only
from hfkd.objective.items import window_unlabeled_items
from hfkd.objective.objective import Normalisers
from hfkd.trainers.checkpoints import checked_resume_checkpoint
from hfkd.trainers.internals import TrainerInternals
from hfkd.trainers.qat import QuantizationAwareTraining
from hfkd.trainers.sampling import LengthBucketedSampler, row_lengths

logger = logging.getLogger(__name__)

Terms = dict[str, tuple[torch.Tensor, torch.Tensor]]  # log name -> (weighted normalised value, value shown)


class NonFiniteGuard(TrainerCallback):
    """nonfinite_loss='skip': an update whose gradients hold NaN/inf is dropped, on every process.

    Checked on the gradients just before the optimizer step (Trainer's `on_pre_optimizer_step`), as
    AMP's GradScaler does, not on the loss: after DDP's all-reduce every process sees the same NaN,
    and under FSDP one flag is reduced across shards. Dropping = every gradient set to None, which
    torch optimizers skip: weights and optimizer state stay as they were.
    """

    def __init__(self, max_skipped: int) -> None:
        self.max_skipped = max_skipped
        self.skipped = 0

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        bad = torch.zeros((), device=grads[0].device if grads else args.device)
        for grad in grads:
            bad = torch.maximum(bad, (~torch.isfinite(grad)).any().to(bad.dtype))
        if args.world_size > 1:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if not bool(bad):
            return
        for p in params:
            p.grad = None
        self.skipped += 1
        if self.skipped > self.max_skipped:
            raise FloatingPointError(
                f"{self.skipped} optimizer updates skipped for non-finite gradients (last at step "
                f"{state.global_step + 1}), more than max_skipped_updates={self.max_skipped}: "
                "training stopped; lower the learning rate or temperature, or check the inputs."
            )


class DistillationTrainerBase(TrainerInternals):
    """A `Trainer` whose training loss is a sum of named, exactly normalised terms.

    Subclasses implement `training_terms(model, inputs, num_items_in_batch) -> (terms, outputs)`,
    returning for each term its weighted, normalised contribution and the value to log.
    """

    # compute_loss normalises for gradient accumulation itself (`Normalisers`).
    loss_is_scaled_for_ga = True

    def __init__(self, model: nn.Module, args: Any, *trainer_args: Any, **trainer_kwargs: Any) -> None:
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        # Have Trainer count label items over the whole accumulation window (num_items_in_batch).
        self.model_accepts_loss_kwargs = True
        self._term_sums: dict[str, torch.Tensor | float] = defaultdict(float)
        self._term_steps = 0
        self._unlabeled_in_window: torch.Tensor | int = 0
        self._item_counts: dict[str, int] = defaultdict(int)  # labelled / all items since the last log
        self._logs_item_counts = False  # from the first unlabeled row on
        self.nonfinite_guard: NonFiniteGuard | None = None
        if args.nonfinite_loss == "skip":
            self.nonfinite_guard = NonFiniteGuard(args.max_skipped_updates)
            self.add_callback(self.nonfinite_guard)
        if args.qat_start is not None:  # quantization-aware distillation for the end of the run
            self.add_callback(QuantizationAwareTraining(args.qat_start, args.qat_scheme))

    @property
    def skipped_updates(self) -> int:
        return self.nonfinite_guard.skipped if self.nonfinite_guard else 0

    def evaluation_inputs(self) -> frozenset[str] | None:
        """What the model's forward takes in evaluation (None: everything)."""
        return None

    def training_terms(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any) -> tuple[Terms, Any]:
        raise NotImplementedError

    def train_sampler(self, dataset: Any) -> Any:
        """length_bucketing: batches of similar lengths in a (seed, epoch)-determined random order."""
        if not self.args.length_bucketing or dataset is None:
            return super().train_sampler(dataset)
        input_name = self.processing_class.model_input_names[0] if self.processing_class is not None else "input_ids"
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthBucketedSampler(row_lengths(dataset, self.args.length_column_name, input_name),
                                     self._train_batch_size, self.args.bucket_megabatch, seed)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        """Stock (one accumulation window and its labelled item count), plus the window's unlabeled
        items, counted the same way (over processes too), which KD-like terms are normalised by."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        unlabeled = window_unlabeled_items(batch_samples, is_causal_lm(self.model))
        if torch.is_tensor(unlabeled) and self.args.average_tokens_across_devices and self.args.world_size > 1:
            unlabeled = self.accelerator.gather(unlabeled.to(device)).sum()
        self._unlabeled_in_window = unlabeled.to(device) if torch.is_tensor(unlabeled) else unlabeled
        return batch_samples, num_items_in_batch

    def normalisers(self, local_items: int, num_items_in_batch: Any, local_all_items: int | None = None) -> Normalisers:
        if local_all_items is not None:
            self._item_counts["labelled_items"] += local_items
            self._item_counts["all_items"] += local_all_items
            self._logs_item_counts = self._logs_item_counts or local_all_items != local_items
        return Normalisers.for_step(
            local_items, num_items_in_batch, getattr(self, "current_gradient_accumulation_steps", 1),
            self.accelerator.num_processes, self.args.average_tokens_across_devices,
            local_all_items, self._unlabeled_in_window,
        )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if not model.training:
            # Evaluation and prediction measure the student alone on its own task loss.
            outputs = model(**only(inputs, self.evaluation_inputs()))
            return (outputs["loss"], outputs) if return_outputs else outputs["loss"]
        terms, outputs = self.training_terms(model, inputs, num_items_in_batch)
        loss: Any = 0.0
        for contribution, _ in terms.values():
            loss = loss + contribution
        if self._is_finite(loss, terms):
            for name, (_, shown) in terms.items():
                self._term_sums[name] += shown.detach()
            self._term_steps += 1
        return (loss, outputs) if return_outputs else loss

    def _is_finite(self, loss: torch.Tensor, terms: Terms) -> bool:
        """Raise on a NaN/inf loss, or (nonfinite_loss='skip') warn and let `NonFiniteGuard` drop the update."""
        if bool(torch.isfinite(loss)):
            return True
        bad = ", ".join(name for name, (value, _) in terms.items() if not bool(torch.isfinite(value))) or "loss"
        step = self.state.global_step + 1
        if self.args.nonfinite_loss == "raise":
            raise FloatingPointError(
                f"non-finite {bad} at step {step}: training stopped, the last saved checkpoint is intact. "
                "Lower the learning rate or temperature, use fp32/bf16 instead of fp16, check the inputs, "
                "or set nonfinite_loss='skip'."
            )
        logger.warning("non-finite %s at step %d: this optimizer update will be skipped", bad, step)
        return False

    def extra_logs(self) -> dict[str, float]:
        """Values a family adds to each training log (scheduled weights, the stage, ...)."""
        return {}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_steps:
            for name, total in self._term_sums.items():
                logs[name] = round(float(total) / self._term_steps, 6)
            self._term_sums.clear()
            self._term_steps = 0
            if self._logs_item_counts:  # a run with unlabeled rows: the items CE and KD covered
                logs.update(self._item_counts)
            self._item_counts.clear()
            logs.update(self.extra_logs())
        if "loss" in logs and self.nonfinite_guard is not None:
            logs["skipped_updates"] = self.skipped_updates
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """Stock `train()`; a checkpoint a kill left half-written is never resumed from
        (`hfkd.trainers.checkpoints.checked_resume_checkpoint`)."""
        resume = checked_resume_checkpoint(self.args.output_dir, resume_from_checkpoint)
        return super().train(resume, *args, **kwargs)
