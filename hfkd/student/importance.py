"""Activation-based importance of heads, neurons, channels and layers (Minitron).

Muralidharan et al. 2024 (arXiv:2407.14679) rank the units of a trained model by the size of their
activations on a small calibration sample: a teacher forward pass, no gradients, a few hundred rows.
Here, over the valid (unpadded) tokens of the sample:

- an attention head: the mean L2 norm of its output (the input of the attention output projection);
- an FFN neuron: the mean |activation| (the input of the down projection);
- a hidden (embedding) channel: the mean |output| of every LayerNorm/RMSNorm of hidden width, summed
  over those norms (the residual stream as each layer reads or writes it);
- a layer (depth): block importance 1 - mean cos(layer input, layer output): a layer that leaves its
  input unchanged scores 0 (Men et al. 2024, ShortGPT; the depth criterion Minitron compares).

Calibration rows are tokenized mappings (a `datasets.Dataset` or a sequence of dicts) with
`input_ids` and optionally `attention_mask` / `token_type_ids`; other columns are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from hfkd.models import DistillationSetupError, find_layer_stack, forward_arg_names
from hfkd.student.anatomy import anatomy_of, attention_shape

__all__ = ["MIN_CALIBRATION_SAMPLES", "Importance", "calibration_rows", "compute_importance"]

# Fewer rows rank units by noise: Minitron uses 1024 samples, and rankings settle in the hundreds.
MIN_CALIBRATION_SAMPLES = 8
_INPUT_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Importance:
    """Scores (float64, higher = keep) of the teacher's units; `heads` per query head."""

    heads: torch.Tensor  # [layers, heads]
    neurons: torch.Tensor  # [layers, intermediate]
    channels: torch.Tensor  # [hidden]
    blocks: torch.Tensor  # [layers]
    samples: int


def calibration_rows(dataset: Any, samples: int | None) -> list[Mapping[str, Any]]:
    """The first `samples` rows (all when None), refused when empty, too small or not tokenized."""
    if dataset is None:
        raise DistillationSetupError(
            "init='prune' needs calibration_dataset: tokenized rows (a datasets.Dataset or a list of dicts with "
            "input_ids) on which the teacher's activations rank what to keep."
        )
    if isinstance(dataset, Mapping) or not hasattr(dataset, "__len__"):
        raise DistillationSetupError(
            f"calibration_dataset is a {type(dataset).__name__}; pass a datasets.Dataset or a list of dicts of "
            f"tokenized rows (input_ids, optional attention_mask / token_type_ids)."
        )
    wanted = len(dataset) if samples is None else samples
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < MIN_CALIBRATION_SAMPLES:
        raise DistillationSetupError(
            f"calibration_samples={wanted!r} (calibration_dataset has {len(dataset)} rows): importance needs at "
            f"least {MIN_CALIBRATION_SAMPLES} rows; pass more rows (a few hundred is the usual choice)."
        )
    if len(dataset) < wanted:
        raise DistillationSetupError(
            f"calibration_dataset has {len(dataset)} rows but calibration_samples={wanted}; pass more rows or "
            f"lower calibration_samples (at least {MIN_CALIBRATION_SAMPLES})."
        )
    rows = [dataset[i] for i in range(wanted)]
    if not all(isinstance(row, Mapping) and len(row.get("input_ids") or ()) > 0 for row in rows):
        raise DistillationSetupError(
            "calibration_dataset rows need a non-empty input_ids column (tokenize the text first, as for training)."
        )
    return rows


def _batches(
    rows: Sequence[Mapping[str, Any]], batch_size: int, accepted: frozenset[str], pad_id: int, device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    """Right-padded batches of the columns the model takes; attention_mask marks the real tokens."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        length = max(len(row["input_ids"]) for row in chunk)
        batch: dict[str, list[list[int]]] = {name: [] for name in _INPUT_COLUMNS}
        for row in chunk:
            n = len(row["input_ids"])
            pad = [0] * (length - n)
            batch["input_ids"].append(list(row["input_ids"]) + [pad_id] * (length - n))
            batch["attention_mask"].append(list(row.get("attention_mask") or [1] * n) + pad)
            batch["token_type_ids"].append(list(row.get("token_type_ids") or [0] * n) + pad)
        yield {name: torch.tensor(values, device=device) for name, values in batch.items() if name in accepted}


class _Recorder:
    """Forward hooks summing each unit's activation statistic over the valid tokens."""

    def __init__(self, model: PreTrainedModel) -> None:
        anatomy = anatomy_of(model)
        _, self.layers = find_layer_stack(model)
        config = model.config.get_text_config()
        self.hidden = config.hidden_size
        self.heads, _, self.head_dim = attention_shape(config)
        depth = len(self.layers)
        self.mask = torch.zeros(0)
        self.tokens = 0.0
        self.totals: dict[str, torch.Tensor] = {
            "heads": torch.zeros(depth, self.heads, dtype=torch.float64),
            "channels": torch.zeros(self.hidden, dtype=torch.float64),
            "blocks": torch.zeros(depth, dtype=torch.float64),
        }
        self.neuron_rows: list[torch.Tensor | None] = [None] * depth
        self.handles: list[Any] = []
        for index, layer in enumerate(self.layers):
            self._pre(layer.get_submodule(anatomy.attention_out), self._head_hook(index))
            self._pre(layer.get_submodule(anatomy.ffn_out), self._neuron_hook(index))
            self.handles.append(layer.register_forward_hook(self._block_hook(index), with_kwargs=True))
        for module in model.modules():
            if _is_norm(module):
                self.handles.append(module.register_forward_hook(self._channel_hook))

    def _pre(self, module: nn.Module, hook: Any) -> None:
        self.handles.append(module.register_forward_pre_hook(lambda _module, args: hook(args[0])))

    def _masked_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of [batch, seq, ...] values over the valid tokens, in float64."""
        return torch.einsum("bs,bs...->...", self.mask, values.double())

    def _head_hook(self, index: int) -> Any:
        def hook(heads_side_by_side: torch.Tensor) -> None:
            per_head = heads_side_by_side.unflatten(-1, (self.heads, self.head_dim)).double().norm(dim=-1)
            self.totals["heads"][index] += self._masked_sum(per_head).cpu()

        return hook

    def _neuron_hook(self, index: int) -> Any:
        def hook(activations: torch.Tensor) -> None:
            total = self._masked_sum(activations.abs()).cpu()
            previous = self.neuron_rows[index]
            self.neuron_rows[index] = total if previous is None else previous + total

        return hook

    def _channel_hook(self, _module: nn.Module, _args: Any, output: torch.Tensor) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 3 and output.shape[-1] == self.hidden:
            self.totals["channels"] += self._masked_sum(output.abs()).cpu()

    def _block_hook(self, index: int) -> Any:
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            before = args[0] if args else kwargs["hidden_states"]
            after = output[0] if isinstance(output, tuple) else output
            cos = nn.functional.cosine_similarity(before.double(), after.double(), dim=-1)
            self.totals["blocks"][index] += self._masked_sum(1.0 - cos).cpu()

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def result(self, samples: int) -> Importance:
        tokens = max(self.tokens, 1.0)
        neurons = torch.stack([row for row in self.neuron_rows if row is not None])
        return Importance(
            heads=self.totals["heads"] / tokens,
            neurons=neurons / tokens,
            channels=self.totals["channels"] / tokens,
            blocks=self.totals["blocks"] / tokens,
            samples=samples,
        )


def _is_norm(module: nn.Module) -> bool:
    """LayerNorm / RMSNorm modules (transformers' own RMSNorm classes are not torch's)."""
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def compute_importance(
    model: PreTrainedModel, rows: Sequence[Mapping[str, Any]], batch_size: int = 16
) -> Importance:
    """Importance of the model's units from its activations on `rows` (eval mode, no gradients)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DistillationSetupError(f"calibration_batch_size={batch_size!r} is invalid; pass a positive integer.")
    recorder = _Recorder(model)
    pad_id = getattr(model.config.get_text_config(), "pad_token_id", None) or 0
    accepted = forward_arg_names(model) | {"input_ids"}
    try:
        with _eval_mode(model), torch.no_grad():
            for batch in _batches(rows, batch_size, accepted, pad_id, model.device):
                mask = batch.get("attention_mask")
                mask = torch.ones_like(batch["input_ids"]) if mask is None else mask
                recorder.mask = mask.to(torch.float64)
                recorder.tokens += float(mask.sum())
                model(**batch)
    finally:
        recorder.remove()
    return recorder.result(len(rows))
