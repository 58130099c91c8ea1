"""`hfkd trim-vocab`: a copy of a saved model and its tokenizer that keeps only the tokens some texts use.

    hfkd trim-vocab --model outputs/sst2/student_l3 --texts ../shared/data/sst2/train.tsv \\
        --eval_texts ../shared/data/sst2/dev.tsv --output_dir outputs/sst2/student_l3_trimmed

--texts and --eval_texts each take one or more sources: a text file (one text per line), a .csv, .tsv
(GLUE dialect), .json/.jsonl or .parquet file (the text column found as the recipes find it, or
--text_column; sentence pairs give both columns), a data folder, or a recipe config (its training
split; its validation split for --eval_texts). On the --texts the trimmed model gives the same
tokens and outputs; on the --eval_texts it prints how many tokens changed or became unknown.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, Sequence

from hfkd.io import recover, staged
from hfkd.app.arguments import one_line_errors
from hfkd.models import HfkdError, resolve_model_path

REPORT_FILE = "trim_report.json"
_CONFIG_SUFFIXES = (".yaml", ".yml")


class OutputDirError(HfkdError, ValueError):
    """An output folder hfkd will not write into."""


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hfkd trim-vocab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Saved model folder (with its tokenizer), or an offline name.")
    parser.add_argument("--texts", nargs="+", required=True, help="Where the texts whose tokens to keep come from.")
    parser.add_argument("--eval_texts", nargs="+", default=[], help="Other texts: count what trimming changes there.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--text_column", help="Text column of table files (default: auto-detected).")
    parser.add_argument("--text_pair_column", help="Second text column of sentence pairs (default: auto-detected).")
    parser.add_argument("--keep_alphabet", action="store_true",
                        help="Also keep every single-character token: unseen words split instead of becoming unknown.")
    parser.add_argument("--keep_token", action="append", default=[], help="A token to keep as well (repeatable).")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="Replace an earlier hfkd trim-vocab output in --output_dir.")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks instead of one-line errors.")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> dict[str, Any]:
    options = parse(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    with one_line_errors(options.debug):
        return run(options)


def run(options: argparse.Namespace) -> dict[str, Any]:
    """Trim, write model + tokenizer + trim_report.json into --output_dir as one set, print the numbers."""
    from transformers import AutoTokenizer

    from hfkd.deploy.vocabulary import trim_vocabulary

    check_output_dir(options.output_dir, options.overwrite_output_dir)
    texts = read_texts(options.texts, "train", options)
    eval_texts = read_texts(options.eval_texts, "validation", options) if options.eval_texts else []
    path = resolve_model_path(options.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model, trimmed, report = trim_vocabulary(load_saved_model(path), tokenizer, texts,
                                             keep_tokens=options.keep_token, keep_alphabet=options.keep_alphabet)
    result = {"model": options.model, "text_sources": options.texts, "eval_sources": options.eval_texts,
              **report.to_dict()}
    lines = [report.summary()]
    if eval_texts:
        change = report.compare(eval_texts)
        result["eval"] = change.to_dict()
        lines.append(f"eval texts: {change.texts:,} ({change.tokens:,} tokens): {100 * change.changed_share:.2f}% "
                     f"of the tokens changed, {100 * change.unknown_share:.2f}% became unknown, "
                     f"{change.changed_texts:,} texts tokenized differently")
    with staged(options.output_dir) as folder:
        model.save_pretrained(folder)
        trimmed.save_pretrained(folder)
        with open(os.path.join(folder, REPORT_FILE), "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    print("\n".join(lines) + f"\nwrote {options.output_dir}")
    return result


def check_output_dir(folder: str, overwrite: bool) -> None:
    """Write into an empty or new folder, or over an earlier trim-vocab output when asked; nothing else."""
    if not os.path.isdir(folder):
        return
    recover(folder)  # finish or drop a write a kill interrupted, before judging what the folder holds
    entries = os.listdir(folder)
    if entries and REPORT_FILE not in entries:
        raise OutputDirError(f"output_dir {folder} holds files hfkd trim-vocab did not write "
                             f"({', '.join(sorted(entries)[:3])}): choose another output_dir")
    if entries and not overwrite:
        raise OutputDirError(f"output_dir {folder} already holds a trimmed model: pass --overwrite_output_dir "
                             "to replace it, or choose another output_dir")


def read_texts(sources: Sequence[str], split: str, options: argparse.Namespace) -> list[str]:
    """The texts of every source: a file's rows, a data folder's or a recipe config's `split`."""
    from hfkd.app.arguments import load_yaml_config
    from hfkd.app.task_data import DataArguments, DataError, load_raw_datasets, texts_of

    texts = []
    columns = {"text_column": options.text_column, "text_pair_column": options.text_pair_column}
    columns = {key: value for key, value in columns.items() if value is not None}
    for source in sources:
        wanted = split
        if source.endswith(_CONFIG_SUFFIXES):
            fields = set(DataArguments.__dataclass_fields__)
            data = DataArguments(**{**{k: v for k, v in load_yaml_config(source).items() if k in fields}, **columns})
        elif os.path.isdir(source):
            data = DataArguments(dataset_name=source, **columns)
        elif os.path.isfile(source):
            data, wanted = DataArguments(train_file=source, **columns), "train"
        else:
            raise DataError(f"text source {source} is neither a file, a data folder nor a recipe config (.yaml)")
        raw = load_raw_datasets(data)
        if wanted not in raw:
            raise DataError(f"{source} has no {wanted} split (splits: {', '.join(raw)}): point at the file itself")
        texts.extend(texts_of(raw[wanted], wanted, data))
    return texts


def load_saved_model(path: str) -> Any:
    """The model as it was saved: the class its config names (a task head stays that head), else AutoModel."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    architecture = (config.architectures or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    return (model_class or transformers.AutoModel).from_pretrained(path)
