"""Length-bucketed training batches: little padding, and still a random order.

Dynamic padding pads every batch to its longest row, so batches of rows of similar length cost
less. `LengthBucketedSampler` gets there while staying random: each epoch it shuffles all rows,
cuts the shuffle into mega-batches of `megabatch` batches, sorts each mega-batch by length, cuts it
into batches, and shuffles those batches across the whole epoch (the one short batch, if any, stays
last so every other batch keeps its rows). transformers' `LengthGroupedSampler`
(`train_sampling_strategy="group_by_length"`) forms the same kind of batches but keeps them in
descending length order inside each mega-batch (a long-to-short sweep every 50 batches) and draws
its shuffle from the global torch RNG when each epoch starts, after dropout has advanced it: a run
resumed in a later epoch draws another order for that epoch than the one it stopped in. Here the order is a function of (seed, epoch)
only: the same on every DDP rank (accelerate gives rank r every n-th batch) and on resume, where
Trainer calls `set_epoch` before skipping the batches already trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
from torch.utils.data import Sampler


def bucketed_order(lengths: Sequence[int], batch_size: int, megabatch: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of `range(len(lengths))` whose consecutive `batch_size` slices are length-homogeneous batches."""
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch])
    shuffled = rng.permutation(len(lengths))
    span = batch_size * megabatch
    grouped = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")]
                              for chunk in np.split(shuffled, range(span, len(shuffled), span))]) \
        if len(shuffled) else shuffled
    full = len(grouped) // batch_size * batch_size
    batches = grouped[:full].reshape(-1, batch_size)[rng.permutation(full // batch_size)]
    return np.concatenate([batches.reshape(-1), grouped[full:]])


class LengthBucketedSampler(Sampler[int]):
    """Row indices in length-bucketed batches of `batch_size`, reshuffled every epoch (see the module docstring)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, megabatch: int, seed: int) -> None:
        if batch_size < 1 or megabatch < 1:
            raise ValueError(f"batch_size and megabatch must be >= 1, got {batch_size} and {megabatch}.")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.megabatch, self.seed = batch_size, megabatch, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Trainer calls this before every epoch (resumed ones included): the order depends on it."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(bucketed_order(self.lengths, self.batch_size, self.megabatch, self.seed, self.epoch).tolist())


def row_lengths(dataset: Any, length_column: str = "length", input_name: str = "input_ids") -> list[int]:
    """Each row's length: `length_column` if the dataset has one, else the length of its `input_name`."""
    if isinstance(dataset, datasets.Dataset):
        if length_column in dataset.column_names:
            return list(dataset[length_column])
        if input_name in dataset.column_names:
            return pc.list_value_length(dataset.with_format("arrow")[input_name]).to_pylist()  # honours select()
    try:
        return [len(dataset[i][input_name]) for i in range(len(dataset))]
    except (KeyError, TypeError, IndexError):
        raise ValueError(
            f"length_bucketing needs each training row's length: give the dataset an {input_name!r} or "
            f"{length_column!r} column (length_column_name), or unset length_bucketing."
        ) from None
