"""How much vocabulary trimming saves on SST-2, and what it changes.

    python scripts/benchmark_trim_vocab.py [--teacher outputs/sst2/teacher ...] [--output trim.json]
    python scripts/benchmark_trim_vocab.py --teacher outputs/sst2/teacher \
        --extra_texts ../shared/data/wikitext2/valid.txt --models teacher,copied --alphabet no

Trims the MiniLM-L6 vocabulary (30,522 WordPiece tokens) to the tokens of the SST-2 training
sentences, with and without `keep_alphabet`, for the 6-layer teacher (22.7M), the 3-layer student
`create_student` copies from it (layers 0, 2, 4) and a compact 3-layer × 192 student; prints tokens
kept, parameters and bytes on disk before and after, and the share of SST-2 dev tokens the trimmed
tokenizer changes or makes unknown. For each fine-tuned `--teacher` it also scores dev accuracy
before and after trimming, and checks train sentences (which the trimmed vocabulary covers) for
identical logits. Without `--teacher` the pretrained MiniLM (untrained head) gives the sizes only.
`--extra_texts` keeps the tokens of general-domain text too, to see what that buys on dev.
Nothing here is timed: it can run `nice`d next to a timing benchmark without disturbing it.
"""

from __future__ import annotations

import argparse
import os
import random

from benchmarking import PRETRAINED, SST2_DIR, STUDENT_LAYERS, cpu_name, quiet_libraries, write_results

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from hfkd import create_student, trim_vocabulary  # noqa: E402
from hfkd.app.task_data import DataArguments, load_raw_datasets, texts_of  # noqa: E402
from hfkd.models import resolve_model_path  # noqa: E402
from hfkd.report.measure import safetensors_size  # noqa: E402
from hfkd.report.render import markdown_table  # noqa: E402


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", action="append", default=[], help="Fine-tuned SST-2 classifier (repeatable).")
    parser.add_argument("--data_dir", default=SST2_DIR)
    parser.add_argument("--check_train", type=int, default=2000, help="Train sentences checked for equal logits.")
    parser.add_argument("--extra_texts", nargs="*", default=[],
                        help="General-domain text files (one text per line) kept beside the SST-2 train sentences.")
    parser.add_argument("--models", default=",".join(MODELS), help=f"Subset of {','.join(MODELS)} for the sizes.")
    parser.add_argument("--alphabet", default="no,yes", help="keep_alphabet settings for the sizes: no, yes or both.")
    parser.add_argument("--output", default=None, help="Write JSON here (and Markdown beside it).")
    return parser.parse_args()


MODELS = ("teacher", "copied", "compact")


def split_texts(data_dir: str, split_file: str) -> list[str]:
    data = DataArguments(train_file=os.path.join(data_dir, split_file), text_column="sentence")
    return texts_of(load_raw_datasets(data)["train"], "train", data)


def sizes(teacher: torch.nn.Module, names: list[str]) -> dict[str, torch.nn.Module]:
    """The models whose embedding trimming shrinks: the teacher, the copied 3-layer and a compact student."""
    build = {"teacher": ("teacher (6 × 384)", lambda: teacher),
             "copied": ("student, copied layers 0,2,4 (3 × 384)",
                        lambda: create_student(teacher, layer_indices=STUDENT_LAYERS)),
             "compact": ("student, compact (3 × 192)",
                         lambda: create_student(teacher, num_layers=3, hidden_size=192, intermediate_size=768,
                                                num_attention_heads=12))}
    return {build[name][0]: build[name][1]() for name in names}


def logits(model: torch.nn.Module, tokenizer, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=128,
                              return_tensors="pt")
            chunks.append(model(**batch).logits)
    return torch.cat(chunks)


def size_rows(tokenizer, train: list[str], dev: list[str], models: list[str], alphabet: list[bool]) -> list[dict]:
    rows = []
    for keep_alphabet in alphabet:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(PRETRAINED), num_labels=2)
        for name, original in sizes(model, models).items():  # the students are made before the teacher is trimmed
            before = safetensors_size(original)
            trimmed, _, report = trim_vocabulary(original, tokenizer, train, keep_alphabet=keep_alphabet)
            change = report.compare(dev)
            numbers = {key: value for key, value in report.to_dict().items() if key != "kept_ids"}
            rows.append({"model": name, "keep_alphabet": keep_alphabet, **numbers,
                         "disk_bytes_before": before, "disk_bytes_after": safetensors_size(trimmed),
                         "dev": change.to_dict()})
            print(f"{name}, keep_alphabet={keep_alphabet}: {report.vocab_after:,} tokens kept, "
                  f"{report.parameters_before / 1e6:.2f}M -> {report.parameters_after / 1e6:.2f}M params, "
                  f"dev tokens changed {100 * change.changed_share:.2f}%, unknown {100 * change.unknown_share:.3f}%",
                  flush=True)
    return rows


def accuracy_row(path: str, train: list[str], sst2_train: list[str], dev: list[str], dev_labels: torch.Tensor,
                 check_train: int) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    sample = random.Random(0).sample(sst2_train, min(check_train, len(sst2_train)))
    dev_before, train_before = logits(model, tokenizer, dev), logits(model, tokenizer, sample)
    model, trimmed, report = trim_vocabulary(model, tokenizer, train)
    dev_after, train_after = logits(model, trimmed, dev), logits(model, trimmed, sample)
    row = {"teacher": path, "vocab_after": report.vocab_after,
           "dev_accuracy_before": (dev_before.argmax(-1) == dev_labels).float().mean().item(),
           "dev_accuracy_after": (dev_after.argmax(-1) == dev_labels).float().mean().item(),
           "dev_predictions_changed": int((dev_before.argmax(-1) != dev_after.argmax(-1)).sum()),
           "train_checked": len(sample), "train_max_abs_logit_difference": (train_before - train_after).abs().max().item(),
           "train_predictions_changed": int((train_before.argmax(-1) != train_after.argmax(-1)).sum())}
    print(f"{path}: dev accuracy {100 * row['dev_accuracy_before']:.2f}% -> {100 * row['dev_accuracy_after']:.2f}% "
          f"({row['dev_predictions_changed']} predictions changed); {len(sample)} train sentences: max |Δlogit| "
          f"{row['train_max_abs_logit_difference']:.3g}", flush=True)
    return row


def markdown(sizes_: list[dict], accuracies: list[dict]) -> str:
    table = markdown_table(
        ["model", "keep_alphabet", "tokens kept", "params before → after", "disk MB before → after",
         "dev tokens changed", "dev tokens unknown", "dev sentences changed"],
        [[r["model"], "yes" if r["keep_alphabet"] else "no", f"{r['vocab_after']:,} / {r['vocab_before']:,}",
          f"{r['parameters_before'] / 1e6:.2f}M → {r['parameters_after'] / 1e6:.2f}M "
          f"(−{100 * r['parameters_saved'] / r['parameters_before']:.1f}%)",
          f"{r['disk_bytes_before'] / 1e6:.1f} → {r['disk_bytes_after'] / 1e6:.1f}",
          f"{100 * r['dev']['changed_share']:.2f}%", f"{100 * r['dev']['unknown_share']:.3f}%",
          f"{r['dev']['changed_texts']} / {r['dev']['texts']}"] for r in sizes_])
    if accuracies:
        table += "\n\n" + markdown_table(
            ["teacher", "dev accuracy before", "after trimming", "dev predictions changed",
             "train sentences: max |Δlogit|", "train predictions changed"],
            [[a["teacher"], f"{100 * a['dev_accuracy_before']:.2f}%", f"{100 * a['dev_accuracy_after']:.2f}%",
              str(a["dev_predictions_changed"]), f"{a['train_max_abs_logit_difference']:.3g} ({a['train_checked']:,})",
              str(a["train_predictions_changed"])] for a in accuracies])
    return table


def main() -> None:
    options = parse()
    quiet_libraries()
    torch.manual_seed(0)
    train = split_texts(options.data_dir, "train.tsv")
    sample = list(train)  # logits are checked on SST-2 train sentences, also when extra texts are kept
    for path in options.extra_texts:
        with open(path, encoding="utf-8") as handle:
            train += [line.strip() for line in handle if line.strip()]
    dev = split_texts(options.data_dir, "dev.tsv")
    dev_data = load_raw_datasets(DataArguments(train_file=os.path.join(options.data_dir, "dev.tsv")))["train"]
    dev_labels = torch.tensor([int(label) for label in dev_data["label"]])
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(PRETRAINED))
    print(f"SST-2: {len(train):,} train sentences, {len(dev):,} dev sentences; threads {torch.get_num_threads()}",
          flush=True)
    alphabet = [{"no": False, "yes": True}[value] for value in options.alphabet.split(",")]
    size_results = size_rows(tokenizer, train, dev, options.models.split(","), alphabet)
    accuracies = [accuracy_row(path, train, sample, dev, dev_labels, options.check_train) for path in options.teacher]
    table = markdown(size_results, accuracies)
    print(table)
    if options.output:
        write_results(options.output, {"cpu": cpu_name(), "threads": torch.get_num_threads(),
                                       "extra_texts": options.extra_texts, "texts": len(train), "sizes": size_results,
                                       "accuracy": accuracies}, table)


if __name__ == "__main__":
    main()
