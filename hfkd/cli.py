"""The `hfkd` console script: the recipes' code paths behind one command.

    hfkd distill  --config C.yaml [--flag value ...]   (task from the config's `task` key)
    hfkd finetune --config C.yaml [--flag value ...]
    hfkd cache-teacher --config C.yaml [--flag value ...]   (teacher logits of the train split, or
                                   their top-k with --teacher_cache_top_k K, -> teacher_cache_dir, read by `hfkd distill`)
    hfkd report   --teacher PATH --student PATH [--student PATH ...] (--config C.yaml | --dataset ...)
"""

from __future__ import annotations

import sys
from typing import Sequence

COMMANDS = ("distill", "finetune", "cache-teacher", "report")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = argv[0], argv[1:]
    if command == "distill":
        from hfkd.recipes import main as run_recipe
        from hfkd.recipes import run_distillation

        run_recipe(run_distillation, rest)
    elif command == "finetune":
        from transformers import TrainingArguments

        from hfkd.recipes import main as run_recipe
        from hfkd.recipes import run_finetune

        run_recipe(run_finetune, rest, config_class=TrainingArguments)
    elif command == "cache-teacher":
        from hfkd.recipes import main as run_recipe
        from hfkd.recipes import run_cache_teacher

        run_recipe(run_cache_teacher, rest)
    else:
        from hfkd.report_cli import main as report_main

        report_main(rest)
        return
    from hfkd.recipes import finish_process

    finish_process()


if __name__ == "__main__":
    main()
