"""Cheaper teacher forward passes: speed-up and fidelity of each option against the fp32 teacher.

    python scripts/benchmark_teacher.py --teacher outputs/sst2/teacher [--batches 40] [--output teacher.json]

For a fine-tuned SST-2 teacher (`make demo` writes one to outputs/sst2/teacher) and each option of
`hfkd.teacher.fast.speed_up_teacher` — fp32 (reference), bfloat16, int8 dynamic quantization
(CPU only), torch.compile, int8 + compile — this measures:
- forward speed on SST-2 training batches (batch 32, dynamic padding, max 64 tokens, inference
  mode): `--warmup` untimed batches, then `--batches` timed ones; samples/s and speed-up over fp32;
- fidelity on the SST-2 dev set (all 872 sentences): argmax agreement with the fp32 teacher, mean
  KL(fp32 || option) per sentence, max |logit difference|, and the option's own dev accuracy.
Options are measured one after another in the same process, alternating over `--rounds`; the order
rotates between rounds. Prints a Markdown table; `--output` also writes JSON and a `.md` beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

from benchmarking import (  # first: it sets up the environment transformers reads on import
    ROOT, SST2_DIR, forward_times, load_sst2, quiet_libraries, write_results,
)
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hfkd.report.render import markdown_table
from hfkd.teacher.fast import speed_up_teacher, teacher_fidelity

OPTIONS = {
    "fp32": {},
    "bf16": {"dtype": torch.bfloat16},
    "int8": {"quantization": "int8_dynamic"},
    "compile": {"compile": True},
    "int8+compile": {"quantization": "int8_dynamic", "compile": True},
}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=os.path.join(ROOT, "outputs", "sst2", "teacher"))
    parser.add_argument("--data_dir", default=SST2_DIR)
    parser.add_argument("--batches", type=int, default=40, help="Timed forward batches per option and round.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed batches first (compile happens here).")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--options", default=",".join(OPTIONS), help=f"Subset of {','.join(OPTIONS)}.")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", default=None, help="Write JSON here (and Markdown beside it).")
    options = parser.parse_args()
    options.options = [o for o in options.options.split(",") if o]
    unknown = set(options.options) - set(OPTIONS)
    if unknown:
        parser.error(f"unknown options {sorted(unknown)}; choose from {','.join(OPTIONS)}")
    if not os.path.isfile(os.path.join(options.teacher, "config.json")):
        parser.error(f"no teacher in {options.teacher}: run `make demo` first or pass --teacher")
    return options


def batches_of(dataset: Any, collator: Any, batch_size: int) -> list[dict]:
    return list(DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator))


def accuracy(model: torch.nn.Module, batches: list[dict]) -> float:
    correct = total = 0
    with torch.inference_mode():
        for batch in batches:
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            correct += (logits.argmax(-1) == batch["labels"]).sum().item()
            total += len(batch["labels"])
    return correct / total


def main() -> None:
    options = parse()
    torch.set_num_threads(options.threads)
    quiet_libraries()
    tokenizer = AutoTokenizer.from_pretrained(options.teacher)
    collator = DataCollatorWithPadding(tokenizer)
    data = load_sst2(tokenizer, options.data_dir, train_rows=(options.warmup + options.batches) * options.batch_size)
    train, dev = data.train, data.dev
    train_batches = batches_of(train, collator, options.batch_size)
    dev_batches = batches_of(dev, collator, options.batch_size)

    def load() -> torch.nn.Module:
        return AutoModelForSequenceClassification.from_pretrained(options.teacher).eval()

    reference = load()
    models = {name: speed_up_teacher(load(), **OPTIONS[name]) for name in options.options}
    times: dict[str, list[float]] = {name: [] for name in options.options}
    for round_index in range(options.rounds):
        order = options.options[round_index % len(options.options):] + options.options[:round_index % len(options.options)]
        for name in order:
            times[name] += forward_times(models[name], train_batches, options.warmup)["step_seconds"]
            print(f"round {round_index + 1}/{options.rounds} {name}: {statistics.fmean(times[name]):.4f} s/batch",
                  flush=True)
    accepted = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in dev_batches[0]]
    results = {}
    for name in options.options:
        fidelity = teacher_fidelity(reference, models[name], dev_batches, accepted_inputs=accepted,
                                    max_rows=len(dev))
        results[name] = {
            "samples_per_second": round(options.batch_size / statistics.fmean(times[name]), 1),
            "batch_seconds_mean": round(statistics.fmean(times[name]), 4),
            **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in fidelity.items()},
            "dev_accuracy": round(accuracy(models[name], dev_batches), 4),
        }
    base = results.get("fp32", {}).get("samples_per_second")
    for entry in results.values():
        entry["speedup_over_fp32"] = round(entry["samples_per_second"] / base, 3) if base else None
    report = {
        "teacher": options.teacher, "results": results,
        "settings": {"batches": options.batches, "warmup": options.warmup, "rounds": options.rounds,
                     "batch_size": options.batch_size, "threads": options.threads, "torch": torch.__version__,
                     "device": "cpu", "dev_rows": len(dev)},
    }
    table = markdown(report)
    print(table)
    if options.output:
        write_results(options.output, report, table)


def markdown(report: dict) -> str:
    rows = []
    for name, r in report["results"].items():
        speedup = f"{r['speedup_over_fp32']:.2f}x" if r["speedup_over_fp32"] else "–"
        rows.append([name, f"{r['samples_per_second']:.1f}", speedup, f"{r['argmax_agreement']:.2%}",
                     f"{r['mean_kl']:.2e}", f"{r['max_abs_logit_diff']:.3f}", f"{r['dev_accuracy']:.2%}"])
    headers = ["teacher forward", "samples/s", "speed-up vs fp32", "argmax agreement", "mean KL", "max abs Δlogit",
               "dev accuracy"]
    return markdown_table(headers, rows)


if __name__ == "__main__":
    main()
