"""The README's main job: fine-tune a MiniLM-L6 teacher on SST-2, distil a compact student pruned
from it, train the same student without the teacher (its no-teacher twin), export the distilled one
to int8 ONNX, and report all of them measured as they would be deployed.

    python recipes/sst2_main_job.py            # ~10 min on 2 CPU cores: 8,000 labelled sentences
    python recipes/sst2_main_job.py --full     # all 67,349 training sentences labelled (no transfer set)
    python recipes/sst2_main_job.py --full --length_bucketing false --num_train_epochs 2   # longer students
    python recipes/sst2_main_job.py --full --augment_mlm outputs/augment_mlm   # + copies only the teacher labels
    python recipes/sst2_main_job.py --full --crops 1 --length_bucketing false   # + crops only the teacher labels

Any flag this script does not define goes to both students' runs (and to the teacher cache, which
reads the same settings): an `hfkd distill` option overriding the student config, as above.

Another task is configuration only: a folder with GLUE-style train.tsv / dev.tsv and the two configs
naming its columns (MRPC, sentence pairs, is in recipes/configs):

    python recipes/sst2_main_job.py --full --data_dir ../shared/data/mrpc --output_root outputs/mrpc \
        --teacher_config recipes/configs/mrpc_teacher.yaml --student_config recipes/configs/mrpc_minilm_pruned_kd.yaml

and files in another format are named by --train_file / --validation_file (TREC's six question classes):

    python recipes/sst2_main_job.py --full --train_file ../shared/data/trec/train_5500.label \
        --validation_file ../shared/data/trec/TREC_10.label --output_root outputs/trec \
        --teacher_config recipes/configs/trec_teacher.yaml --student_config recipes/configs/trec_minilm_pruned_kd.yaml

Each step is the plain recipe or command with its YAML config (recipes/configs/sst2_teacher.yaml,
recipes/configs/sst2_minilm_pruned_kd.yaml); this script only chains them:

1. `hfkd finetune`: the teacher, on the labelled sentences.
2. `hfkd cache-teacher`: the teacher labels, once, the labelled sentences and a transfer set: the
   rest of the training split given without its labels (a user's pile of unlabeled in-domain text),
   with --augment_mlm TinyBERT-style copies of the labelled rows, and with --crops crops of them
   (runs of at least half of a sentence's words), also without labels.
3. `hfkd distill` from that cache: the teacher pruned to 4 layers x 192 by activation importance
   (Minitron), then 0.2 CE on the labelled rows + 1.0 KD (T = 2) on every row. This is where
   distillation earns its keep: a few thousand labels and a larger pile of unlabeled text. Its last
   fifth trains int8-aware (`qat_start 0.8`), since step 6 ships it as int8.
4. `hfkd distill` again, labels only (CE), for exactly as many optimizer steps: the same pruned
   start, no teacher, no transfer set (it has no labels). The gap between 3 and 4 is what the
   teacher bought.
5. `hfkd trim-vocab`: a copy of the distilled student that keeps only the tokens the training
   sentences use (smaller embeddings; unseen words split into known pieces); with --trim_twin a copy
   of the twin too, so that the trimmed student is compared with its own twin.
6. `hfkd export --format onnx --quantize int8` of the distilled student and the trimmed copies: the
   deployable artifacts, each checked against its source.
7. `hfkd report`: size, bytes, score measured by running each artifact, latency, DM by parameters
   and by bytes, and the plot.
"""

from __future__ import annotations

import argparse
import json
import os

from transformers import AutoConfig, TrainingArguments

from hfkd.app.arguments import load_yaml_config, one_line_errors, parse_args
from hfkd.app.export_cli import export_main
from hfkd.app.recipes import ModelArguments, finish_process, run_cache_teacher, run_distillation, run_finetune
from hfkd.app.recipes import main as run_recipe
from hfkd.app.report_cli import main as report_main
from hfkd.app.report_cli import summarize
from hfkd.app.task_data import DataArguments
from hfkd.app.trim_vocab import main as trim_main
from hfkd.config import DistillationConfig
from hfkd.models import resolve_model_path
from hfkd.objective.terms import TERMS

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "configs")
TEACHER_CONFIG = os.path.join(CONFIGS, "sst2_teacher.yaml")
STUDENT_CONFIG = os.path.join(CONFIGS, "sst2_minilm_pruned_kd.yaml")
QAT_START = 0.8


def parse() -> tuple[argparse.Namespace, list[str]]:
    # No abbreviations: a flag for the students reaches them whole, never read as a shortened flag of this script.
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--full", action="store_true", help="Label the whole train split (no transfer set).")
    parser.add_argument("--train_samples", type=int, default=8000, help="Labelled training rows when not --full.")
    parser.add_argument("--transfer_samples", type=int, default=None,
                        help="Cap on the training rows the distilled student also sees without their labels "
                             "(default: all the others; not --full).")
    parser.add_argument("--augment_mlm", default=None,
                        help="A masked LM (e.g. `hfkd finetune --task masked_lm` on the training text): the distilled "
                             "student also trains on copies of the labelled rows with words swapped for its guesses "
                             "(TinyBERT), labelled by the teacher alone; the twin, having no teacher, does not.")
    parser.add_argument("--augment_copies", type=int, default=1,
                        help="Augmented copies of each labelled row, with --augment_mlm (default 1).")
    parser.add_argument("--crops", type=float, default=0.0,
                        help="Crops of the labelled sentences per labelled row (unlabeled_crops: runs of at least "
                             "half of a sentence's words) that the distilled student also trains on, labelled by "
                             "the teacher alone; the twin, having no teacher, does not. Default 0: none.")
    parser.add_argument("--trim_twin", action="store_true",
                        help="Also trim the twin's vocabulary and export it to int8 ONNX, reported beside the "
                             "distilled student's (the trimmed student's own twin; about a minute more).")
    parser.add_argument("--data_dir", default=os.path.join(HERE, "..", "..", "shared", "data", "sst2"),
                        help="Folder with train.tsv and dev.tsv (GLUE format; SST-2 by default).")
    parser.add_argument("--train_file", default=None,
                        help="The training file, when it is not data_dir/train.tsv (any format `hfkd distill` reads).")
    parser.add_argument("--validation_file", default=None,
                        help="The evaluation file, when it is not data_dir/dev.tsv.")
    parser.add_argument("--teacher_config", default=TEACHER_CONFIG,
                        help="The teacher's fine-tuning config (hfkd finetune): model, columns, schedule.")
    parser.add_argument("--student_config", default=STUDENT_CONFIG,
                        help="The student's config (hfkd distill): its shape, objective, columns and schedule.")
    parser.add_argument("--output_root", default="outputs/sst2")
    parser.add_argument("--skip_report", action="store_true", help="Skip the latency/DM report at the end.")
    parser.add_argument("--reuse_teacher", action="store_true",
                        help="Skip fine-tuning when the teacher folder already holds a finished teacher.")
    parser.add_argument("--teacher_dir", default=None,
                        help="The teacher's folder (default: output_root/teacher). A teacher `hfkd finetune` finished "
                             "there is used as it is (several runs can share one); a new or empty folder gets one.")
    parser.add_argument("--cache_dir", default=None,
                        help="The teacher cache's folder (default: output_root/teacher_cache); a complete cache of "
                             "the same teacher, rows and settings is reused as it is.")
    parser.add_argument("--seed", type=int, default=None,
                        help="Seed of the two students' runs (pruning sample, head, batch order; default: the "
                             "student config's). The teacher keeps its config's seed.")
    options, student_flags = parser.parse_known_args()
    if not options.crops >= 0:
        parser.error(f"--crops {options.crops}: give a number >= 0 (crops per labelled row; 0 for none).")
    if options.augment_copies < 1:
        parser.error(f"--augment_copies {options.augment_copies}: give 1 or more (leave out --augment_mlm for none).")
    stray = [flag for flag in student_flags[:1] if not flag.startswith("--")]
    if stray:
        parser.error(f"unexpected argument {stray[0]!r}: flags for the students' runs are --name value pairs.")
    return options, student_flags


def check_masked_lm(name_or_path: str) -> None:
    """`--augment_mlm` names a masked LM that loads: a local folder, or a Hub name within reach."""
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    except OSError:
        raise SystemExit(f"--augment_mlm {name_or_path}: no such folder, and no Hub checkpoint within reach: give the "
                         "folder of a masked LM (`hfkd finetune --task masked_lm ... --output_dir DIR`).") from None
    if not any(name.endswith("ForMaskedLM") for name in config.architectures or []):
        raise SystemExit(f"--augment_mlm {name_or_path}: a {', '.join(config.architectures or ['base model'])}, "
                         "not a masked LM: give one with its masked-LM head (`hfkd finetune --task masked_lm`).")


def teacher_free() -> list[str]:
    """Labels only: CE at weight 1 and every built-in term that compares with the teacher (soft logits,
    hidden states, attention maps, relations) at 0, whatever the config or the forwarded flags gave."""
    teacher_terms = [term for term in TERMS.values() if term.builtin and term.needs_teacher]
    return [arg for term in teacher_terms for arg in (f"--{term.weight_key}", "0")] + ["--alpha_ce", "1"]


def twin_flags(student_dir: str) -> list[str]:
    """Labels only, for as many optimizer steps as the distilled run took (its epoch also covers the
    transfer set)."""
    with open(os.path.join(student_dir, "trainer_state.json"), encoding="utf-8") as handle:
        steps = json.load(handle)["global_step"]
    return [*teacher_free(), "--max_steps", str(steps)]


def main() -> None:
    options, student_flags = parse()
    train_file = options.train_file or os.path.join(options.data_dir, "train.tsv")
    data_files = {"--train_file": train_file,
                  "--validation_file": options.validation_file or os.path.join(options.data_dir, "dev.tsv")}
    data = [item for flag_and_path in data_files.items() for item in flag_and_path]
    if not options.full:
        data += ["--max_train_samples", str(options.train_samples)]
    teacher_dir = options.teacher_dir or os.path.join(options.output_root, "teacher")
    student_dir = os.path.join(options.output_root, "student_pruned")
    twin_dir = os.path.join(options.output_root, "student_pruned_no_teacher")
    onnx_dir = os.path.join(options.output_root, "student_pruned_onnx_int8")
    trimmed_dir = os.path.join(options.output_root, "student_pruned_trimmed")
    trimmed_onnx_dir = os.path.join(options.output_root, "student_pruned_trimmed_onnx_int8")
    twin_trimmed_dir = os.path.join(options.output_root, "student_pruned_no_teacher_trimmed")
    twin_trimmed_onnx_dir = os.path.join(options.output_root, "student_pruned_no_teacher_trimmed_onnx_int8")
    # (source, trimmed copy, its int8 ONNX, report row) of each student shipped trimmed.
    shipped = [(student_dir, trimmed_dir, trimmed_onnx_dir, "distilled-trimmed-onnx-int8")] + (
        [(twin_dir, twin_trimmed_dir, twin_trimmed_onnx_dir, "no-teacher-trimmed-onnx-int8")] if options.trim_twin
        else [])
    task = os.path.basename(os.path.dirname(os.path.abspath(train_file))).upper()
    shape = load_yaml_config(options.student_config)
    shape = f"{shape.get('student_num_layers', '?')} layers x {shape.get('student_hidden_size', '?')}"
    subset = "the whole train split" if options.full else f"a seeded subsample of {options.train_samples:,} train rows"
    print(f"hfkd main job: {task}, training on {subset}; evaluation on the whole dev split.", flush=True)

    student = ["--config", options.student_config, "--teacher_model_name_or_path", teacher_dir,
               "--overwrite_output_dir", *data, *(["--seed", str(options.seed)] if options.seed is not None else []),
               *student_flags]
    # The transfer set: the whole train split without labels; the labelled rows among it are dropped.
    transfer = [] if options.full else ["--unlabeled_file", data[1]] + (
        ["--max_unlabeled_samples", str(options.transfer_samples)] if options.transfer_samples else [])
    if options.augment_mlm:  # copies without labels: only the teacher labels them
        transfer += ["--augment_mlm", options.augment_mlm, "--augment_copies", str(options.augment_copies),
                     "--augment_unlabeled", "true"]
    if options.crops:
        transfer += ["--unlabeled_crops", str(options.crops)]
    cached = ["--teacher_cache_dir", options.cache_dir or os.path.join(options.output_root, "teacher_cache")]
    # Checked before any compute: a mistyped flag would otherwise stop the job only after the teacher's fine-tuning.
    with one_line_errors(debug=False):
        parse_args([ModelArguments, DataArguments, DistillationConfig],
                   [*student, *transfer, *cached, "--qat_start", str(QAT_START), "--output_dir", student_dir])
        _, _, twin = parse_args([ModelArguments, DataArguments, DistillationConfig],
                                [*student, *teacher_free(), "--output_dir", twin_dir])
        if twin.needs_teacher:  # stages weigh terms per stage, over the flags above
            raise SystemExit(f"--student_config {options.student_config}: its stages weigh teacher terms, so the "
                             "no-teacher twin would still use the teacher: give a student config without stages.")
        if options.augment_mlm:
            check_masked_lm(options.augment_mlm)

    finished = os.path.isfile(os.path.join(teacher_dir, "eval_results.json"))
    if options.teacher_dir and not finished and os.path.isdir(teacher_dir) and os.listdir(teacher_dir):
        raise SystemExit(f"--teacher_dir {teacher_dir} holds no finished teacher (no eval_results.json): give a "
                         "folder `hfkd finetune` finished, or a new one to fine-tune the teacher into.")
    missing = [f"{flag} {path}" for flag, path in data_files.items() if not os.path.isfile(path)]
    if missing:
        raise SystemExit(f"no such data file: {', '.join(missing)}: give --data_dir a folder with train.tsv and "
                         "dev.tsv, or name the files with --train_file / --validation_file.")
    if finished and (options.reuse_teacher or options.teacher_dir):
        print(f"[1/7] the teacher: {teacher_dir}, fine-tuned before", flush=True)
    else:
        print("[1/7] fine-tuning the teacher", flush=True)
        # Only the job's own folder is refitted in place; a --teacher_dir is new or empty here.
        overwrite = [] if options.teacher_dir else ["--overwrite_output_dir"]
        run_recipe(run_finetune, ["--config", options.teacher_config, "--output_dir", teacher_dir, *overwrite, *data],
                   config_class=TrainingArguments)
    print("[2/7] the teacher labels the labelled rows" + ("" if options.full else
          " and the transfer set (the other training rows, their labels dropped)") +
          (f" and {options.augment_copies} augmented cop{'y' if options.augment_copies == 1 else 'ies'} of each "
           "labelled row" if options.augment_mlm else "") +
          (f" and {options.crops:g} crop(s) per labelled row" if options.crops else "") + ", once", flush=True)
    run_recipe(run_cache_teacher, [*student, *transfer, *cached])
    print(f"[3/7] distilling a compact student from that cache: the teacher pruned to {shape}, then "
          "CE on the labelled rows + soft labels on every row; the last fifth of the steps int8-aware", flush=True)
    # The int8 ONNX artifact is made of this student: it trains its last fifth with ONNX Runtime's int8
    # rounding (linear layers and embedding tables), which kept the int8 cost within 0.5 points where
    # it was above (BENCHMARKS.md, "Deployable artifacts"). The twin is compared in fp32 and stays plain.
    run_recipe(run_distillation, [*student, *transfer, *cached, "--qat_start", str(QAT_START),
                                  "--output_dir", student_dir])
    print("[4/7] its no-teacher twin: the same pruned start and optimizer steps, labels only", flush=True)
    run_recipe(run_distillation, [*student, *twin_flags(student_dir), "--output_dir", twin_dir])

    table = summarize(teacher_dir, {"distilled": student_dir, "no_teacher": twin_dir}, metric="eval_accuracy")
    with open(os.path.join(options.output_root, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(table, handle, indent=2)
    print(f"\n{task} dev:\n" + table["markdown"], flush=True)

    print("\n[5/7] trimming the distilled student's vocabulary" + (" (and the twin's)" if options.trim_twin else "") +
          " to the tokens of the training rows", flush=True)
    for source, trimmed, _, _ in shipped:
        trim_main(["--model", source, "--texts", data[1], "--eval_texts", data[3], "--keep_alphabet",
                   "--output_dir", trimmed, "--overwrite_output_dir"])
    print("\n[6/7] exporting the distilled student, and the trimmed copies, to int8 ONNX (each checked against "
          "its source)", flush=True)
    exports = [(student_dir, onnx_dir)] + [(trimmed, artifact) for _, trimmed, artifact, _ in shipped]
    for source, artifact_dir in exports:
        # Kept even outside the check's bound (the verdict is printed and recorded in export_check.json):
        # the report below measures each int8 artifact's own accuracy, which is what decides whether to ship it.
        export_main(["--model", source, "--format", "onnx", "--quantize", "int8", "--output_dir", artifact_dir,
                     "--config", options.student_config, *data[2:4], "--allow_mismatch"])
    if not options.skip_report:
        print("\n[7/7] measuring size, latency and the distillation metric of every artifact (hfkd report):",
              flush=True)
        artifacts = [f"distilled-onnx-int8={onnx_dir}"] + [f"{row}={artifact}" for _, _, artifact, row in shipped]
        report_main(["--teacher", teacher_dir, "--student", student_dir, "--student", twin_dir,
                     *[item for artifact in artifacts for item in ("--artifact", artifact)],
                     "--config", options.student_config, *data[2:4], "--repeats", "10",
                     "--output_dir", os.path.join(options.output_root, "report")])


if __name__ == "__main__":
    main()
    finish_process()
