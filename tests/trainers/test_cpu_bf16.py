"""bf16=True with use_cpu=True: the student trains under CPU autocast (bf16 matmuls), the loss stays finite.

accelerate wraps the student's forward in `torch.autocast("cpu", bfloat16)` and casts its outputs
back to float32, so the KD terms are computed in float32 on bf16-computed logits.
"""

from __future__ import annotations

import math

import torch

from conftest import seq_cls_dataset, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer


def test_bf16_on_cpu_trains_under_autocast_with_a_bf16_teacher(tmp_path):
    teacher, student = seq_cls_pair()
    inside: list[tuple[bool, torch.dtype]] = []  # (autocast on, dtype of the classifier's matmul) per training forward
    student.classifier.register_forward_hook(
        lambda module, args, output: inside.append((torch.is_autocast_enabled("cpu"), output.dtype))
        if module.training else None)
    args = DistillationConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=True, max_steps=3,
                              per_device_train_batch_size=8, learning_rate=1e-3, save_strategy="no",
                              disable_tqdm=True, teacher_dtype="bfloat16", alpha_kd=0.5, alpha_ce=0.5,
                              alpha_hidden=1.0, teacher_min_agreement=0.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=seq_cls_dataset(24))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = trainer.train()
    assert inside == [(True, torch.bfloat16)] * 3
    assert trainer.teachers_side.models[0].dtype == torch.bfloat16
    assert math.isfinite(result.training_loss)
    losses = [entry[key] for entry in trainer.state.log_history for key in entry if key.endswith("_loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert next(student.parameters()).dtype == torch.float32  # master weights stay float32
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
