"""Transfer sets: unlabeled rows that only the teacher labels (Hinton et al. 2015; Tang et al. 2019).

An unlabeled row is marked by its labels, which survives Trainer's column removal and every
collator: label -100 for sequence classification, -100 at every position for token
classification (the value CE, Trainer's `num_items_in_batch` and HF's own losses already ignore).
Causal LMs have no unlabeled rows: their labels are their inputs.

In training the terms that need labels (CE) cover the labelled items only, the others (KD,
hidden, attention, relation) every row, each normalised by its own item count
(`hfkd.objective.items`).

Data side: `mark_unlabeled` gives a tokenized text-only dataset its -100 labels, `mix_unlabeled`
adds it to the labelled set (all of it, `max_unlabeled_samples` of it, or `unlabeled_ratio`
unlabeled rows per labelled row: rows are shuffled together, so each batch holds that ratio in
expectation and the epoch exactly), `filter_confident` drops unlabeled rows whose cached teacher
is unsure, and `unknown_token_share` spots a transfer set the tokenizer cannot read.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from hfkd.models import HfkdError
from hfkd.objective.items import UNLABELED

logger = logging.getLogger(__name__)

UNKNOWN_SHARE_WARNING = 0.5  # above this share of unknown tokens the transfer set is probably unreadable


class TransferSetError(HfkdError, ValueError):
    """A transfer set (unlabeled rows) that cannot be used as given: the message names the fix."""


# ---------------------------------------------------------------------------- checks before training


def check_labelled_rows(dataset: Any, alpha_ce_used: bool) -> None:
    """Refuse CE over a train set whose rows are all unlabeled: the term would have nothing to learn from."""
    if not alpha_ce_used or getattr(dataset, "data", None) is None or "labels" not in dataset.column_names:
        return
    # Only the labels, in the dataset's own row selection (a select() leaves the Arrow table whole).
    labels = dataset.select_columns(["labels"]).flatten_indices(keep_in_memory=True).data.column("labels")
    if hasattr(labels.type, "value_type"):
        labels = pc.list_flatten(labels)
    if not pa.types.is_integer(labels.type) or len(labels) == 0:
        return
    if pc.all(pc.equal(labels, UNLABELED)).as_py():
        raise TransferSetError(
            "the train set has no labelled row (every label is -100, unlabeled) but alpha_ce > 0: add labelled "
            "rows, or set alpha_ce=0 to distil on the teacher's outputs alone"
        )


def check_ratio(ratio: float | None) -> None:
    if ratio is None:
        return
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 0:
        raise TransferSetError(
            f"unlabeled_ratio={ratio!r} must be a finite number > 0 (unlabeled rows per labelled row, e.g. 2.0); "
            "unset it to add every unlabeled row"
        )


def check_min_confidence(threshold: float | None) -> None:
    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise TransferSetError(
            f"unlabeled_min_confidence={threshold} must be in [0, 1): a teacher max-probability, e.g. 0.9"
        )


def check_unlabeled_labels(values: Sequence[Any], classes: Sequence[Any], where: str) -> None:
    """An unlabeled file's label column, if filled, must use the labelled set's classes (else: wrong file)."""
    filled = {value for value in values if value is not None and str(value).strip() not in ("", "-1", "-100")}
    unknown = sorted({str(v) for v in filled} - {str(c) for c in classes})
    if unknown:
        raise TransferSetError(
            f"{where} has labels {unknown[:5]} that are not among the labelled set's classes {list(classes)}: "
            "point unlabeled_file at text of this task, or drop its label column"
        )
    if filled:
        logger.warning("%s has a label column: its values are ignored, its rows are used unlabeled", where)


def unknown_token_share(input_ids: Sequence[Sequence[int]], tokenizer: Any) -> float:
    """Share of the non-special tokens that are the tokenizer's unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return 0.0
    special = set(getattr(tokenizer, "all_special_ids", []) or []) - {unk}
    tokens = [t for row in input_ids for t in row if t not in special]
    return sum(t == unk for t in tokens) / max(len(tokens), 1)


def warn_if_unreadable(input_ids: Sequence[Sequence[int]], tokenizer: Any, sample: int = 2000) -> float:
    """Warn when most of the transfer set's tokens are unknown: another language, or another tokenizer's text."""
    share = unknown_token_share(input_ids[:sample], tokenizer)
    if share > UNKNOWN_SHARE_WARNING:
        logger.warning(
            "%.0f%% of the transfer set's tokens are unknown to the tokenizer: is it in another language, or "
            "meant for another tokenizer? The teacher's outputs on it carry little of the task.", 100 * share)
    return share


# ---------------------------------------------------------------------------- mixing


def mark_unlabeled(dataset: datasets.Dataset, per_position: bool = False) -> datasets.Dataset:
    """A tokenized text-only dataset with the unlabeled marker as its labels (per position for token tasks)."""
    if "labels" in dataset.column_names:
        dataset = dataset.remove_columns("labels")
    if per_position:
        return dataset.map(lambda batch: {"labels": [[UNLABELED] * len(ids) for ids in batch["input_ids"]]},
                           batched=True, desc="Marking unlabeled rows")
    return dataset.add_column("labels", [UNLABELED] * len(dataset))


def mix_unlabeled(labelled: datasets.Dataset, unlabeled: datasets.Dataset, *, ratio: float | None = None,
                  max_samples: int | None = None, seed: int = 42) -> datasets.Dataset:
    """The labelled rows followed by (a seeded sample of) the marked unlabeled rows; Trainer shuffles them together.

    Unlabeled rows with the same tokens as a labelled row are dropped first: a pile that contains the
    labelled sentences (the whole train split given as `unlabeled_file`) would otherwise train them twice.
    `max_samples` caps the unlabeled rows; `ratio` takes `round(ratio × labelled rows)` of them.
    """
    check_ratio(ratio)
    unlabeled = drop_labelled_duplicates(labelled, unlabeled)
    wanted = len(unlabeled) if max_samples is None else min(max_samples, len(unlabeled))
    if ratio is not None:
        needed = round(ratio * len(labelled))
        if needed > wanted:
            raise TransferSetError(
                f"unlabeled_ratio={ratio} needs {needed} unlabeled rows for {len(labelled)} labelled ones, the "
                f"transfer set gives {wanted}: lower unlabeled_ratio or add unlabeled rows"
            )
        wanted = needed
    if wanted < len(unlabeled):
        unlabeled = unlabeled.shuffle(seed=seed).select(range(wanted))
    columns = [c for c in labelled.column_names if c in unlabeled.column_names]
    missing = sorted(set(labelled.column_names) - set(columns))
    if missing:
        raise TransferSetError(f"the unlabeled rows lack the labelled rows' columns {missing}: tokenize both alike")
    unlabeled = unlabeled.select_columns(columns).cast(labelled.features)
    logger.info("Transfer set: %d labelled + %d unlabeled rows", len(labelled), len(unlabeled))
    return datasets.concatenate_datasets([labelled, unlabeled])


def drop_labelled_duplicates(labelled: datasets.Dataset, unlabeled: datasets.Dataset) -> datasets.Dataset:
    """`unlabeled` without the rows whose `input_ids` equal a labelled row's (the same text, tokenized alike)."""
    seen = {tuple(ids) for ids in labelled["input_ids"]}
    keep = [i for i, ids in enumerate(unlabeled["input_ids"]) if tuple(ids) not in seen]
    if len(keep) == len(unlabeled):
        return unlabeled
    logger.info("Transfer set: dropped %d unlabeled rows that are labelled rows too", len(unlabeled) - len(keep))
    return unlabeled.select(keep)


# ---------------------------------------------------------------------------- teacher-confidence filter


@dataclass(frozen=True)
class ConfidenceFilter:
    """How many unlabeled rows the confidence threshold kept."""

    threshold: float
    kept: int
    dropped: int


def teacher_confidence(logits: np.ndarray, num_classes: int) -> np.ndarray:
    """Max class probability per row of cached teacher logits (several teachers side by side: their mean)."""
    probs = torch.as_tensor(logits, dtype=torch.float64).reshape(len(logits), -1, num_classes).softmax(-1)
    return probs.mean(1).max(-1).values.numpy()


def filter_confident(dataset: datasets.Dataset, threshold: float, num_classes: int) -> tuple[datasets.Dataset, ConfidenceFilter]:
    """Drop the unlabeled rows whose cached teacher max-probability is below `threshold`; labelled rows stay."""
    check_min_confidence(threshold)
    if "teacher_logits" not in dataset.column_names:
        raise TransferSetError(
            "unlabeled_min_confidence needs the teacher's cached full logits (teacher_cache_dir, hfkd cache-teacher, "
            "without teacher_cache_top_k): build the cache first, or unset unlabeled_min_confidence"
        )
    labels = np.asarray(dataset["labels"])
    if labels.ndim != 1:
        raise TransferSetError("unlabeled_min_confidence is for sequence classification: unset it for token tasks")
    confidence = teacher_confidence(np.asarray(dataset["teacher_logits"]), num_classes)
    unlabeled = labels == UNLABELED
    keep = ~unlabeled | (confidence >= threshold)
    report = ConfidenceFilter(threshold, int((unlabeled & keep).sum()), int((unlabeled & ~keep).sum()))
    logger.info("Teacher-confidence filter (>= %.2f): %d unlabeled rows kept, %d dropped",
                threshold, report.kept, report.dropped)
    return dataset.select(np.flatnonzero(keep)), report
