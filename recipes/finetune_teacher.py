"""Fine-tune a teacher on a task (distillation needs a task-trained teacher first).

    python recipes/finetune_teacher.py --config recipes/configs/sst2_teacher.yaml
    accelerate launch recipes/finetune_teacher.py --config recipes/configs/sst2_teacher.yaml
"""

import sys

from transformers import TrainingArguments

from hfkd.app.recipes import finish_process, main, run_finetune

if __name__ == "__main__":
    main(run_finetune, sys.argv[1:], config_class=TrainingArguments)
    finish_process()
