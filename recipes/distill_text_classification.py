"""Distill a teacher into a student for sequence classification.

    python recipes/distill_text_classification.py --config recipes/configs/<config>.yaml [--flag value ...]
    accelerate launch recipes/distill_text_classification.py --config recipes/configs/<config>.yaml
"""

import sys

from hfkd.app.recipes import finish_process, main, run_distillation

if __name__ == "__main__":
    main(run_distillation, sys.argv[1:] + ["--task", "sequence_classification"])
    finish_process()
