"""Prompt datasets for on-policy / sequence-level causal-LM distillation (`hfkd distill --task causal_lm`).

Prompts come from any source `load_raw_datasets` reads: a text file (one prompt per line, with
`--prompt_column text`), JSON lines (`prompt` [+ `completion`], or chat `messages`), CSV, or a Hub
dataset. Rows become `prompt_input_ids` (+ `completion_input_ids`) through
`hfkd.trainers.on_policy.tokenize_prompts`, which the trainer batches and generates from. Plain-text
prompts can carry their own reference completions: with `completion_length` each text is cut after
`max_seq_length` tokens and the next tokens are its completion.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets

from hfkd.app.task_data import DataArguments, DataError, _subsample
from hfkd.trainers.on_policy import COMPLETION_IDS, PROMPT_IDS, tokenize_prompts

logger = logging.getLogger(__name__)


def is_prompt_data(raw: datasets.DatasetDict, data_args: DataArguments) -> bool:
    """Whether the data are prompts: `prompt_column` is set, or a split has a `prompt`/`messages` column."""
    return data_args.prompt_column is not None or any(
        {"prompt", "messages"} & set(split.column_names) for split in raw.values())


def prepare_prompt_datasets(raw: datasets.DatasetDict, tokenizer: Any, data_args: DataArguments) -> dict[str, Any]:
    """Each split's prompts (their first `max_seq_length` tokens) and reference completions, tokenized,
    subsampled like other data (`max_train_samples`, `max_eval_samples`); an evaluation split needs completions."""
    standard = datasets.DatasetDict({split: _standard_columns(data, split, data_args) for split, data in raw.items()})
    if data_args.completion_length is not None:
        standard = datasets.DatasetDict({split: _cut_completions(data, split, tokenizer, data_args)
                                         for split, data in standard.items()})
    prepared = {split: tokenize_prompts(data, tokenizer, max_prompt_length=data_args.max_seq_length)
                for split, data in _subsample(standard, data_args).items()}
    validation = prepared.get("validation")
    if validation is not None and COMPLETION_IDS not in validation.column_names:
        logger.warning("The validation prompts have no completions, so there is no loss to evaluate: skipping eval.")
        prepared.pop("validation")
    return prepared


def _cut_completions(dataset: datasets.Dataset, split: str, tokenizer: Any, data_args: DataArguments) -> datasets.Dataset:
    """Plain-text prompts -> `prompt_input_ids` (the first `max_seq_length` tokens) and `completion_input_ids`
    (the next `completion_length`; no EOS: the text goes on); rows without a completion token are dropped."""
    if "completion" in dataset.column_names or "prompt" not in dataset.column_names:
        raise DataError(f"completion_length cuts reference completions from plain-text prompts, and the {split} "
                        f"split has columns {dataset.column_names}: unset completion_length, or give prompts only")
    prompt, completion = data_args.max_seq_length, data_args.completion_length

    def cut(row: dict[str, Any]) -> dict[str, list[int]]:
        ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        return {PROMPT_IDS: ids[:prompt], COMPLETION_IDS: ids[prompt:prompt + completion]}

    cut_rows = dataset.map(cut, remove_columns=dataset.column_names)
    kept = cut_rows.filter(lambda row: len(row[COMPLETION_IDS]) > 0)
    if kept.num_rows < cut_rows.num_rows:
        logger.info("%s: %d of %d texts are at most max_seq_length=%d tokens long (no completion): dropped.",
                    split, cut_rows.num_rows - kept.num_rows, cut_rows.num_rows, prompt)
    if kept.num_rows == 0:
        raise DataError(f"no {split} text is longer than max_seq_length={prompt} tokens, so none has a completion: "
                        "lower max_seq_length")
    return kept


def _standard_columns(dataset: datasets.Dataset, split: str, data_args: DataArguments) -> datasets.Dataset:
    """`prompt_column`/`completion_column` renamed to `prompt`/`completion`, blank prompts (text files) dropped."""
    for given, standard in ((data_args.prompt_column, "prompt"), (data_args.completion_column, "completion")):
        if given is None or given == standard:
            continue
        if given not in dataset.column_names:
            raise DataError(f"the {split} split has no column {given!r} (columns: {dataset.column_names}): "
                            f"set {standard}_column to one of them")
        dataset = dataset.rename_column(given, standard)
    if "prompt" in dataset.column_names:
        dataset = dataset.filter(lambda row: bool(row["prompt"] and row["prompt"].strip()))
    return dataset
