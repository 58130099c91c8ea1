"""Same seed, same config -> the same student on CPU (dropout on, shuffled data, projections)."""

import torch

from conftest import seq_cls_dataset, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer


def train_once(tmp_path, name):
    teacher, student = seq_cls_pair(student_hidden=16)
    student.config.hidden_dropout_prob = 0.1
    args = DistillationConfig(
        output_dir=str(tmp_path / name), report_to=[], use_cpu=True, seed=123, max_steps=6,
        per_device_train_batch_size=8, learning_rate=5e-3, alpha_kd=1.0, alpha_ce=0.5, alpha_hidden=1.0,
        save_strategy="no", disable_tqdm=True,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=seq_cls_dataset(40))
    trainer.train()
    return {k: v.detach().clone() for k, v in student.state_dict().items()}


def test_same_seed_same_student(tmp_path):
    first, second = train_once(tmp_path, "a"), train_once(tmp_path, "b")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
