"""Language-model distillation, off- and on-policy, and TRL's on-policy DistillationTrainer on the same work.

    python scripts/benchmark_lm.py --teacher outputs/smollm2 [--steps 30 --batch 4 --layers 10]

Teacher: SmolLM2-135M-Instruct (a folder converted from the GGUF file by `hfkd convert-gguf`). Student:
`create_student(teacher, num_layers=--layers)` (copied Llama layers), fresh for every variant; with
`--warm_start_steps N` every variant starts instead from that student fine-tuned N steps with the LM
loss alone (no teacher) on WikiText-2 `valid.txt` text in blocks of 128 tokens, batch 8, as GKD's
students start from a supervised fine-tune: a cut student samples noise that on-policy KD cannot learn
from. The warm-started student is saved beside `--output` and reused by later runs with the same settings. Data:
WikiText-2 `valid.txt` paragraphs (headings left out): the prompt is a paragraph's first
`--prompt_words` words, the reference completion its next `--completion_tokens` tokens. Every variant
sees the same token budget: `--steps` optimizer steps of `--batch` prompts with `--completion_tokens`
completion tokens each, the loss on completion tokens only, at `--learning_rate` with
`--lr_scheduler_type` after `--warmup_steps` (the warm start keeps a constant rate):

- `no_teacher`: the student's LM loss on the reference completions (alpha_ce=1, no teacher);
- `off_policy_kl`: forward KL(teacher‖student) on the reference completions, full 49k-vocabulary logits;
- `off_policy_kl_ce`: half that KL, half the LM loss on the same tokens (DistilBERT's mixture);
- `topk_cached`: the same as `off_policy_kl` from a top-k (k=`--top_k`) teacher cache built once beforehand (build time reported);
- `topk_cached_ce`: the same as `off_policy_kl_ce` from that cache;
- `on_policy_rkl`: lmbda=1, reverse KL on completions the student samples (temperature 1);
- `mix`: lmbda=0.5, generalized JSD (beta 0.5), the other half on the reference completions;
- `on_policy_rkl_ce`, `mix_ce`: the same at half weight, beside half the LM loss on the reference
  completions on every step (`reference_ce`: on student-sample steps too, MiniLLM's pre-training term);
- `trl_on_policy`: TRL's `DistillationTrainer` (beta=1: reverse KL) on the same prompts, students,
  completion length, batch, learning rate and sampling.

Metrics per variant: median seconds per optimizer step (steps 3.. onward), peak resident memory of its
process (model loading included) and what training adds above the loaded models, WikiText-2 test perplexity (first `--eval_tokens` tokens of
`test.txt`, blocks of 256), the same over the targets outside WikiText's markup (`text ppl`: its `@-@`
escapes and `<unk>` tags, which a student fitted to WikiText predicts and the teacher does not), and the
mean per-token KL(teacher‖student) on `--kl_prompts` held-out
prompts (`test.txt` paragraph openings) continued by the teacher (sampled once, seeded). The on-policy
step's floor is timed alone: student generation, teacher forward, student forward+backward+AdamW step.
Writes JSON and Markdown (`--output`). A few dozen steps cannot judge quality; the step-time ratios can.

    python scripts/benchmark_lm.py --summarize lm_seed42.json lm_seed43.json ... --output lm_seeds.json

reads finished runs (several files of one seed merge: e.g. the hfkd variants and TRL run apart) and
writes, per variant, perplexity and held-out KL as mean ± std over the seeds, and in how many seeds it
beat the no-teacher student on both.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import time
from typing import Any

from benchmarking import (  # first: it sets up the environment transformers reads on import
    DATA_DIR, _reset_peak_rss, _status_kb, cpu_name, durations, in_child, mean_std, now, quiet_libraries,
    smollm2_teacher, write_results)
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, TrainerCallback

import hfkd
from hfkd.report.render import markdown_table
from hfkd.teacher.cache import build_teacher_cache, load_teacher_cache
from hfkd.teacher.cache.shards import read_manifest
from hfkd.trainers.on_policy import COMPLETION_IDS, PROMPT_IDS

HFKD_VARIANTS = ("no_teacher", "off_policy_kl", "off_policy_kl_ce", "topk_cached", "topk_cached_ce", "on_policy_rkl",
                 "on_policy_rkl_ce", "mix", "mix_ce")
VARIANTS = (*HFKD_VARIANTS, "trl_on_policy")
# WikiText's own escapes ("3 @-@ 2") and unknown-word tag (their share of the targets is reported as
# `markup_share`), predicted well only by a model fitted to WikiText, not by a teacher trained elsewhere.
WIKITEXT_MARKUP = re.compile(r"@[-,.]@|<unk>")
CACHED = ("topk_cached", "topk_cached_ce")  # trained from the top-k teacher cache, no teacher loaded
GENERATES = ("on_policy_rkl", "on_policy_rkl_ce", "mix", "mix_ce")  # trained from prompts (+ reference completions)
ON_POLICY = ("on_policy_rkl", "trl_on_policy")  # every step generates: compared with the floor and each other
SETTINGS = {
    "no_teacher": {"alpha_ce": 1.0, "alpha_kd": 0.0},
    "off_policy_kl": {"alpha_ce": 0.0, "alpha_kd": 1.0, "kd_loss": "kl"},
    "off_policy_kl_ce": {"alpha_ce": 0.5, "alpha_kd": 0.5, "kd_loss": "kl"},
    "topk_cached": {"alpha_ce": 0.0, "alpha_kd": 1.0, "kd_loss": "kl"},
    "topk_cached_ce": {"alpha_ce": 0.5, "alpha_kd": 0.5, "kd_loss": "kl"},
    "on_policy_rkl": {"alpha_ce": 0.0, "alpha_kd": 1.0, "kd_loss": "reverse_kl", "lmbda": 1.0},
    "on_policy_rkl_ce": {"alpha_ce": 0.5, "alpha_kd": 0.5, "kd_loss": "reverse_kl", "lmbda": 1.0, "reference_ce": True},
    "mix": {"alpha_ce": 0.0, "alpha_kd": 1.0, "kd_loss": "jsd", "jsd_beta": 0.5, "lmbda": 0.5},
    "mix_ce": {"alpha_ce": 0.5, "alpha_kd": 0.5, "kd_loss": "jsd", "jsd_beta": 0.5, "lmbda": 0.5, "reference_ce": True},
}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="outputs/smollm2")
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt_words", type=int, default=24)
    parser.add_argument("--completion_tokens", type=int, default=32)
    parser.add_argument("--top_k", type=int, default=50)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--lr_scheduler_type", default="constant", help="every variant's (the warm start stays constant)")
    parser.add_argument("--warmup_steps", type=int, default=0, help="every variant's linear warm-up")
    parser.add_argument("--eval_tokens", type=int, default=8192)
    parser.add_argument("--kl_prompts", type=int, default=16)
    parser.add_argument("--floor_reps", type=int, default=5)
    parser.add_argument("--warm_start_steps", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=os.path.join("benchmarks", "lm.json"))
    parser.add_argument("--summarize", nargs="+", metavar="JSON", help="finished runs' JSON files to summarise")
    options = parser.parse_args()
    options.variants = [v for v in options.variants.split(",") if v]
    unknown = set(options.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {','.join(VARIANTS)}")
    return options


# ---------------------------------------------------------------- data


def paragraphs(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    return [line for line in lines if line and not line.startswith("=")]


def prompt_rows(texts: list[str], tokenizer: Any, options: argparse.Namespace) -> list[dict[str, Any]]:
    """Paragraph openings (first `prompt_words` words) with their next `completion_tokens` tokens."""
    rows = []
    for text in texts:
        words = text.split()
        if len(words) < options.prompt_words * 3:
            continue
        prompt = " ".join(words[: options.prompt_words])
        rest = tokenizer(" " + " ".join(words[options.prompt_words:]), add_special_tokens=False)["input_ids"]
        if len(rest) >= options.completion_tokens:
            rows.append({"prompt": prompt, PROMPT_IDS: tokenizer(prompt, add_special_tokens=False)["input_ids"],
                         COMPLETION_IDS: rest[: options.completion_tokens]})
    return rows


def lm_rows(rows: list[dict[str, Any]]) -> Dataset:
    """The same prompts + completions as a plain causal-LM dataset, the loss on completion tokens only."""
    return Dataset.from_dict({
        "input_ids": [r[PROMPT_IDS] + r[COMPLETION_IDS] for r in rows],
        "labels": [[-100] * len(r[PROMPT_IDS]) + r[COMPLETION_IDS] for r in rows]})


class Workload:
    """What every variant shares, built once in the parent (forked children inherit it).

    The parent itself never runs the models: torch's OpenMP runtime (libgomp) does not survive a
    fork once its threads have run, and a forked child would hang at its first parallel region. The
    teacher's held-out continuations, its perplexity and the top-k cache are computed in children.
    """

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        smollm2_teacher(options.teacher)
        self.tokenizer = AutoTokenizer.from_pretrained(options.teacher)
        self.tokenizer.padding_side = "right"
        wiki = os.path.join(DATA_DIR, "wikitext2")
        needed = options.steps * options.batch
        self.train_rows = prompt_rows(paragraphs(os.path.join(wiki, "valid.txt")), self.tokenizer, options)[:needed]
        if len(self.train_rows) < needed:
            raise SystemExit(f"only {len(self.train_rows)} WikiText-2 paragraphs are long enough; lower --steps")
        test = paragraphs(os.path.join(wiki, "test.txt"))
        self.kl_rows = prompt_rows(test, self.tokenizer, options)[: options.kl_prompts]
        text = "\n".join(test)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        size = min(len(encoded["input_ids"]), options.eval_tokens) // 256 * 256
        self.eval_blocks = torch.tensor(encoded["input_ids"][:size]).view(-1, 256)
        markup = markup_tokens(text, encoded["offset_mapping"][:size])
        self.eval_markup = torch.tensor(markup).view(-1, 256)
        targets = [flag for i, flag in enumerate(markup) if i % 256]  # every token but each block's first
        self.markup_share = sum(targets) / len(targets)
        measured = in_child(teacher_side, self)
        self.kl_sequences = [torch.from_numpy(a) for a in measured["kl_sequences"]]
        self.kl_teacher_logp = [torch.from_numpy(a) for a in measured["kl_teacher_logp"]]
        self.kl_prompt_lengths = measured["kl_prompt_lengths"]
        self.teacher_perplexity, self.teacher_text_perplexity = measured["teacher_perplexity"], measured["teacher_text_perplexity"]
        self.start_dir = None
        self.warm_start: dict[str, Any] = {}
        if options.warm_start_steps > 0:
            self.start_dir = os.path.join(os.path.dirname(os.path.abspath(options.output)),
                                          f"lm_student_L{options.layers}_warm{options.warm_start_steps}")
            self.warm_start = in_child(warm_start, self)

    def teacher(self) -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(self.options.teacher, dtype=torch.float32).eval()

    def student(self, teacher: torch.nn.Module) -> torch.nn.Module:
        torch.manual_seed(self.options.seed)
        if self.start_dir:
            return AutoModelForCausalLM.from_pretrained(self.start_dir, dtype=torch.float32)
        return hfkd.create_student(teacher, num_layers=self.options.layers)

    def prompts(self) -> Dataset:
        return Dataset.from_list([{k: r[k] for k in (PROMPT_IDS, COMPLETION_IDS)} for r in self.train_rows])


def teacher_side(work: Workload) -> dict[str, Any]:
    """The teacher's held-out continuations with its log-probs on them, and its test perplexity."""
    teacher = work.teacher()
    sequences, prompt_lengths, log_probs = teacher_continuations(teacher, work.kl_rows, work.tokenizer, work.options)
    # numpy through the pipe: torch would share the tensors' memory with the child, which exits first
    return {"kl_sequences": [t.numpy() for t in sequences], "kl_prompt_lengths": prompt_lengths,
            "kl_teacher_logp": [t.numpy() for t in log_probs], **{f"teacher_{name}": value for name, value in perplexities(teacher, work).items()}}


def warm_start(work: Workload) -> dict[str, Any]:
    """The cut student fine-tuned with the LM loss alone (fixed seed 0, shared by every variant and seed);
    its test perplexity and held-out KL before and after. Reused when its folder already exists."""
    path, options = work.start_dir, work.options
    student = hfkd.create_student(work.teacher(), num_layers=options.layers)
    before = {**perplexities(student, work), "held_out_kl": held_out_kl(student, work)}
    if not os.path.isdir(path):
        text = "\n".join(paragraphs(os.path.join(DATA_DIR, "wikitext2", "valid.txt")))
        ids = work.tokenizer(text, add_special_tokens=False)["input_ids"]
        blocks = [ids[i: i + 128] for i in range(0, len(ids) - 127, 128)]
        args = hfkd.DistillationConfig(**{**common_args(options, path + ".tmp"), "max_steps": options.warm_start_steps,
                                          "per_device_train_batch_size": 8, "seed": 0, "lr_scheduler_type": "constant",
                                          "warmup_steps": 0}, alpha_ce=1.0, alpha_kd=0.0)
        hfkd.DistillationTrainer(model=student, args=args, train_dataset=Dataset.from_dict(
            {"input_ids": blocks, "labels": blocks}), processing_class=work.tokenizer).train()
        student.save_pretrained(path + ".tmp")
        work.tokenizer.save_pretrained(path + ".tmp")
        os.replace(path + ".tmp", path)
    student = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return {"before": before, "after": {**perplexities(student, work), "held_out_kl": held_out_kl(student, work)}}


def build_topk_cache(work: Workload, cache_dir: str) -> dict[str, Any]:
    """The top-k teacher cache of the training rows, built once; its build time."""
    started = time.perf_counter()
    build_teacher_cache(work.teacher(), lm_rows(work.train_rows), DataCollatorForSeq2Seq(work.tokenizer, padding=True),
                        cache_dir, batch_size=work.options.batch, top_k=work.options.top_k, temperature=1.0)
    return {"seconds": time.perf_counter() - started}


def teacher_continuations(teacher: torch.nn.Module, rows: list[dict], tokenizer: Any,
                          options: argparse.Namespace) -> tuple[list[torch.Tensor], list[int], list[torch.Tensor]]:
    """Held-out prompts continued by the teacher (sampled at temperature 1, seeded), and its log-probs on them."""
    sequences, lengths, log_probs = [], [], []
    for number, row in enumerate(rows):
        prompt = torch.tensor([row[PROMPT_IDS]])
        torch.manual_seed(options.seed + number)
        with torch.no_grad():
            out = teacher.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0,
                                   top_k=0, top_p=1.0, max_new_tokens=options.completion_tokens,
                                   pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            logits = teacher(out).logits[0, prompt.shape[1] - 1: -1]
        sequences.append(out)
        lengths.append(prompt.shape[1])
        log_probs.append(torch.log_softmax(logits.float(), -1))
    return sequences, lengths, log_probs


def held_out_kl(student: torch.nn.Module, work: Workload) -> float:
    """Mean per-token KL(teacher‖student) over the teacher's held-out continuations."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for sequence, length, teacher_logp in zip(work.kl_sequences, work.kl_prompt_lengths, work.kl_teacher_logp):
            student_logp = torch.log_softmax(student(sequence).logits[0, length - 1: -1].float(), -1)
            total += float((teacher_logp.exp() * (teacher_logp - student_logp)).sum())
            tokens += teacher_logp.shape[0]
    return total / max(tokens, 1)


def markup_tokens(text: str, offsets: list[tuple[int, int]]) -> list[bool]:
    """Whether each token's characters touch WikiText's markup (`WIKITEXT_MARKUP`). Plain Python: it runs
    in the parent, where a torch operation would start the OpenMP threads a forked child hangs on."""
    inside = [0] * len(text)
    for match in WIKITEXT_MARKUP.finditer(text):
        inside[match.start(): match.end()] = [1] * (match.end() - match.start())
    before = [0, *itertools.accumulate(inside)]  # before[i]: markup characters among text[:i]
    return [before[end] > before[start] for start, end in offsets]


def perplexities(model: torch.nn.Module, work: Workload) -> dict[str, float]:
    """Test perplexity over every next-token target, and over those outside WikiText's markup (`text_perplexity`)."""
    losses, text_nll = [], []
    with torch.no_grad():
        for block, markup in zip(work.eval_blocks, work.eval_markup):
            out = model(block[None], labels=block[None])
            losses.append(float(out.loss))
            nll = torch.nn.functional.cross_entropy(out.logits[0, :-1].float(), block[1:], reduction="none")
            text_nll.append(nll[~markup[1:]])
    return {"perplexity": float(torch.tensor(losses).mean().exp()), "text_perplexity": float(torch.cat(text_nll).mean().exp())}


# ---------------------------------------------------------------- runs


class StepClock(TrainerCallback):
    """(wall, CPU) stamps at every optimizer step's end (the first is the training start)."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []

    def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
        self.stamps.append(now())

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self.stamps.append(now())


def common_args(options: argparse.Namespace, output_dir: str) -> dict[str, Any]:
    return {"output_dir": output_dir, "max_steps": options.steps, "per_device_train_batch_size": options.batch,
            "learning_rate": options.learning_rate, "lr_scheduler_type": options.lr_scheduler_type,
            "warmup_steps": options.warmup_steps, "save_strategy": "no",
            "report_to": [], "disable_tqdm": True, "logging_steps": max(options.steps // 5, 1), "seed": options.seed,
            "use_cpu": not torch.cuda.is_available(), "dataloader_num_workers": 0}


def run_variant(name: str, work: Workload, cache_dir: str | None) -> dict[str, Any]:
    options = work.options
    teacher = work.teacher()
    student = work.student(teacher)
    clock = StepClock()
    output_dir = os.path.join("/tmp", f"hfkd_bench_lm_{name}")
    if name == "trl_on_policy":
        trainer = trl_trainer(student, teacher, work, output_dir)
    else:
        args = hfkd.DistillationConfig(**common_args(options, output_dir), temperature=1.0,
                                       max_new_tokens=options.completion_tokens, generation_temperature=1.0,
                                       **SETTINGS[name])
        if name in GENERATES:
            data, collator = work.prompts(), None
        else:
            data = (load_teacher_cache(cache_dir, read_manifest(cache_dir)) if name in CACHED
                    else lm_rows(work.train_rows))
            collator = DataCollatorForSeq2Seq(work.tokenizer, padding=True, label_pad_token_id=-100)
        uses_teacher = name != "no_teacher" and name not in CACHED
        trainer = hfkd.DistillationTrainer(model=student, teacher_model=teacher if uses_teacher else None, args=args,
                                           train_dataset=data, data_collator=collator,
                                           processing_class=work.tokenizer)
    trainer.add_callback(clock)
    baseline = _reset_peak_rss()  # models loaded: what training itself adds is measured from here
    trainer.train()
    train_peak = (_status_kb("VmHWM") - baseline) / 1024
    steps = durations(clock.stamps, max(options.steps - 2, 1))
    student.eval()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    lengths = [h[key] for h in logs for key in ("completion_length", "completions/mean_length") if key in h]
    return {"variant": name, "step_seconds_median": statistics.median(steps["step_seconds"]),
            "completion_length": round(statistics.mean(lengths), 1) if lengths else "–", "train_peak_mb": train_peak,
            "step_seconds": steps["step_seconds"], **perplexities(student, work),
            "held_out_kl": held_out_kl(student, work), "train_logs": logs}


def trl_trainer(student: torch.nn.Module, teacher: torch.nn.Module, work: Workload, output_dir: str) -> Any:
    import trl

    options = work.options
    args = trl.DistillationConfig(**common_args(options, output_dir), max_completion_length=options.completion_tokens,
                                  temperature=1.0, top_p=1.0, top_k=0, beta=1.0)
    prompts = Dataset.from_dict({"prompt": [r["prompt"] for r in work.train_rows]})
    return trl.DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=prompts,
                                   processing_class=work.tokenizer)


def on_policy_floor(work: Workload) -> dict[str, float]:
    """The on-policy step's parts, each timed alone (median of `floor_reps`): student generation of
    `completion_tokens` tokens, teacher forward on prompt + completion, student forward + backward + AdamW step."""
    options = work.options
    teacher = work.teacher()
    student = work.student(teacher)
    tokenizer = work.tokenizer
    rows = work.train_rows[: options.batch]
    width = max(len(r[PROMPT_IDS]) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt = torch.tensor([[pad] * (width - len(r[PROMPT_IDS])) + r[PROMPT_IDS] for r in rows])
    mask = (torch.arange(width)[None] >= torch.tensor([[width - len(r[PROMPT_IDS])] for r in rows])).long()
    optimizer = torch.optim.AdamW(student.parameters(), lr=options.learning_rate)
    parts: dict[str, list[float]] = {"generation": [], "teacher_forward": [], "student_forward_backward_step": []}
    for rep in range(options.floor_reps + 1):
        student.eval()
        started = now()
        with torch.no_grad():
            out = student.generate(prompt, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                   max_new_tokens=options.completion_tokens,
                                   min_new_tokens=options.completion_tokens, pad_token_id=pad)
        generated = now()
        full_mask = torch.cat([mask, torch.ones_like(out[:, width:])], 1)
        with torch.inference_mode():
            teacher_logits = teacher(out, attention_mask=full_mask).logits[:, width - 1: -1]
        scored = now()
        student.train()
        logits = student(out, attention_mask=full_mask).logits[:, width - 1: -1]
        log_s = torch.log_softmax(logits.float(), -1)
        log_t = torch.log_softmax(teacher_logits.clone().float(), -1)
        (log_s.exp() * (log_s - log_t)).sum(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        trained = now()
        if rep:  # the first repetition warms up
            for key, (a, b) in zip(parts, ((started, generated), (generated, scored), (scored, trained))):
                parts[key].append(b[0] - a[0])
    floor = {key: statistics.median(values) for key, values in parts.items()}
    floor["total"] = sum(floor.values())
    return floor


# ---------------------------------------------------------------- report


def ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}" if reference else "–"


def text_ppl(result: dict[str, Any], key: str = "text_perplexity") -> str:
    """Perplexity without WikiText's markup, "–" for runs made before it was measured."""
    return f"{result[key]:.1f}" if key in result else "–"


def markdown(results: dict[str, Any]) -> str:
    runs, floor = results["runs"], results.get("floor")
    trl_step = runs.get("trl_on_policy", {}).get("step_seconds_median")
    plain = runs.get("no_teacher", {})
    rows = []
    for name, run in runs.items():
        step, on_policy = run["step_seconds_median"], name in ON_POLICY
        rows.append([name, f"{run['perplexity']:.1f}", text_ppl(run), f"{run['held_out_kl']:.3f}", f"{step:.2f}",
                     ratio(step, plain.get("step_seconds_median")),
                     ratio(step, floor["total"] if floor and on_policy else None),
                     ratio(step, trl_step if on_policy else None), f"{run['peak_memory_mb']:.0f}",
                     f"{run['train_peak_mb']:.0f}", ratio(run["train_peak_mb"], plain.get("train_peak_mb")),
                     run.get("completion_length", "–")])
    table = markdown_table(["variant", "test ppl", "text ppl", "held-out KL", "s/step", "× no-teacher step", "× floor", "× TRL",
                            "process peak MB", "training adds MB", "× no-teacher", "completion tokens"], rows)
    markup = f", {results['markup_share']:.1%} of the test targets" if "markup_share" in results else ""
    lines = [f"Teacher perplexity {results['teacher_perplexity']:.1f} (text ppl, without WikiText's markup{markup}: "
             f"{text_ppl(results, 'teacher_text_perplexity')}); {results['settings']}; {results['device']}.", "", table]
    if "warm_start" in results:
        before, after = results["warm_start"]["before"], results["warm_start"]["after"]
        lines += ["", f"Every variant starts from the cut student fine-tuned {results['settings']['warm_start_steps']} "
                      f"steps with the LM loss alone: test ppl {before['perplexity']:.1f} -> {after['perplexity']:.1f} "
                      f"(text ppl {text_ppl(before)} -> {text_ppl(after)}), "
                      f"held-out KL {before['held_out_kl']:.3f} -> {after['held_out_kl']:.3f}."]
    if floor:
        lines += ["", "On-policy step floor (each part alone, median s): " + ", ".join(
            f"{key} {value:.2f}" for key, value in floor.items())]
    if "cache_build_seconds" in results:
        lines.append(f"Top-{results['settings']['top_k']} cache built once in {results['cache_build_seconds']:.1f} s.")
    return "\n".join(lines)


def summarize(paths: list[str]) -> tuple[dict[str, Any], str]:
    """Per variant over the seeds: perplexity and held-out KL (mean ± std), and the seeds where it beat
    the no-teacher student on both."""
    seeds: dict[int, dict[str, Any]] = {}
    shared: dict[str, Any] | None = None
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            result = json.load(handle)
        settings = {"lr_scheduler_type": "constant", "warmup_steps": 0, **result["settings"]}  # runs from before the flags
        result["settings"] = settings
        if shared is None:
            shared = {k: v for k, v in settings.items() if k != "seed"}
        elif {k: v for k, v in settings.items() if k != "seed"} != shared:
            raise SystemExit(f"{path} was run with other settings than {paths[0]}: summarise runs of one setting only.")
        merged = seeds.setdefault(settings["seed"], {**result, "runs": {}})
        merged["runs"].update(result["runs"])
    first = next(iter(seeds.values()))
    variants = list(dict.fromkeys(name for result in seeds.values() for name in result["runs"]))
    summary: dict[str, Any] = {"seeds": sorted(seeds), "settings": {k: v for k, v in first["settings"].items() if k != "seed"},
                               "device": first["device"], "teacher_perplexity": first["teacher_perplexity"],
                               "warm_start": {seed: r.get("warm_start") for seed, r in sorted(seeds.items())},
                               "variants": {}}
    rows = []
    for name in variants:
        runs = {seed: result["runs"][name] for seed, result in sorted(seeds.items()) if name in result["runs"]}
        entry = {"seeds": list(runs), "perplexity": [r["perplexity"] for r in runs.values()],
                 "text_perplexity": [r.get("text_perplexity") for r in runs.values()],
                 "held_out_kl": [r["held_out_kl"] for r in runs.values()]}
        wins = [seed for seed, run in runs.items() if "no_teacher" in seeds[seed]["runs"] and name != "no_teacher"
                and run["perplexity"] < seeds[seed]["runs"]["no_teacher"]["perplexity"]
                and run["held_out_kl"] < seeds[seed]["runs"]["no_teacher"]["held_out_kl"]]
        entry["beats_no_teacher_on_both"] = wins
        ppl, ppl_std = mean_std(entry["perplexity"])
        kl, kl_std = mean_std(entry["held_out_kl"])
        summary["variants"][name] = entry
        text = "–" if None in entry["text_perplexity"] else "{:.1f} ± {:.1f}".format(*mean_std(entry["text_perplexity"]))
        rows.append([name, str(len(runs)), f"{ppl:.1f} ± {ppl_std:.1f}", text, f"{kl:.3f} ± {kl_std:.3f}",
                     "–" if name == "no_teacher" else f"{len(wins)} of {len(runs)}"])
    lines = [f"Seeds {', '.join(map(str, sorted(seeds)))}; teacher perplexity {first['teacher_perplexity']:.1f}; "
             f"{summary['settings']}; {first['device']}.", "",
             markdown_table(["variant", "seeds", "test ppl", "text ppl", "held-out KL", "beats no-teacher on both"], rows)]
    starts = [result["warm_start"]["after"] for result in seeds.values() if result.get("warm_start")]
    if starts:  # one student; the held-out continuations differ by seed
        kl, kl_std = mean_std([start["held_out_kl"] for start in starts])
        start = next((s for s in starts if "text_perplexity" in s), starts[0])
        lines += ["", f"The warm-started student every variant starts from: test ppl {start['perplexity']:.1f} "
                      f"(text ppl {text_ppl(start)}), "
                      f"held-out KL {kl:.3f} ± {kl_std:.3f}."]
    return summary, "\n".join(lines)


def main() -> None:
    options = parse()
    if options.summarize:
        summary, text = summarize(options.summarize)
        write_results(options.output, summary, text)
        print(text)
        return
    quiet_libraries()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    work = Workload(options)
    results: dict[str, Any] = {
        "settings": {k: getattr(options, k) for k in ("layers", "steps", "batch", "prompt_words", "completion_tokens",
                                                      "top_k", "learning_rate", "lr_scheduler_type", "warmup_steps",
                                                      "eval_tokens", "kl_prompts", "warm_start_steps", "seed")},
        "device": f"{cpu_name()}; {torch.get_num_threads()} threads" + (
            f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "teacher_perplexity": work.teacher_perplexity, "teacher_text_perplexity": work.teacher_text_perplexity,
        "markup_share": work.markup_share, "runs": {}}
    if work.warm_start:
        results["warm_start"] = work.warm_start
    cache = None
    if set(CACHED) & set(options.variants):
        cache = os.path.join(os.path.dirname(os.path.abspath(options.output)), "lm_teacher_cache")
        results["cache_build_seconds"] = in_child(build_topk_cache, work, cache)["seconds"]
    results["floor"] = in_child(on_policy_floor, work)
    print("floor", results["floor"], flush=True)
    for name in options.variants:
        results["runs"][name] = in_child(run_variant, name, work, cache)
        run = results["runs"][name]
        print(f"{name}: ppl {run['perplexity']:.1f} text ppl {run['text_perplexity']:.1f} KL {run['held_out_kl']:.3f} "
              f"{run['step_seconds_median']:.2f} s/step", flush=True)
        write_results(options.output, results, markdown(results))
    write_results(options.output, results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
