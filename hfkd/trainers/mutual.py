"""Online distillation: deep mutual learning (Zhang et al. 2018, "Deep Mutual Learning").

Two or more peers train together, with no pre-trained teacher: each peer's loss is its task loss
plus the distance from its predictions to every other peer's *current* predictions,

    L_i = alpha_ce·CE(p_i, y) + alpha_kd·w_i·mean_{j≠i} KD(p_i ‖ p_j.detach())

with `KD` any loss of `hfkd.objective.losses.KD_LOSSES` (`kd_loss`, `temperature`; DML's own choice is
`kl` at T = 1). `MutualDistillationTrainer` is a `transformers.Trainer` over `PeerEnsemble`, one
module holding every peer, so one optimizer, one schedule, Accelerate/DDP and checkpointing treat
all peers as one model. `w_i` (`peer_kd_weights`, default 1) lets a peer ignore the others:
`[1, 0]` over (student, teacher) is "a teacher trained alongside the student" that learns from the
labels only, while the student distills from its live outputs.

Saving: `output_dir` holds the first peer (the student: a plain `AutoModelFor*` checkpoint, which
recipes, reports and `from_pretrained` read as usual) and `output_dir/peer{i}` each other peer.
Evaluation measures every peer (`eval_peer{i}_*`) and repeats the first peer's metrics under the
plain `eval_*` keys.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ModelOutput
from transformers.utils import can_return_loss, find_labels
from transformers.trainer import TRAINING_ARGS_NAME

from hfkd.config import option
from hfkd.config import DistillationConfig
from hfkd.io import staged
from hfkd.models import forward_arg_names, is_causal_lm, only
from hfkd.objective.losses import KD_LOSSES, task_ce_loss
from hfkd.objective.objective import Normalisers, aligned
from hfkd.objective.terms import TERMS, Term
from hfkd.trainers.base import DistillationTrainerBase, Terms

MUTUAL_TERMS = ("ce", "kd")

PEER_DIR = "peer{}"


def peer_dir(output_dir: str, index: int) -> str:
    """Where peer `index` is saved: the first peer in `output_dir` itself, the others in `peer{i}`."""
    return output_dir if index == 0 else os.path.join(output_dir, PEER_DIR.format(index))


@dataclass
class MutualDistillationConfig(DistillationConfig):
    """`DistillationConfig` for mutual learning: `alpha_ce`, `alpha_kd`, `kd_loss`, `temperature`,
    `kd_scale_by_t2` and `jsd_beta` apply to every peer, `nonfinite_loss` to the run. The fields in
    `unsupported_fields` (representation terms, teacher-side options, schedules, stages, presets)
    have no meaning between peers trained together and are refused unless left at their default."""

    unsupported_fields: ClassVar[tuple[str, ...]] = (
        "alpha_hidden", "alpha_attention", "alpha_relation", "term_weights", "hidden_loss", "attention_loss",
        "relations", "relation_heads", "relation_teacher_layer", "relation_student_layer", "layer_mapping",
        "hidden_layer_mapping", "attention_layer_mapping", "include_embeddings", "projection_init",
        "projection_learning_rate", "teacher_dtype", "teacher_quantization", "teacher_compile",
        "teacher_min_agreement", "teacher_cache_dir", "teacher_cache_top_k", "teacher_weights",
        "teacher_combination", "temperature_schedule", "temperature_end", "loss_weight_schedule",
        "loss_weights_end", "merge_adapter_on_save", "stages", "preset", "report_alpha",
        "lmbda", "seq_kd", "reference_ce",
    )

    peer_model_name_or_path: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Mutual-learning recipe: checkpoints of the peers trained together with the student "
            "(the student is peer 0, these are peers 1, 2, ...). Each is saved to output_dir/peer{i}."
        },
    )
    train_teacher_alongside: bool = option(
        False,
        "Mutual-learning recipe: add teacher_model_name_or_path as the last peer, trained together "
        "with the student (online distillation, no frozen teacher).",
    )
    peer_kd_weights: list[float] | None = option(
        None,
        "Per-peer multipliers of alpha_kd, in peer order (default: 1 for every peer). "
        "0 for a peer makes it learn from the labels only, e.g. [1, 0] with train_teacher_alongside.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.report_at_end:
            raise ValueError(
                "report_at_end needs a frozen teacher: run `hfkd report` on output_dir after mutual learning."
            )
        if self.peer_kd_weights is not None and any(
            not isinstance(w, (int, float)) or w < 0 for w in self.peer_kd_weights
        ):
            raise ValueError(f"peer_kd_weights must be numbers >= 0, got {self.peer_kd_weights}.")
        if self.load_best_model_at_end:
            raise ValueError(
                "load_best_model_at_end is not supported with mutual learning (peers are saved in "
                "separate folders): keep the last model, or pick a checkpoint by its eval_peer*_ metrics."
            )


@dataclass
class PeerEnsembleOutput(ModelOutput):
    """Training forward: the logits of every peer, in peer order."""

    peer_logits: tuple[torch.Tensor, ...] | None = None


class PeerEnsemble(nn.Module):
    """The peers as one module: Trainer, its optimizer and DDP see a single model.

    In training mode `forward` runs every peer (each gets the inputs its own forward accepts) and
    returns their logits; in eval mode it runs `active_peer` alone and returns that peer's output,
    so evaluation and prediction measure one peer at a time.
    """

    accepts_loss_kwargs = False  # Trainer then divides the loss by the accumulation steps itself

    def __init__(self, peers: Sequence[PreTrainedModel]) -> None:
        super().__init__()
        if len(peers) < 2:
            raise ValueError(f"mutual learning needs at least 2 peers, got {len(peers)}.")
        self.peers = nn.ModuleList(peers)
        self.active_peer = 0
        self._inputs = [forward_arg_names(peer) for peer in peers]

    def forward(self, **inputs: Any) -> Any:
        if self.training:
            return PeerEnsembleOutput(
                peer_logits=tuple(peer(**only(inputs, names)).logits for peer, names in zip(self.peers, self._inputs))
            )
        return self.peers[self.active_peer](**only(inputs, self._inputs[self.active_peer]))


class MutualDistillationTrainer(DistillationTrainerBase):
    """Trainer for deep mutual learning between `peers` (the first one is "the student").

    Stands on `DistillationTrainerBase`, so evaluation, exact normalisation under gradient
    accumulation and DDP, `nonfinite_loss` (raise/skip) and safe resume are those of
    `DistillationTrainer`; causal LMs compare shifted positions like there.

    Args:
        peers: two or more models with the same task head and label set (sizes may differ).
        args: a `MutualDistillationConfig` (or `DistillationConfig`: every peer gets kd weight 1).

    Every other argument is `transformers.Trainer`'s; `model` is not accepted (give `peers`).
    """

    def __init__(
        self, peers: Sequence[PreTrainedModel], args: DistillationConfig, *trainer_args: Any, **trainer_kwargs: Any
    ) -> None:
        if not isinstance(args, DistillationConfig):
            raise TypeError(f"args must be an hfkd.MutualDistillationConfig, got {type(args).__name__}.")
        unsupported = [t.weight_key for t in args.used_terms() if t.name not in MUTUAL_TERMS]
        if unsupported:
            raise ValueError(
                f"mutual learning compares the peers' logits only: set {', '.join(unsupported)} to 0."
            )
        if "model" in trainer_kwargs:
            raise TypeError("MutualDistillationTrainer takes `peers=[...]`, not `model=`.")
        ensemble = peers if isinstance(peers, PeerEnsemble) else PeerEnsemble(list(peers))
        _check_peers(ensemble.peers)
        weights = getattr(args, "peer_kd_weights", None) or [1.0] * len(ensemble.peers)
        if len(weights) != len(ensemble.peers):
            raise ValueError(
                f"peer_kd_weights has {len(weights)} entries for {len(ensemble.peers)} peers: give one per peer."
            )
        self.peer_kd_weights = [float(w) for w in weights]
        self._causal = is_causal_lm(ensemble.peers[0])
        super().__init__(ensemble, args, *trainer_args, **trainer_kwargs)
        # Trainer reads label names and loss support off the model class: take them from the first peer.
        first = type(ensemble.peers[0])
        self.label_names = find_labels(first) if args.label_names is None else args.label_names
        self.can_return_loss = can_return_loss(first)

    @property
    def peers(self) -> nn.ModuleList:
        return self.accelerator.unwrap_model(self.model).peers

    def signature_columns(self, columns: list[str]) -> list[str]:
        # The ensemble's forward takes **inputs: keep the columns any peer's forward accepts.
        accepted = set().union(*self.accelerator.unwrap_model(self.model)._inputs)
        return sorted(accepted | {"label", "label_ids", *self.label_names})

    # ------------------------------------------------------------------ loss

    def training_terms(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any) -> tuple[Terms, Any]:
        args = self.args
        ce, kd = TERMS["ce"], TERMS["kd"]
        labels = inputs.get("labels")
        if args.alpha_ce > 0 and labels is None:
            raise ValueError(
                f"alpha_ce={args.alpha_ce} but the batch has no 'labels'; add a label column or set alpha_ce=0."
            )
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        peer_logits = []
        for logits in outputs.peer_logits:
            logits, labels_t, mask = aligned(logits, labels, inputs.get("attention_mask"), self._causal)
            peer_logits.append(logits)
        local_items = max(int(mask.sum()) if mask is not None else peer_logits[0].shape[0], 1)
        normalisers = self.normalisers(local_items, num_items_in_batch)
        terms: Terms = {}
        for i, (logits, kd_weight) in enumerate(zip(peer_logits, self.peer_kd_weights)):
            if args.alpha_ce > 0:
                ce_sum = task_ce_loss(logits if mask is None else logits[mask],
                                      labels_t if mask is None else labels_t[mask], reduction="sum")
                terms[f"peer{i}_ce_loss"] = _weighted(args.alpha_ce, ce, ce_sum, normalisers)
            if args.alpha_kd > 0 and kd_weight > 0:
                kd_sum = mutual_kd_loss(logits, peer_logits, i, args, mask)
                terms[f"peer{i}_kd_loss"] = _weighted(args.alpha_kd * kd_weight, kd, kd_sum, normalisers)
        return terms, outputs

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Evaluate each peer alone (`eval_peer{i}_*`); the first peer's metrics also under `eval_*`."""
        ensemble = self.accelerator.unwrap_model(self.model)
        metrics: dict[str, float] = {}
        try:
            for i in range(len(ensemble.peers)):
                ensemble.active_peer = i
                metrics.update(super().evaluate(eval_dataset, ignore_keys, f"{metric_key_prefix}_peer{i}"))
        finally:
            ensemble.active_peer = 0
        first = f"{metric_key_prefix}_peer0_"
        metrics.update({f"{metric_key_prefix}_{k[len(first):]}": v for k, v in list(metrics.items()) if k.startswith(first)})
        return metrics

    # ------------------------------------------------------------------ saving and resuming

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """A final save writes all peers' folders as one set (`hfkd.io.staged`: a kill leaves the previous
        set or this one); checkpoints are judged complete or not by `trainers.checkpoints`."""
        if _internal_call:
            super().save_model(output_dir, _internal_call)
            return
        with staged(output_dir or self.args.output_dir, enabled=self.args.should_save) as folder:
            super().save_model(folder, _internal_call)

    def save_weights(self, output_dir: str | None, state_dict: dict | None) -> None:
        """Each peer as its own `save_pretrained` folder (see `peer_dir`), with the tokenizer."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        for i, peer in enumerate(self.peers):
            folder = peer_dir(output_dir, i)
            prefix = f"peers.{i}."
            own = None if state_dict is None else {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            peer.save_pretrained(folder, state_dict=own)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(folder)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def load_checkpoint_weights(self, folder: str, model: nn.Module | None) -> None:
        """Load every peer from its folder of a checkpoint written by `save_weights`."""
        ensemble = self.accelerator.unwrap_model(model or self.model)
        for i, peer in enumerate(ensemble.peers):
            path = os.path.join(peer_dir(folder, i), "model.safetensors")
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"checkpoint {folder} has no weights for peer {i} ({path}): it was not "
                    f"written by a MutualDistillationTrainer with {len(ensemble.peers)} peers."
                )
            missing, unexpected = peer.load_state_dict(load_file(path), strict=False)
            tied = set(_tied_parameter_names(peer))
            if unexpected or set(missing) - tied:
                raise ValueError(
                    f"peer {i} does not match {path}: missing {sorted(set(missing) - tied)[:3]}, unexpected "
                    f"{sorted(unexpected)[:3]}; resume with the same peers."
                )


def _weighted(weight: float, term: Term, value: torch.Tensor, normalisers: Normalisers) -> tuple[torch.Tensor, torch.Tensor]:
    """A peer's term: its weighted contribution to the loss, and the weighted value logged."""
    return weight * normalisers.normalise(term, value), weight * normalisers.shown(term, value)


def mutual_kd_loss(
    logits: torch.Tensor,
    peer_logits: Sequence[torch.Tensor],
    index: int,
    args: DistillationConfig,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over the other peers j of KD(peer `index` ‖ peer j) summed over items, each target detached."""
    loss_fn = KD_LOSSES[args.kd_loss]
    values = [
        loss_fn(
            logits,
            other.detach(),
            temperature=args.temperature,
            mask=mask,
            scale_by_t2=args.kd_scale_by_t2,
            reduction="sum",
            beta=args.jsd_beta,
        )
        for j, other in enumerate(peer_logits)
        if j != index
    ]
    return torch.stack(values).mean()


def _check_peers(peers: Sequence[nn.Module]) -> None:
    if len({is_causal_lm(peer) for peer in peers}) > 1:
        raise ValueError("the peers mix causal LMs and other heads: give every peer the same task head.")
    classes = {getattr(peer.config, "num_labels", None) for peer in peers if hasattr(peer, "config")}
    if len(classes) > 1:
        raise ValueError(f"peers disagree on num_labels ({sorted(classes)}): give every peer the same label set.")


def _tied_parameter_names(model: nn.Module) -> list[str]:
    """Names of tensors that share storage with another name (save_pretrained writes only one of them)."""
    names_by_storage: dict[int, list[str]] = defaultdict(list)
    for name, tensor in model.state_dict(keep_vars=True).items():
        names_by_storage[tensor.data_ptr()].append(name)
    return [name for names in names_by_storage.values() if len(names) > 1 for name in names]
