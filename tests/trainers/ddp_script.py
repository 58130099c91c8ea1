"""A 2-process distillation run for test_distributed.py (launched with `accelerate launch`)."""

import json
import os
import sys

import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for conftest
from conftest import seq_cls_dataset, seq_cls_pair  # noqa: E402

import hfkd.report.model_card  # noqa: E402
import hfkd.objective.projections  # noqa: E402
from hfkd import DistillationConfig, DistillationTrainer  # noqa: E402
from hfkd.app.recipes import finish_process  # noqa: E402

WRITES: list[str] = []


def record_writes(owner: object, name: str) -> None:
    """Note each call of owner.name (a function that writes output files) made by this process."""
    original = getattr(owner, name)

    def recorded(*args, **kwargs):
        WRITES.append(name)
        return original(*args, **kwargs)

    setattr(owner, name, recorded)


record_writes(PreTrainedModel, "save_pretrained")  # the student, in checkpoints and at the end
record_writes(hfkd.report.model_card, "write_model_card")
record_writes(hfkd.objective.projections, "save_file")  # hfkd_projections.safetensors in checkpoints


class RecordingCollator:
    """Pads like DataCollatorWithPadding and records which examples this process saw."""

    def __init__(self):
        self.seen: list[list[int]] = []

    def __call__(self, features):
        self.seen.append([f["input_ids"][0] * 1000 + f["input_ids"][1] for f in features])
        return {k: torch.tensor([f[k] for f in features]) for k in features[0]}


def main(output_dir: str) -> None:
    teacher, student = seq_cls_pair(student_hidden=16)
    collator = RecordingCollator()
    args = DistillationConfig(
        output_dir=output_dir, report_to=[], per_device_train_batch_size=4, gradient_accumulation_steps=2,
        num_train_epochs=1, learning_rate=1e-3, alpha_kd=1.0, alpha_ce=0.5, alpha_hidden=1.0, seed=0,
        save_strategy="steps", save_steps=2, disable_tqdm=True, logging_steps=1, dataloader_drop_last=True,
    )
    data = seq_cls_dataset(64)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                  eval_dataset=data, data_collator=collator)
    trainer.train()
    trainer.save_model()
    metrics = trainer.evaluate()
    rank = trainer.args.process_index
    checksum = sum(float(p.detach().double().sum()) for p in trainer.model.parameters())
    record = {
        "rank": rank, "world_size": trainer.args.world_size, "global_step": trainer.state.global_step,
        "seen": collator.seen, "checksum": checksum, "eval_loss": metrics["eval_loss"],
        "student_wrapped": isinstance(trainer.model_wrapped, DistributedDataParallel),
        "teacher_wrapped": isinstance(trainer.teacher, DistributedDataParallel),
        "teacher_trainable": any(p.requires_grad for p in trainer.teacher.parameters()),
        "distributed_type": str(trainer.accelerator.distributed_type),
        "writes": WRITES,
    }
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(record, handle)
    finish_process()  # destroys the process group; exits at once (gloo teardown can hang)


if __name__ == "__main__":
    main(sys.argv[1])
