"""The `hfkd` console script: the recipes' code paths behind one command.

    hfkd distill  --config C.yaml [--flag value ...]   (task from the config's `task` key)
    hfkd finetune --config C.yaml [--flag value ...]
    hfkd cache-teacher --config C.yaml [--flag value ...]   (teacher logits of the train split, or
                                   their top-k with --teacher_cache_top_k K, -> teacher_cache_dir, read by `hfkd distill`)
    hfkd mutual   --config C.yaml --peer_model_name_or_path PEER [...] [--train_teacher_alongside]
    hfkd born-again --config C.yaml --generations N [--flag value ...]
    hfkd report   --teacher PATH --student PATH [--student PATH ...] [--artifact NAME=PATH ...] (--config C.yaml | --dataset ...)
    hfkd export   --model DIR --format onnx|torch [--quantize int8] --output_dir OUT [--config C.yaml | --texts F]
                                   (checked against the PyTorch model; needs the `export` extra)
    hfkd trim-vocab --model DIR --texts FILE_OR_CONFIG [...] --output_dir OUT [--eval_texts ...]
                                   (keep only the tokens the texts use: a smaller embedding, same outputs on them)
    hfkd predict  --model OUT --text "..." [--text ...] [--file F]   (labels and probabilities, ONNX Runtime)
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Sequence

# command -> (module, recipe function, module of its config class, config class); imported on use.
RECIPE_COMMANDS = {
    "distill": ("hfkd.app.recipes", "run_distillation", "hfkd.config", "DistillationConfig"),
    "finetune": ("hfkd.app.recipes", "run_finetune", "transformers", "TrainingArguments"),
    "cache-teacher": ("hfkd.app.recipes", "run_cache_teacher", "hfkd.config", "DistillationConfig"),
    "mutual": ("hfkd.app.recipes", "run_mutual_learning", "hfkd.trainers.mutual", "MutualDistillationConfig"),
    "born-again": ("hfkd.app.born_again", "run_born_again", "hfkd.app.born_again", "BornAgainConfig"),
}
# commands with their own argparse parser: command -> (module, main(argv)).
TOOL_COMMANDS = {
    "report": ("hfkd.app.report_cli", "main"),
    "export": ("hfkd.app.export_cli", "export_main"),
    "predict": ("hfkd.app.export_cli", "predict_main"),
    "trim-vocab": ("hfkd.app.trim_vocab", "main"),
}
COMMANDS = (*RECIPE_COMMANDS, *TOOL_COMMANDS)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = argv[0], argv[1:]
    if command in TOOL_COMMANDS:
        module, function = TOOL_COMMANDS[command]
        getattr(import_module(module), function)(rest)
        return
    from hfkd.app.recipes import finish_process
    from hfkd.app.recipes import main as run_recipe

    module, function, config_module, config_class = RECIPE_COMMANDS[command]
    run_recipe(getattr(import_module(module), function), rest,
               config_class=getattr(import_module(config_module), config_class))
    finish_process()


if __name__ == "__main__":
    main()
