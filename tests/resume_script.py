"""Run a tiny distillation in its own process; `kill` mode SIGKILLs itself after the first checkpoint.

Used by test_resume.py: a real process death, then `resume_from_checkpoint` in a new process.
"""

import os
import signal
import sys

import torch
from transformers import BertConfig, BertForSequenceClassification, TrainerCallback

sys.path.insert(0, os.path.dirname(__file__))
from conftest import seq_cls_dataset  # noqa: E402

from hfkd import DistillationConfig, DistillationTrainer  # noqa: E402

KILL_AFTER_STEP = 3


class KillAfter(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == KILL_AFTER_STEP:
            os.kill(os.getpid(), signal.SIGKILL)


def build(output_dir: str) -> DistillationTrainer:
    torch.manual_seed(0)
    common = dict(vocab_size=100, max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.1)
    teacher = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                                       intermediate_size=64, **common))
    student = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                       intermediate_size=32, **common))
    args = DistillationConfig(
        output_dir=output_dir, report_to=[], use_cpu=True, seed=0, max_steps=8, per_device_train_batch_size=8,
        save_strategy="steps", save_steps=2, learning_rate=5e-3, alpha_kd=1.0, alpha_ce=0.5, alpha_hidden=1.0,
        alpha_attention=0.5, disable_tqdm=True, logging_steps=1,
    )
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=seq_cls_dataset(48))


def main(mode: str, output_dir: str) -> None:
    trainer = build(output_dir)
    if mode == "kill":
        trainer.add_callback(KillAfter())
        trainer.train()
    elif mode == "resume":
        trainer.train(resume_from_checkpoint=os.path.join(output_dir, "checkpoint-2"))
    else:
        trainer.train()
    trainer.save_model(os.path.join(output_dir, "final"))
    torch.save(
        {k: v.detach().clone() for k, v in trainer.projections.state_dict().items()},
        os.path.join(output_dir, "final", "projections.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
