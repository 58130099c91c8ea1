"""Length-bucketed sampling (hfkd.trainers.sampling): a random, reproducible order of length-homogeneous batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from datasets import Dataset
from torch.utils.data import BatchSampler

from conftest import VOCAB, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.trainers.sampling import LengthBucketedSampler, bucketed_order, row_lengths

LENGTHS = np.random.default_rng(0).integers(1, 65, size=1000)


def _batches(order, batch_size):
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def test_every_epoch_is_a_permutation_of_all_rows_with_the_short_batch_last():
    sampler = LengthBucketedSampler(LENGTHS, batch_size=16, megabatch=8, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(LENGTHS)))
        assert len(order) == len(sampler) == 1000  # 62 full batches of 16, then the 8 left over
        assert len(_batches(order, 16)[-1]) == 8


def test_batches_are_contiguous_runs_of_the_length_sorted_rows_when_one_megabatch_holds_them_all():
    order = bucketed_order(LENGTHS, batch_size=16, megabatch=1000, seed=3, epoch=0)
    runs = [sorted(LENGTHS)[i:i + 16] for i in range(0, 992, 16)]
    for batch in _batches(order, 16)[:-1]:
        assert sorted(LENGTHS[batch]) in runs
    # ... and the batches do not come in length order (they are shuffled across the epoch).
    longest = [LENGTHS[batch].max() for batch in _batches(order, 16)[:-1]]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_bucketed_batches_pad_less_than_random_ones():
    def padded(order):
        return sum(LENGTHS[b].max() * len(b) for b in _batches(order, 16))

    bucketed = padded(bucketed_order(LENGTHS, batch_size=16, megabatch=8, seed=0, epoch=0))
    shuffled = padded(np.random.default_rng(0).permutation(len(LENGTHS)))
    assert bucketed < 0.7 * shuffled  # random batches of 16 pad to ~62 of 64; bucketed ones near each row's own


def test_order_depends_on_seed_and_epoch_and_on_nothing_else():
    def order(seed, epoch):
        sampler = LengthBucketedSampler(LENGTHS, batch_size=16, megabatch=8, seed=seed)
        torch.manual_seed(seed + 100)  # the global RNG plays no part
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(2, 0)
    assert order(1, 0) != order(1, 1)


def test_two_ddp_ranks_split_the_same_batches_between_them():
    """accelerate gives rank r every n-th batch: together the ranks see each row once, in whole batches."""
    sampler = LengthBucketedSampler(LENGTHS[:960], batch_size=16, megabatch=8, seed=5)
    sampler.set_epoch(2)
    single = _batches(list(sampler), 16)
    ranks = [list(BatchSamplerShard(BatchSampler(sampler, 16, drop_last=False), num_processes=2, process_index=r))
             for r in range(2)]
    assert [b for pair in zip(*ranks) for b in pair] == single
    assert sorted(i for rank in ranks for batch in rank for i in batch) == list(range(960))


def test_row_lengths_follow_select_and_the_length_column():
    data = Dataset.from_dict({"input_ids": [[1] * n for n in range(1, 11)]})
    assert row_lengths(data.select([9, 0, 3])) == [10, 1, 4]
    assert row_lengths(data.add_column("length", [7] * 10)) == [7] * 10
    with pytest.raises(ValueError, match="length_bucketing"):
        row_lengths(Dataset.from_dict({"text": ["a", "b"]}))


def test_length_bucketing_is_refused_with_another_sampling_strategy(tmp_path):
    with pytest.raises(ValueError, match="length_bucketing"):
        DistillationConfig(output_dir=str(tmp_path), length_bucketing=True, train_sampling_strategy="group_by_length")
    with pytest.raises(ValueError, match="bucket_megabatch"):
        DistillationConfig(output_dir=str(tmp_path), bucket_megabatch=0)


# ---------------------------------------------------------------- through the Trainer


def _pad(rows):
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row["input_ids"])] = torch.tensor(row["input_ids"])
        mask[i, :len(row["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["labels"] for r in rows])}


class BatchRecorder(DistillationTrainer):
    def __init__(self, *args, **kwargs):
        self.seen: list[tuple[tuple[int, int], ...]] = []  # each training batch's (row name, length), in order
        super().__init__(*args, **kwargs)

    def training_terms(self, model, inputs, num_items_in_batch):
        self.seen.append(tuple(zip(inputs["input_ids"][:, 0].tolist(), inputs["attention_mask"].sum(1).tolist())))
        return super().training_terms(model, inputs, num_items_in_batch)


def _run(tmp_path, max_steps, resume=None, seed=0):
    teacher, student = seq_cls_pair()
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 20, size=64)
    # Row i has length lengths[i] and a first token that names it, so a batch's rows can be told apart.
    data = Dataset.from_dict({"input_ids": [[1 + i % (VOCAB - 1)] + [5] * (n - 1) for i, n in enumerate(lengths)],
                              "labels": [i % 3 for i in range(64)]})
    args = DistillationConfig(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, max_steps=max_steps,
                              per_device_train_batch_size=8, save_strategy="steps", save_steps=4, disable_tqdm=True,
                              length_bucketing=True, bucket_megabatch=8, seed=seed)
    trainer = BatchRecorder(model=student, teacher_model=teacher, args=args, train_dataset=data, data_collator=_pad)
    trainer.train(resume_from_checkpoint=resume)
    return trainer.seen, sorted(lengths)


def test_trainer_batches_are_bucketed_and_a_resumed_run_replays_the_same_ones(tmp_path):
    seen, ordered = _run(tmp_path, max_steps=12)  # 8 batches an epoch: the checkpoint at 4 is mid-epoch
    runs = [tuple(ordered[i:i + 8]) for i in range(0, 64, 8)]  # one megabatch holds every row
    assert all(tuple(sorted(length for _, length in batch)) in runs for batch in seen)
    assert len({row for batch in seen[:8] for row in batch}) == 64  # epoch 1: every row once
    assert seen[8:12] != seen[:4]  # epoch 2 has its own order
    resumed, _ = _run(tmp_path, max_steps=12, resume=str(tmp_path / "run" / "checkpoint-4"))
    assert resumed == seen[4:]
