"""Crops of the labelled texts as a transfer set: new in-domain inputs that need no model to make.

With every training label given, soft labels on the training texts themselves carry little the
labels do not: the teacher was fitted to exactly those texts. A crop (a contiguous run of a
text's words, at least half of them and at least `min_words`, shorter than the text) is a new input
from the same domain on which the teacher's output is not a memorised label; it is the text
analogue of the random crops that function matching trains on (Beyer et al. 2022, *Knowledge
distillation: a good teacher is patient and consistent*). A crop can change the label (the "not"
of "not good" cut off), so crops are unlabeled rows: only the teacher labels them.

Crops are drawn from the first text column of a pair (its second text kept whole), as TinyBERT
augments only the first. Words are whitespace-separated runs, so a crop keeps the text's own
tokenization (GLUE's sentences are already split into words and punctuation). Draws are seeded:
the same rows, count and seed give the same crops. A crop equal to a training text, or to an
earlier crop, is drawn again (the transfer set would otherwise repeat labelled rows).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence

import datasets

from hfkd.transfer.unlabeled import TransferSetError

logger = logging.getLogger(__name__)

MIN_WORDS = 3
"""A crop keeps at least this many words: shorter ones are mostly single words already in the data."""
ATTEMPTS_PER_CROP = 20
"""Draws allowed per crop asked for before giving up on a text set too small to yield that many."""


def crop_texts(texts: Sequence[str], count: int, seed: int, min_words: int = MIN_WORDS) -> list[tuple[int, str]]:
    """`count` distinct crops of `texts` as (index of the source text, crop), each source drawn at random
    among the texts with more than `min_words` words; fewer when the texts cannot give `count` new ones."""
    words = [text.split() for text in texts]
    eligible = [index for index, split in enumerate(words) if len(split) > min_words]
    seen = {" ".join(split) for split in words}
    rng = random.Random(seed)
    crops: list[tuple[int, str]] = []
    attempts = 0
    while eligible and len(crops) < count and attempts < count * ATTEMPTS_PER_CROP:
        attempts += 1
        index = rng.choice(eligible)
        length = len(words[index])
        span = rng.randint(max(min_words, math.ceil(length / 2)), length - 1)
        start = rng.randint(0, length - span)
        crop = " ".join(words[index][start:start + span])
        if crop not in seen:
            seen.add(crop)
            crops.append((index, crop))
    if len(crops) < count:
        logger.warning("Crops: %d of the %d asked for (the texts have too few distinct crops of %d+ words).",
                       len(crops), count, min_words)
    return crops


def crop_dataset(train: datasets.Dataset, text_column: str, pair_column: str | None, per_row: float,
                 seed: int) -> datasets.Dataset:
    """round(`per_row` × rows) crops of `train`'s `text_column`, with their source's `pair_column` text:
    a dataset of the text columns alone, ready to be marked unlabeled."""
    texts = train[text_column]
    crops = crop_texts(texts, round(per_row * len(train)), seed)
    if not crops:
        raise TransferSetError(
            f"unlabeled_crops={per_row:g} gave no crop: no training text has more than {MIN_WORDS} words (or "
            "every crop is a training text already): unset unlabeled_crops, or give longer texts"
        )
    columns = {text_column: [crop for _, crop in crops]}
    if pair_column is not None:
        pairs = train[pair_column]
        columns[pair_column] = [pairs[index] for index, _ in crops]
    logger.info("Crops of the labelled texts: %d unlabeled rows from %d labelled rows.", len(crops), len(train))
    return datasets.Dataset.from_dict(columns, features=train.select_columns(list(columns)).features)
