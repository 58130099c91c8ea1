"""The teacher cache survives SIGKILL at any step of a build, resumes from its complete shards, and
never replaces a folder that is not an hfkd cache."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from transformers import default_data_collator

from conftest import seq_cls_dataset, seq_cls_pair
from hfkd.teacher.cache import FINGERPRINT_NAME, build_teacher_cache, cache_exists, load_teacher_cache
from hfkd.teacher.cache.shards import CacheLayout
from killpoint import QUIET, REPO_ROOT, snapshot
from tolerance import assert_within, float32_bound

# Kills itself before or after the k-th rename into the cache (shards 1-4, then the manifest), or
# right after the k-th shard's files were saved (its temp folder full, not renamed yet).
BUILD = r'''
import os, signal, datasets
from transformers import AutoModelForSequenceClassification, default_data_collator
from hfkd.teacher.cache import build_teacher_cache
work, (point, k) = os.environ["WORK"], os.environ["HFKD_KILL_AT"].split(":")
cache, count = os.path.join(work, "c"), {"replace": 0, "save": 0}
real_replace, real_save = os.replace, datasets.Dataset.save_to_disk
def replace(src, dst, *args, **kwargs):
    ours = os.path.dirname(os.fspath(dst)) == os.path.join(cache, "shards") or os.fspath(dst).endswith("fingerprint.json")
    count["replace"] += ours
    if ours and point == "before" and count["replace"] == int(k):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst, *args, **kwargs)
    if ours and point == "after" and count["replace"] == int(k):
        os.kill(os.getpid(), signal.SIGKILL)
def save(self, path, *args, **kwargs):
    real_save(self, path, *args, **kwargs)
    count["save"] += 1
    if point == "save" and count["save"] == int(k):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace, datasets.Dataset.save_to_disk = replace, save
teacher = AutoModelForSequenceClassification.from_pretrained(os.path.join(work, "teacher")).double()
build_teacher_cache(teacher, datasets.load_from_disk(os.path.join(work, "data")), default_data_collator, cache,
                    batch_size=3, shard_rows=4)
'''


def fingerprint(cache_dir):
    return json.loads((cache_dir / FINGERPRINT_NAME).read_text())


def run_killed(tmp_path, kill_at):
    env = {**os.environ, **QUIET, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "HFKD_KILL_AT": kill_at, "WORK": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", BUILD], env=env, capture_output=True, text=True, timeout=180,
                          cwd=REPO_ROOT)
    assert done.returncode == -signal.SIGKILL, f"not killed at {kill_at} (rc {done.returncode}): {done.stderr[-2000:]}"


# save:2 = inside the second shard's write; before:5 = all shards written, no manifest yet; after:5 = the
# manifest is in place but the previous cache's shards are not removed yet.
@pytest.mark.usefixtures("datasets_cache")
@pytest.mark.parametrize("kill_at, serving", [("save:2", "old"), pytest.param("before:5", "old", marks=pytest.mark.slow),
                                              pytest.param("after:5", "new", marks=pytest.mark.slow)])
def test_a_killed_build_keeps_a_complete_cache_and_resumes_from_its_shards(tmp_path, monkeypatch, kill_at, serving):
    teacher = seq_cls_pair()[0].double()  # float64: outputs then agree to a float32 rounding in any process
    teacher.save_pretrained(tmp_path / "teacher")
    data = seq_cls_dataset(n=16, seed=1)
    data.save_to_disk(str(tmp_path / "data"))
    cache_dir = tmp_path / "c"
    build_teacher_cache(teacher, seq_cls_dataset(n=8), default_data_collator, cache_dir, shard_rows=4)

    run_killed(tmp_path, kill_at)
    assert cache_exists(cache_dir)  # a manifest is always there, and what it lists is complete
    assert len(load_teacher_cache(cache_dir, fingerprint(cache_dir))) == {"old": 8, "new": 16}[serving]

    kept = snapshot(cache_dir / "shards")
    written = []
    real_write = CacheLayout.write
    monkeypatch.setattr(CacheLayout, "write", lambda self, index, shard: (written.append(index),
                                                                            real_write(self, index, shard)))
    data = type(data).load_from_disk(str(tmp_path / "data"))
    resumed = build_teacher_cache(teacher, data, default_data_collator, cache_dir, batch_size=3, shard_rows=4)
    complete_before = {"save:2": 1, "before:5": 4, "after:5": 4}[kill_at]
    assert sorted(written) == list(range(complete_before, 4))  # only the missing shards were computed
    shards, after = set(os.listdir(cache_dir / "shards")), snapshot(cache_dir / "shards")
    reused = {p: h for p, h in kept.items() if p.split(os.sep)[0] in shards}
    assert len(shards) == 4 and len({p.split(os.sep)[0] for p in reused}) == complete_before
    assert reused.items() <= after.items()  # the complete shards were kept as they were
    monkeypatch.undo()
    fresh = build_teacher_cache(teacher, data, default_data_collator, tmp_path / "fresh", batch_size=3, shard_rows=4)
    assert resumed["input_ids"] == fresh["input_ids"]
    expected = torch.tensor(fresh["teacher_logits"])
    assert_within(torch.tensor(resumed["teacher_logits"]), expected, float32_bound(expected.unsqueeze(-1), n=1, dim=-1))


def test_a_folder_that_is_not_a_cache_is_refused_and_kept(tmp_path):
    teacher, _ = seq_cls_pair()
    data = tmp_path / "data"
    data.mkdir()
    (data / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="no hfkd teacher cache.*choose a new or empty folder"):
        build_teacher_cache(teacher, seq_cls_dataset(n=8), default_data_collator, data)
    assert (data / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_an_empty_folder_may_hold_the_cache(tmp_path):
    teacher, _ = seq_cls_pair()
    (tmp_path / "c").mkdir()
    build_teacher_cache(teacher, seq_cls_dataset(n=8), default_data_collator, tmp_path / "c")
    assert len(load_teacher_cache(tmp_path / "c", fingerprint(tmp_path / "c"))) == 8
