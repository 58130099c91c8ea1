"""The teacher cache survives kills and never replaces a folder that is not an hfkd cache."""

import json

import datasets
import pytest
from transformers import default_data_collator

from conftest import seq_cls_dataset, seq_cls_pair
from hfkd.teacher.cache import FINGERPRINT_NAME, build_teacher_cache, cache_exists, load_teacher_cache
from killpoint import assert_old_or_new, run_killed, snapshot

BUILD = r'''
import os, datasets
from transformers import AutoModelForSequenceClassification, default_data_collator
from hfkd.teacher.cache import build_teacher_cache
work = os.environ["WORK"]
teacher = AutoModelForSequenceClassification.from_pretrained(os.path.join(work, "teacher"))
build_teacher_cache(teacher, datasets.load_from_disk(os.path.join(work, "data")), default_data_collator,
                    os.path.join(work, "caches", "c"), batch_size=8)
'''


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def fingerprint(cache_dir):
    return json.loads((cache_dir / FINGERPRINT_NAME).read_text())


# 1:1 = killed after the build, before the swap; 1:aside = between moving the old cache aside and the new one in.
@pytest.mark.parametrize("kill_at, expected", [("1:1", "old"), ("1:aside", "new")])
def test_a_kill_during_the_build_or_the_swap_keeps_a_complete_cache(tmp_path, monkeypatch, kill_at, expected):
    teacher, _ = seq_cls_pair()
    teacher.save_pretrained(tmp_path / "teacher")
    seq_cls_dataset(n=16, seed=1).save_to_disk(str(tmp_path / "data"))
    cache_dir = tmp_path / "caches" / "c"
    build_teacher_cache(teacher, seq_cls_dataset(n=8), default_data_collator, cache_dir, batch_size=8)
    old = snapshot(tmp_path / "caches")
    monkeypatch.setenv("WORK", str(tmp_path))
    new = run_killed(BUILD, kill_at, tmp_path)
    assert cache_exists(cache_dir)  # what the next distill run checks first: it finishes the swap
    assert assert_old_or_new(tmp_path / "caches", old, new) == expected
    stored = fingerprint(cache_dir)
    assert len(load_teacher_cache(cache_dir, stored)) == (8 if expected == "old" else 16)


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
