"""The main job (recipes/sst2_main_job.py) never fine-tunes over a folder it was only asked to read."""

from __future__ import annotations

import runpy
import sys

import pytest

from conftest import REPO_ROOT

MAIN_JOB = str(REPO_ROOT / "recipes" / "sst2_main_job.py")


def test_teacher_dir_without_a_finished_teacher_is_refused_before_compute(tmp_path, monkeypatch):
    teacher = tmp_path / "my_teacher"
    teacher.mkdir()
    (teacher / "model.safetensors").write_bytes(b"the user's weights")
    output_root = tmp_path / "job"
    monkeypatch.setattr(sys, "argv", [MAIN_JOB, "--teacher_dir", str(teacher), "--output_root", str(output_root)])
    with pytest.raises(SystemExit, match="holds no finished teacher"):
        runpy.run_path(MAIN_JOB, run_name="__main__")
    assert (teacher / "model.safetensors").read_bytes() == b"the user's weights"
    assert sorted(p.name for p in teacher.iterdir()) == ["model.safetensors"]
    assert not output_root.exists()
