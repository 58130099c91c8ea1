"""Two processes judge an output_dir whose final save a kill interrupted (for test_output_dir_multiprocess.py)."""

import json
import os
import sys

from hfkd.app.arguments import ModelArguments
from hfkd.app.recipes import check_output_dir, finish_process
from hfkd.config import DistillationConfig

out, report = sys.argv[1], sys.argv[2]
args = DistillationConfig(output_dir=out, report_to=[])
try:
    check_output_dir(args, ModelArguments())
    outcome = "accepted"
except ValueError as error:
    outcome = "refused: " + str(error).split(";")[0]
with open(os.path.join(report, f"rank{args.process_index}.json"), "w") as handle:
    json.dump({"outcome": outcome, "world_size": args.world_size}, handle)
finish_process()
