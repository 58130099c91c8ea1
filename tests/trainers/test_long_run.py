"""Long-run smoke test: thousands of steps with frequent checkpoints and rotation (slow)."""

import os
import resource

import pytest

from conftest import seq_cls_dataset, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer


def trainer_for(tmp_path, max_steps):
    teacher, student = seq_cls_pair(student_hidden=16)
    args = DistillationConfig(
        output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, seed=0, max_steps=max_steps,
        per_device_train_batch_size=4, learning_rate=1e-3, alpha_kd=1.0, alpha_ce=0.5, alpha_hidden=1.0,
        save_strategy="steps", save_steps=50, save_total_limit=2, logging_steps=100, disable_tqdm=True,
    )
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=seq_cls_dataset(64))


@pytest.mark.slow
def test_thousands_of_steps_flat_memory_and_safe_rotation(tmp_path):
    trainer = trainer_for(tmp_path, 1000)
    trainer.train()
    rss_after_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    checkpoints = sorted(os.listdir(tmp_path / "run"))
    assert checkpoints == ["checkpoint-1000", "checkpoint-950"]

    resumed = trainer_for(tmp_path, 2000)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1000"))
    assert resumed.state.global_step == 2000
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint-1950", "checkpoint-2000"]
    rss_after_second = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux: another 1,000 steps may not grow the peak by more than 64 MiB
    assert rss_after_second - rss_after_first < 64 * 1024
