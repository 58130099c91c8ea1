"""Born-again self-distillation: generation k is distilled from generation k-1 (generation 0: the teacher).

    python recipes/born_again.py --config recipes/configs/<config>.yaml --generations 3 [--flag value ...]

Generation k lands in output_dir/gen_k; output_dir/born_again.{json,md} compares the generations.
"""

import sys

from hfkd.app.born_again import BornAgainConfig, run_born_again
from hfkd.app.recipes import finish_process, main

if __name__ == "__main__":
    main(run_born_again, sys.argv[1:], config_class=BornAgainConfig)
    finish_process()
