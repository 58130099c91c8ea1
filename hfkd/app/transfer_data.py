"""Recipe data for transfer sets: where unlabeled rows come from and how they join the train split.

Sources (sequence classification): train rows with an empty label (`unlabeled_rows_in_train`), an
`unlabeled_file`, or the train split of `unlabeled_dataset_name` (a Hub name or local folder); text
columns as the labelled data's. The rows are tokenized like the labelled ones, marked unlabeled and
mixed in (`hfkd.transfer.unlabeled`); `unlabeled_min_confidence` then filters them on the
teacher cache (`apply_confidence_filter`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hfkd.app.task_data import (
    DataError,
    _load_file,
    _load_hub,
    _require_column,
    _require_text_cells,
    _split_files_in_folder,
)
from hfkd.transfer.unlabeled import check_unlabeled_labels, filter_confident, mark_unlabeled, mix_unlabeled, warn_if_unreadable


def split_off_unlabeled_rows(raw: datasets.DatasetDict, args: Any) -> tuple[datasets.DatasetDict, datasets.Dataset | None]:
    """With `unlabeled_rows_in_train`: the train rows whose label is empty leave the labelled split."""
    if not args.unlabeled_rows_in_train or "train" not in raw or args.label_column not in raw["train"].column_names:
        return raw, None
    train = raw["train"]
    values = train.data.column(args.label_column)
    blank = pc.is_null(values)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        blank = pc.or_kleene(blank, pc.equal(pc.utf8_trim_whitespace(values), ""))
    blank = blank.to_numpy(zero_copy_only=False)
    raw = datasets.DatasetDict(raw)
    # flatten_indices: the checks that follow read the Arrow table itself, not a selection over it.
    raw["train"] = train.select(np.flatnonzero(~blank)).flatten_indices()
    return raw, train.select(np.flatnonzero(blank)).remove_columns(args.label_column).flatten_indices()


def load_unlabeled(args: Any, from_train: datasets.Dataset | None, text_columns: tuple[str, str | None],
                   classes: list[str]) -> datasets.Dataset | None:
    """The raw unlabeled rows of every source, checked: text columns present, labels (if any) of this task."""
    parts = [] if from_train is None else [from_train]
    if args.unlabeled_file:
        parts.append(_load_file(args.unlabeled_file, "unlabeled"))
    if args.unlabeled_dataset_name:
        folder = Path(args.unlabeled_dataset_name).expanduser()
        loaded = (datasets.DatasetDict({s: _load_file(p, s) for s, p in _split_files_in_folder(folder).items()})
                  if folder.is_dir() else _load_hub(args.unlabeled_dataset_name, None))
        if "train" not in loaded:
            raise DataError(f"unlabeled_dataset_name={args.unlabeled_dataset_name!r} has no train split: give one")
        parts.append(loaded["train"])
    if not parts:
        return None
    columns = [c for c in text_columns if c is not None]
    checked = []
    for part in parts:
        for column in columns:
            _require_column(part, "unlabeled", column, "text_column")
            _require_text_cells(part, "unlabeled", column)
        if args.label_column in part.column_names:
            check_unlabeled_labels(part.unique(args.label_column), classes, "the unlabeled data")
        checked.append(part.select_columns(columns))
    return datasets.concatenate_datasets(checked)


def add_transfer_set(train: datasets.Dataset, unlabeled: datasets.Dataset | None,
                     tokenize: Callable[[dict], dict], tokenizer: Any, args: Any) -> datasets.Dataset:
    """`train` (tokenized) plus the unlabeled rows, tokenized the same way and marked unlabeled."""
    if unlabeled is None:
        return train
    tokenized = unlabeled.map(tokenize, batched=True, remove_columns=unlabeled.column_names,
                              num_proc=args.preprocessing_num_workers, desc="Tokenizing the unlabeled rows")
    warn_if_unreadable(tokenized["input_ids"], tokenizer)
    return mix_unlabeled(train, mark_unlabeled(tokenized), ratio=args.unlabeled_ratio,
                         max_samples=args.max_unlabeled_samples, seed=args.subset_seed)


def apply_confidence_filter(train: datasets.Dataset, args: Any, num_classes: int) -> datasets.Dataset:
    """`unlabeled_min_confidence`: drop unlabeled rows the (cached) teacher is unsure of."""
    if args.unlabeled_min_confidence is None:
        return train
    filtered, _ = filter_confident(train, args.unlabeled_min_confidence, num_classes)
    return filtered
