"""The teacher cache at scale: build time, peak memory and disk size against rows, 1 vs 2 processes, a
build killed half way, and the training step from the cache against the student alone.

    python scripts/benchmark_cache.py [--rows 1000,8000,32000] [--two_process_rows 8000]
        [--kill_rows 8000] [--lm_blocks 128,512] [--step_rows 8000] [--output outputs/cache/cache.json]

Stages (each skipped with an empty list / 0; results are written after every stage):

    build      `python -m hfkd cache-teacher` on the first N SST-2 training sentences (seeded subset,
               max 64 tokens, batch 64) with the fine-tuned MiniLM-L6 teacher: wall time of the
               command, peak RSS of its process tree (sampled every 0.1 s), disk size of the cache
    processes  the same through `accelerate launch --multi_gpu --num_processes 2 -m hfkd` (gloo),
               its shards compared with the 1-process build's
    kill       a build with 512-row shards SIGKILLed once half its shards are written, then rerun:
               the rerun's wall time against a full build with the same shards
    lm         SmolLM2-135M (converted from its GGUF, outputs/smollm2) over N blocks of 128
               WikiText-2 tokens at top-k 50 (library call in a forked child: its peak RSS)
    step       training steps (batch 32, 3-layer student from the teacher's layers 0, 2, 4) from the
               cache (KD 0.8 at T = 2 + CE 0.2, no teacher) against the student alone (plain Trainer)

Every process runs with one thread (OMP_NUM_THREADS=1). Datasets' tokenization cache lives in the
work folder, so builds after the first of a size do not re-tokenize.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarking import (  # first: it sets up the environment transformers reads on import
    KD_SETTINGS, ROOT, SST2_DIR, STUDENT_LAYERS, cpu_name, in_child, load_sst2, now, quiet_libraries, save_layer_student, smollm2_teacher,
    trainer_settings, write_results,
)
import psutil
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from hfkd import DistillationConfig, DistillationTrainer
from hfkd.report.render import markdown_table
from hfkd.teacher.cache import FINGERPRINT_NAME, build_teacher_cache, load_teacher_cache

SST2_TEACHER = "outputs/sst2/teacher"
SMOLLM2 = "outputs/smollm2"
WIKITEXT = os.path.join(ROOT, "..", "shared", "data", "wikitext2", "valid.txt")
LAUNCH = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--multi_gpu", "--num_processes",
          "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hfkd"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000,8000,32000", help="SST-2 rows of the 1-process builds")
    parser.add_argument("--two_process_rows", default="8000", help="rows built again in 2 processes")
    parser.add_argument("--kill_rows", type=int, default=8000, help="rows of the killed-and-resumed build (0: skip)")
    parser.add_argument("--lm_blocks", default="128,512", help="WikiText-2 blocks cached with SmolLM2 at top-k 50")
    parser.add_argument("--step_rows", type=int, default=8000, help="rows of the cache the step timing reads (0: skip)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--teacher", default=SST2_TEACHER)
    parser.add_argument("--output", default=os.path.join(ROOT, "outputs", "cache", "cache.json"))
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    options = parser.parse_args()
    quiet_libraries()
    os.environ.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(1)
    work = options.work or tempfile.mkdtemp(prefix="hfkd-cache-bench-")
    os.makedirs(work, exist_ok=True)
    os.environ["HF_DATASETS_CACHE"] = os.path.join(work, "hf_cache")
    results: dict[str, Any] = {"cpu": cpu_name(), "command": " ".join(sys.argv), "teacher": options.teacher,
                               "build": [], "processes": [], "kill": None, "lm": [], "step": None}

    def save() -> None:
        write_results(options.output, results, render(results))

    for rows in _sizes(options.rows):
        results["build"].append(cli_build(options.teacher, work, rows, processes=1))
        save()
    for rows in _sizes(options.two_process_rows):
        two = cli_build(options.teacher, work, rows, processes=2)
        one = next((b for b in results["build"] if b["rows"] == rows), None) or cli_build(options.teacher, work, rows, 1)
        two["identical_to_one_process"] = _same_cache(one["cache_dir"], two["cache_dir"])
        two["speedup"] = round(one["seconds"] / two["seconds"], 2)
        two["teacher_speedup"] = round(one["teacher_seconds"] / two["teacher_seconds"], 2)
        results["processes"].append(two)
        save()
    if options.kill_rows:
        results["kill"] = killed_build(options.teacher, work, options.kill_rows)
        save()
    for blocks in _sizes(options.lm_blocks):
        results["lm"].append(in_child(lm_build, work, blocks))
        save()
    if options.step_rows:
        cache = next((b for b in results["build"] if b["rows"] == options.step_rows), None)
        cache_dir = cache["cache_dir"] if cache else cli_build(options.teacher, work, options.step_rows, 1)["cache_dir"]
        results["step"] = {"rows": options.step_rows,
                           "student_only": in_child(train_steps, options.teacher, work, None, options.steps),
                           "cached": in_child(train_steps, options.teacher, work, cache_dir, options.steps)}
        results["step"]["ratio"] = round(results["step"]["cached"]["median_step_seconds"]
                                         / results["step"]["student_only"]["median_step_seconds"], 3)
        save()
    print(render(results))


# ---------------------------------------------------------------- builds through the command line


def _config(teacher: str, work: str, rows: int) -> str:
    path = os.path.join(work, f"sst2-{rows}.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"task: sequence_classification\nteacher_model_name_or_path: {teacher}\n"
                     f"train_file: {os.path.join(SST2_DIR, 'train.tsv')}\ntext_column: sentence\nlabel_column: label\n"
                     f"max_seq_length: 64\nmax_train_samples: {rows}\nper_device_eval_batch_size: 64\n"
                     f"output_dir: {os.path.join(work, 'out')}\nreport_to: none\n")
    return path


def cli_build(teacher: str, work: str, rows: int, processes: int, shard_rows: int = 4096,
              stop_at_shards: int | None = None, name: str | None = None) -> dict[str, Any]:
    """Run `hfkd cache-teacher` (in 1 or 2 processes) into a new cache; its time, peak tree RSS and size.

    With `stop_at_shards` the command is SIGKILLed once that many shards are complete.
    """
    cache_dir = os.path.join(work, name or f"cache-{rows}-{processes}p")
    command = ([sys.executable, "-m", "hfkd"] if processes == 1 else LAUNCH) + [
        "cache-teacher", "--config", _config(teacher, work, rows), "--teacher_cache_dir", cache_dir,
        "--teacher_cache_shard_rows", str(shard_rows)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    print(f"[cache] {rows} rows, {processes} process(es){' (to be killed)' if stop_at_shards else ''}", flush=True)
    log = os.path.join(work, os.path.basename(cache_dir) + ".log")
    with open(log, "a", encoding="utf-8") as handle:
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        peak, killed = 0, False
        while child.poll() is None:
            peak = max(peak, _tree_rss(child.pid))
            if stop_at_shards and _complete_shards(cache_dir) >= stop_at_shards:
                os.killpg(child.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.1)
        seconds = time.perf_counter() - started
    if child.returncode != 0 and not killed:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}); see {log}")
    with open(log, encoding="utf-8") as handle:  # the teacher phase: the slowest process's shards
        phases = [float(m) for m in re.findall(r"shard\(s\) written by process \d+ in ([0-9.]+) s", handle.read())]
    return {"rows": rows, "processes": processes, "seconds": round(seconds, 1),
            "teacher_seconds": max(phases[-processes:]) if len(phases) >= processes and not killed else None,
            "peak_rss_mb": round(peak / 2**20, 1),
            "disk_mb": round(_du(cache_dir) / 2**20, 2), "shards": _complete_shards(cache_dir), "cache_dir": cache_dir,
            "killed": killed}


def killed_build(teacher: str, work: str, rows: int) -> dict[str, Any]:
    """A full build with 512-row shards, then one killed at half its shards and rerun to completion."""
    full = cli_build(teacher, work, rows, 1, shard_rows=512, name=f"full-{rows}")
    half = -(-rows // 512) // 2
    killed = cli_build(teacher, work, rows, 1, shard_rows=512, stop_at_shards=half, name=f"killed-{rows}")
    resumed = cli_build(teacher, work, rows, 1, shard_rows=512, name=f"killed-{rows}")
    return {"rows": rows, "shards": full["shards"], "full_seconds": full["seconds"],
            "killed_after_seconds": killed["seconds"], "complete_when_killed": killed["shards"],
            "resume_seconds": resumed["seconds"], "resume_fraction": round(resumed["seconds"] / full["seconds"], 3),
            "full_teacher_seconds": full["teacher_seconds"], "resume_teacher_seconds": resumed["teacher_seconds"],
            "identical_to_full": _same_cache(full["cache_dir"], resumed["cache_dir"])}


def _same_cache(a: str, b: str) -> bool:
    """The same manifest and the same bits in every output column."""
    manifests = [json.load(open(os.path.join(d, FINGERPRINT_NAME), encoding="utf-8")) for d in (a, b)]
    if manifests[0] != manifests[1]:
        return False
    one, two = (load_teacher_cache(d, manifests[0]) for d in (a, b))
    return one["input_ids"] == two["input_ids"] and torch.equal(torch.tensor(one["teacher_logits"]),
                                                                torch.tensor(two["teacher_logits"]))


def _tree_rss(pid: int) -> int:
    try:
        parent = psutil.Process(pid)
        members = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def _complete_shards(cache_dir: str) -> int:
    shards = os.path.join(cache_dir, "shards")
    return len([n for n in os.listdir(shards) if not n.startswith(".")]) if os.path.isdir(shards) else 0


def _du(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


# ---------------------------------------------------------------- a language-model teacher, top-k 50


def lm_build(work: str, blocks: int) -> dict[str, Any]:
    """SmolLM2 over `blocks` WikiText-2 blocks of 128 tokens, top-50 log-probabilities at T = 2."""
    import datasets
    from transformers import DataCollatorForLanguageModeling

    tokenizer = AutoTokenizer.from_pretrained(smollm2_teacher(SMOLLM2))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    with open(WIKITEXT, encoding="utf-8") as handle:
        ids = tokenizer(handle.read())["input_ids"]
    rows = [ids[i:i + 128] for i in range(0, min(len(ids) - 128, blocks * 128), 128)]
    data = datasets.Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * 128 for _ in rows]})
    teacher = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32)
    cache_dir = os.path.join(work, f"lm-{blocks}")
    started = time.perf_counter()
    build_teacher_cache(teacher, data, DataCollatorForLanguageModeling(tokenizer, mlm=False), cache_dir, batch_size=8,
                        top_k=50, temperature=2.0)
    return {"blocks": len(rows), "tokens": 128 * len(rows), "seconds": round(time.perf_counter() - started, 1),
            "disk_mb": round(_du(cache_dir) / 2**20, 2), "shards": _complete_shards(cache_dir)}


# ---------------------------------------------------------------- training steps


class _StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer's callback signature)
        self.stamps.append(now()[0])


def train_steps(teacher: str, work: str, cache_dir: str | None, steps: int) -> dict[str, Any]:
    """Median seconds of a training step (after 5 warm-up steps), from the cache or for the student alone."""
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    student_dir = os.path.join(work, "student")
    if not os.path.isdir(student_dir):
        save_layer_student(student_dir, AutoModelForSequenceClassification.from_pretrained(teacher),
                           STUDENT_LAYERS, teacher)
    student = AutoModelForSequenceClassification.from_pretrained(student_dir)
    clock = _StepClock()
    settings = trainer_settings(os.path.join(work, "steps"), 32, max_steps=steps + 5, logging_steps=10**6)
    collator = DataCollatorWithPadding(tokenizer)
    if cache_dir is None:
        train = load_sst2(tokenizer, SST2_DIR, train_rows=8000).train
        trainer = Trainer(model=student, args=TrainingArguments(**settings), train_dataset=train,
                          data_collator=collator, callbacks=[clock])
    else:
        manifest = json.load(open(os.path.join(cache_dir, FINGERPRINT_NAME), encoding="utf-8"))
        trainer = DistillationTrainer(model=student, args=DistillationConfig(**settings, **KD_SETTINGS),
                                      train_dataset=load_teacher_cache(cache_dir, manifest),
                                      data_collator=collator, callbacks=[clock])
    trainer.train()
    seconds = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])][4:]
    return {"steps": len(seconds), "median_step_seconds": round(statistics.median(seconds), 4),
            "step_seconds_stdev": round(statistics.stdev(seconds), 4)}


# ---------------------------------------------------------------- output


def render(results: dict[str, Any]) -> str:
    lines = [f"CPU: {results['cpu']}; every process one thread. Command: `{results['command']}`", ""]
    if results["build"] or results["processes"]:
        rows = [[b["rows"], b["processes"], b["shards"], f"{b['seconds']:.1f}", b["teacher_seconds"],
                 f"{b['peak_rss_mb']:.0f}", f"{b['disk_mb']:.2f}",
                 f"{b['speedup']} / {b['teacher_speedup']}" if "speedup" in b else "",
                 b.get("identical_to_one_process", "")]
                for b in results["build"] + results["processes"]]
        lines += ["SST-2 builds (`hfkd cache-teacher`, MiniLM-L6 teacher); wall = the whole command (start-up, "
                  "tokenizing, loading included), teacher = its slowest process's shard phase:", "",
                  markdown_table(["rows", "processes", "shards", "wall s", "teacher s", "peak RSS MB (tree)", "disk MB",
                                  "speedup vs 1 (wall / teacher)", "identical to 1 process"], rows), ""]
    if results["kill"]:
        k = results["kill"]
        lines += [f"Killed build ({k['rows']} rows, {k['shards']} shards of 512): SIGKILL after "
                  f"{k['complete_when_killed']} complete shards ({k['killed_after_seconds']:.1f} s); the rerun took "
                  f"{k['resume_seconds']:.1f} s against {k['full_seconds']:.1f} s for a full build "
                  f"({100 * k['resume_fraction']:.0f}%; teacher phase {k['resume_teacher_seconds']} s against "
                  f"{k['full_teacher_seconds']} s), identical content: {k['identical_to_full']}.", ""]
    if results["lm"]:
        rows = [[b["blocks"], b["tokens"], b["shards"], f"{b['seconds']:.1f}", f"{b['peak_memory_mb']:.0f}",
                 f"{b['disk_mb']:.2f}"] for b in results["lm"]]
        lines += ["WikiText-2 blocks of 128 tokens, SmolLM2-135M teacher, top-k 50 at T = 2 (library call):", "",
                  markdown_table(["blocks", "tokens", "shards", "wall s", "peak RSS MB (growth in child)", "disk MB"],
                                 rows), ""]
    if results["step"]:
        s = results["step"]
        lines += [f"Training step (batch 32, 3-layer student), cache of {s['rows']} rows: "
                  f"{s['cached']['median_step_seconds']:.3f} s (± {s['cached']['step_seconds_stdev']:.3f}) from the "
                  f"cache, {s['student_only']['median_step_seconds']:.3f} s "
                  f"(± {s['student_only']['step_seconds_stdev']:.3f}) student alone: ratio {s['ratio']:.3f}.", ""]
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip() and int(x) > 0]


if __name__ == "__main__":
    main()
