"""Deep mutual learning: the student and its peers (or a teacher trained alongside) learn together.

    python recipes/distill_mutual.py --config recipes/configs/<config>.yaml \
        --peer_model_name_or_path PEER [PEER ...] [--train_teacher_alongside] [--flag value ...]
"""

import sys

from hfkd.trainers.mutual import MutualDistillationConfig
from hfkd.app.recipes import finish_process, main, run_mutual_learning

if __name__ == "__main__":
    main(run_mutual_learning, sys.argv[1:], config_class=MutualDistillationConfig)
    finish_process()
