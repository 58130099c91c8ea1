"""A teacher cache written shard by shard: the same rows and values as one shard, read memory-mapped,
and each kind of bad or partial cache refused in one line (never used)."""

import errno
import json
import os
import shutil

import datasets
import pytest
import torch
from transformers import default_data_collator

from conftest import seq_cls_dataset, seq_cls_pair
from hfkd.teacher.cache import (
    FINGERPRINT_NAME,
    TeacherCacheError,
    build_teacher_cache,
    cache_exists,
    load_teacher_cache,
    teacher_cache_fingerprint,
)
from hfkd.teacher.cache import shards as shards_module
from tolerance import assert_within, float32_bound

pytestmark = pytest.mark.usefixtures("datasets_cache")


def manifest(cache_dir):
    return json.loads((cache_dir / FINGERPRINT_NAME).read_text())


def build(teacher, data, cache_dir, **kwargs):
    return build_teacher_cache(teacher, data, default_data_collator, cache_dir, batch_size=4, **kwargs)


def test_shards_hold_the_rows_and_values_of_one_table_and_are_memory_mapped(tmp_path):
    teacher = seq_cls_pair()[0].double()  # float64: both builds then agree to a float32 rounding
    data = seq_cls_dataset(n=10)
    sharded = build(teacher, data, tmp_path / "sharded", shard_rows=3)
    whole = build(teacher, data, tmp_path / "whole")
    assert [s["rows"] for s in manifest(tmp_path / "sharded")["shards"]] == [[0, 3], [3, 6], [6, 9], [9, 10]]
    assert sharded["input_ids"] == whole["input_ids"] == data["input_ids"]
    expected = torch.tensor(whole["teacher_logits"])
    assert_within(torch.tensor(sharded["teacher_logits"]), expected, float32_bound(expected.unsqueeze(-1), n=1, dim=-1))
    # Read from the shards' Arrow files, not copied into memory.
    files = {os.path.dirname(f["filename"]) for f in sharded.cache_files}
    assert len(files) == 4 and all(f.startswith(str(tmp_path / "sharded" / "shards")) for f in files)
    assert all(isinstance(t, datasets.table.MemoryMappedTable) for t in sharded.data.blocks[0] + sharded.data.blocks[1])


def test_shards_stay_under_the_byte_bound():
    row_bytes = shards_module.np.array([10, 10, 10, 30, 5, 5])
    assert shards_module.plan_shards(row_bytes, shard_rows=4, shard_bytes=25) == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert shards_module.plan_shards(row_bytes, shard_rows=2, shard_bytes=10**6) == [(0, 2), (2, 4), (4, 6)]


def test_a_complete_cache_is_not_rebuilt(tmp_path, monkeypatch):
    teacher, data = seq_cls_pair()[0], seq_cls_dataset(n=6)
    build(teacher, data, tmp_path / "c", shard_rows=4)
    monkeypatch.setattr(shards_module.CacheLayout, "write", lambda *_: pytest.fail("a complete shard was rebuilt"))
    assert len(build(teacher, data, tmp_path / "c", shard_rows=4)) == 6


def test_a_shard_that_does_not_match_its_manifest_is_refused(tmp_path):
    teacher, data = seq_cls_pair()[0], seq_cls_dataset(n=6)
    build(teacher, data, tmp_path / "c", shard_rows=4)
    stored = manifest(tmp_path / "c")
    meta_path = tmp_path / "c" / "shards" / stored["shards"][1]["name"] / "shard.json"
    meta = json.loads(meta_path.read_text())
    meta["fingerprint"]["teacher_sha256"] = "0" * 64  # a shard of another teacher put in its place
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(TeacherCacheError, match=r"shard .*-00001-of-00002 does not match the manifest "
                                                r"\(teacher_sha256 differ.*rebuild") as error:
        load_teacher_cache(tmp_path / "c", stored)
    assert "\n" not in str(error.value)
    shutil.rmtree(meta_path.parent)
    with pytest.raises(TeacherCacheError, match="lists shard .* which is missing or incomplete"):
        load_teacher_cache(tmp_path / "c", stored)


def test_a_build_replaces_a_shard_of_another_teacher_under_its_name(tmp_path, caplog):
    teacher, data = seq_cls_pair()[0], seq_cls_dataset(n=6)
    build(teacher, data, tmp_path / "c", shard_rows=4)
    stored = manifest(tmp_path / "c")
    meta_path = tmp_path / "c" / "shards" / stored["shards"][0]["name"] / "shard.json"
    meta = json.loads(meta_path.read_text())
    meta["fingerprint"]["tokenizer_sha256"] = "another vocabulary"
    meta_path.write_text(json.dumps(meta))
    os.remove(tmp_path / "c" / FINGERPRINT_NAME)  # as a killed build of the other tokenizer would leave it
    with caplog.at_level("WARNING", logger="hfkd.teacher.cache"):
        cache = build(teacher, data, tmp_path / "c", shard_rows=4)
    assert any("does not hold this build's rows and fingerprint" in r.getMessage() for r in caplog.records)
    assert len(cache) == 6 and json.loads(meta_path.read_text())["fingerprint"] == {
        k: v for k, v in stored.items() if k != "shards"}


def test_out_of_disk_mid_build_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch):
    teacher, data = seq_cls_pair()[0], seq_cls_dataset(n=10)
    real_save, calls = datasets.Dataset.save_to_disk, []

    def full_disk(self, path, **kwargs):
        calls.append(path)
        real_save(self, path, **kwargs)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full_disk)
    with pytest.raises(TeacherCacheError, match=r"out of disk space writing teacher cache shard 2 of 3 .*keeps the "
                                                r"1 complete shard\(s\) and resumes") as error:
        build(teacher, data, tmp_path / "c", shard_rows=4)
    assert "\n" not in str(error.value) and not cache_exists(tmp_path / "c")
    assert len(os.listdir(tmp_path / "c" / "shards")) == 1  # the partial shard was removed, the complete one kept
    monkeypatch.undo()
    written = []
    real_write = shards_module.CacheLayout.write
    monkeypatch.setattr(shards_module.CacheLayout, "write",
                        lambda self, index, shard: (written.append(index), real_write(self, index, shard)))
    assert build(teacher, data, tmp_path / "c", shard_rows=4)["input_ids"] == data["input_ids"]
    assert written == [1, 2]


def test_not_enough_free_disk_is_refused_before_the_teacher_runs(tmp_path, monkeypatch):
    teacher, data = seq_cls_pair()[0], seq_cls_dataset(n=6)
    monkeypatch.setattr(shards_module.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**6, 10**6 - 100, 100))
    monkeypatch.setattr(shards_module.CacheLayout, "write", lambda *_: pytest.fail("the build started"))
    with pytest.raises(TeacherCacheError, match=r"needs about 0.00 GiB more but only 0.00 GiB are free: free space"):
        build(teacher, data, tmp_path / "c")


def test_a_cache_of_an_earlier_hfkd_is_refused_then_replaced(tmp_path):
    teacher, data = seq_cls_pair()[0], seq_cls_dataset(n=6)
    old = tmp_path / "c"
    data.save_to_disk(str(old))  # what earlier versions wrote: one table beside fingerprint.json
    (old / FINGERPRINT_NAME).write_text(json.dumps(teacher_cache_fingerprint(teacher, data)))
    with pytest.raises(TeacherCacheError, match="written by an earlier hfkd .*rebuild"):
        load_teacher_cache(old, teacher_cache_fingerprint(teacher, data))
    assert len(build(teacher, data, old)) == 6
    assert sorted(os.listdir(old)) == [FINGERPRINT_NAME, "shards"]
