"""The `hfkd` console script: the recipes' code paths behind one command.

    hfkd distill  --config C.yaml [--flag value ...]   (task from the config's `task` key)
    hfkd finetune --config C.yaml [--flag value ...]
    hfkd cache-teacher --config C.yaml [--flag value ...]   (teacher logits of the train split, or
                                   their top-k with --teacher_cache_top_k K, -> teacher_cache_dir, read by `hfkd distill`)
    hfkd mutual   --config C.yaml --peer_model_name_or_path PEER [...] [--train_teacher_alongside]
    hfkd born-again --config C.yaml --generations N [--flag value ...]
    hfkd report   --teacher PATH --student PATH [--student PATH ...] (--config C.yaml | --dataset ...)
    hfkd convert-gguf --gguf_file F.gguf --output_dir DIR   (a GGUF causal LM -> a plain safetensors folder)
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
COMMANDS = (*RECIPE_COMMANDS, "report", "convert-gguf")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = argv[0], argv[1:]
    if command == "report":
        from hfkd.app.report_cli import main as report_main

        report_main(rest)
        return
    if command == "convert-gguf":
        from hfkd.app.gguf_cli import main as convert_main

        convert_main(rest)
        return
    from hfkd.app.recipes import finish_process
    from hfkd.app.recipes import main as run_recipe

    module, function, config_module, config_class = RECIPE_COMMANDS[command]
    run_recipe(getattr(import_module(module), function), rest,
               config_class=getattr(import_module(config_module), config_class))
    finish_process()


if __name__ == "__main__":
    main()
