"""The `hfkd` console script: the recipes' code paths behind one command.

    hfkd distill  --config C.yaml [--flag value ...]   (task from the config's `task` key)
    hfkd finetune --config C.yaml [--flag value ...]
    hfkd cache-teacher --config C.yaml [--flag value ...]   (teacher logits of the train split, or
                                   their top-k with --teacher_cache_top_k K, -> teacher_cache_dir, read by `hfkd distill`)
    hfkd mutual   --config C.yaml --peer_model_name_or_path PEER [...] [--train_teacher_alongside]
    hfkd born-again --config C.yaml --generations N [--flag value ...]
    hfkd report   --teacher PATH --student PATH [--student PATH ...] (--config C.yaml | --dataset ...)
    hfkd trim-vocab --model DIR --texts FILE_OR_CONFIG [...] --output_dir OUT [--eval_texts ...]
                                   (keep only the tokens the texts use: a smaller embedding, same outputs on them)
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
# command -> (module, function taking the remaining arguments); imported on use.
STANDALONE_COMMANDS = {
    "report": ("hfkd.app.report_cli", "main"),
    "trim-vocab": ("hfkd.app.trim_vocab", "main"),
}
COMMANDS = (*RECIPE_COMMANDS, *STANDALONE_COMMANDS)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = argv[0], argv[1:]
    if command in STANDALONE_COMMANDS:
        module, function = STANDALONE_COMMANDS[command]
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
