"""The long run of test_long_run.py, in a fresh process so that its memory figures are its own:
1,000 steps, then a resume to 2,000, sampling this process's resident memory every 100 steps.

Writes JSON to argv[2]: per run, the VmRSS samples (KiB) by step and, where the kernel lets a
process reset its peak (`echo 5 > /proc/self/clear_refs`), the peak VmHWM (KiB) reached during that
run after resetting it at its first sample; the checkpoints left after each run; the final step.
"""

import json
import os
import sys

from transformers import TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for conftest
from conftest import seq_cls_dataset, seq_cls_pair  # noqa: E402

from hfkd import DistillationConfig, DistillationTrainer  # noqa: E402


def status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class SampleMemory(TrainerCallback):
    """VmRSS every `every` steps; the peak is reset at the first sample (after warm-up) and read at the end."""

    def __init__(self, every: int = 100):
        self.every, self.rss, self.peak_reset = every, {}, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.rss[state.global_step] = status_kib("VmRSS")
            if self.peak_reset is None:
                self.peak_reset = reset_peak()

    def report(self):
        return {"rss": self.rss, "hwm": status_kib("VmHWM") if self.peak_reset else None}


def trainer_for(folder, max_steps):
    teacher, student = seq_cls_pair(student_hidden=16)
    args = DistillationConfig(
        output_dir=os.path.join(folder, "run"), report_to=[], use_cpu=True, seed=0, max_steps=max_steps,
        per_device_train_batch_size=4, learning_rate=1e-3, alpha_kd=1.0, alpha_ce=0.5, alpha_hidden=1.0,
        save_strategy="steps", save_steps=50, save_total_limit=2, logging_steps=100, disable_tqdm=True,
    )
    memory = SampleMemory()
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=seq_cls_dataset(64),
                                  callbacks=[memory])
    return trainer, memory


def main(folder: str, out: str, first: int = 1000, total: int = 2000) -> None:
    runs = []
    trainer, memory = trainer_for(folder, first)
    trainer.train()
    runs.append({**memory.report(), "checkpoints": sorted(os.listdir(os.path.join(folder, "run")))})
    resumed, memory = trainer_for(folder, total)
    resumed.train(resume_from_checkpoint=os.path.join(folder, "run", f"checkpoint-{first}"))
    runs.append({**memory.report(), "checkpoints": sorted(os.listdir(os.path.join(folder, "run")))})
    with open(out, "w") as handle:
        json.dump({"runs": runs, "global_step": resumed.state.global_step}, handle)


if __name__ == "__main__":  # folder, output JSON[, steps of the first run, total steps]
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:5]))
