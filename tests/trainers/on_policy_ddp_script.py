"""A 2-process on-policy run with `reference_ce` (two student forwards per step) for test_distributed.py."""

import json
import os
import sys

from datasets import Dataset
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for conftest
from conftest import causal_lm_pair, tiny_lm_tokenizer  # noqa: E402

from hfkd import DistillationConfig, DistillationTrainer  # noqa: E402
from hfkd.app.recipes import finish_process  # noqa: E402


def main(output_dir: str) -> None:
    teacher, student = causal_lm_pair()
    data = Dataset.from_dict({"prompt": ["t5 t6 t7", "t8 t9", "t10 t11 t12 t13", "t14"] * 4,
                              "completion": ["t20 t21", "t22", "t23 t24 t25", "t26 t27"] * 4})
    args = DistillationConfig(
        output_dir=output_dir, report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=1, max_steps=4,
        per_device_train_batch_size=2, gradient_accumulation_steps=2, temperature=1.0, alpha_kd=1.0, alpha_ce=0.5,
        kd_loss="reverse_kl", lmbda=0.5, reference_ce=True, max_new_tokens=5, seed=3)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                  processing_class=tiny_lm_tokenizer())
    trainer.train()
    rank = trainer.args.process_index
    record = {
        "rank": rank, "world_size": trainer.args.world_size,
        "checksum": sum(float(p.detach().double().sum()) for p in trainer.model.parameters()),
        "student_wrapped": isinstance(trainer.model_wrapped, DistributedDataParallel),
        "logs": [h for h in trainer.state.log_history if "kd_loss" in h],
    }
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(record, handle)
    finish_process()


if __name__ == "__main__":
    main(sys.argv[1])
