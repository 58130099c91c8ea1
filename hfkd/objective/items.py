"""Item counts when some rows are unlabeled (`hfkd.transfer.unlabeled` makes such rows).

An unlabeled row carries label -100 (sequence tasks) or -100 at every position (token tasks), the
value CE, Trainer's `num_items_in_batch` and HF's own losses already ignore. Terms that need labels
(CE) are normalised by the labelled items of the accumulated batch, Trainer's `num_items_in_batch`;
every other `per_item` term (KD) by all of its items: `num_items_in_batch` plus
`window_unlabeled_items` (the unlabeled rows, or for token tasks their attended positions). A
token-task row with no labelled position has its attended positions as KD items
(`with_unlabeled_rows`). Causal LMs have no unlabeled rows: their labels are their inputs.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

Tensor = torch.Tensor

UNLABELED = -100  # the label of an unlabeled row (every position of it, for token tasks)


def with_unlabeled_rows(mask: Tensor, attention_mask: Tensor | None) -> Tensor:
    """A token task's item mask (labels != -100) plus the attended positions of rows with no label at all."""
    unlabeled = ~mask.any(dim=-1, keepdim=True)
    if attention_mask is None or not bool(unlabeled.any()):
        return mask
    return mask | (unlabeled & attention_mask.bool())


def unlabeled_items(batch: dict[str, Any], causal: bool) -> Tensor | int:
    """Items KD covers in `batch` beyond the labelled ones Trainer counts (0 for causal LMs)."""
    labels = batch.get("labels")
    if causal or not torch.is_tensor(labels) or labels.is_floating_point():
        return 0
    if labels.dim() == 1:
        return labels.eq(UNLABELED).sum()
    attention = batch.get("attention_mask")
    positions = attention.bool() if attention is not None else torch.ones_like(labels, dtype=torch.bool)
    rows = labels.eq(UNLABELED).all(dim=-1, keepdim=True)
    return (positions & rows).sum()


def window_unlabeled_items(batches: Sequence[dict[str, Any]], causal: bool) -> Tensor | int:
    """`unlabeled_items` summed over the micro-batches of one accumulation window."""
    return sum((unlabeled_items(batch, causal) for batch in batches), 0)


def local_counts(labels: Tensor | None, mask: Tensor | None, rows: int) -> tuple[int, int]:
    """(labelled items, all items) of one micro-batch, at least 1 each; one host sync."""
    if mask is not None:
        counts = torch.stack([(mask & labels.ne(UNLABELED)).sum() if labels is not None else mask.sum(), mask.sum()])
        labelled, every = counts.tolist()
    elif labels is not None and not labels.is_floating_point():
        labelled, every = int(labels.ne(UNLABELED).sum()), rows
    else:
        labelled = every = rows
    return max(labelled, 1), max(every, 1)


