"""`hfkd report` and the short teacher-vs-student summary the recipes print.

    hfkd report --teacher outputs/sst2/teacher --student outputs/sst2/student_l3 \
        --artifact onnx-int8=outputs/sst2/student_l3_onnx_int8 \
        --config recipes/configs/sst2_minilm_l3.yaml --alpha 0.5 --output_dir outputs/sst2/report
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Mapping, Sequence

from safetensors import safe_open

from hfkd.app.arguments import one_line_errors
from hfkd.report.metric import distillation_metric
from hfkd.report.render import markdown_table

REFERENCE_CSV = "distillation_metric_cases.csv"


def saved_parameter_count(model_dir: str) -> int:
    """Parameters in a saved folder's safetensors files, read from their headers (no model load)."""
    total = 0
    files = [f for f in os.listdir(model_dir) if f.endswith(".safetensors")]
    if not files:
        raise FileNotFoundError(f"{model_dir} holds no .safetensors weights; is it a saved model folder?")
    for name in files:
        with safe_open(os.path.join(model_dir, name), framework="pt") as handle:
            for key in handle.keys():
                count = 1
                for dim in handle.get_slice(key).get_shape():
                    count *= dim
                total += count
    return total


def eval_results(model_dir: str) -> dict[str, float]:
    path = os.path.join(model_dir, "eval_results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: run the recipe to the end (it writes eval_results.json).")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def summarize(teacher_dir: str, students: Mapping[str, str], metric: str = "eval_accuracy",
              alpha: float = 0.5) -> dict[str, Any]:
    """Params, score and DM of a teacher and its students from their output folders, plus a Markdown table."""
    teacher_params, teacher_score = saved_parameter_count(teacher_dir), eval_results(teacher_dir)[metric]
    rows = [{"name": "teacher", "path": teacher_dir, "params": teacher_params, "score": teacher_score,
             "distillation_metric": None}]
    for name, path in students.items():
        params, score = saved_parameter_count(path), eval_results(path)[metric]
        rows.append({"name": name, "path": path, "params": params, "score": score,
                     "distillation_metric": distillation_metric(params, teacher_params, score, teacher_score, alpha)})
    table = markdown_table(["model", "params", metric, "kept of teacher", f"DM (α={alpha})"],
                           [_summary_cells(row, teacher_score) for row in rows])
    return {"metric": metric, "alpha": alpha, "models": rows, "markdown": table}


def _summary_cells(row: Mapping[str, Any], teacher_score: float) -> list[str]:
    dm = row["distillation_metric"]
    return [row["name"], f"{row['params'] / 1e6:.1f}M", f"{100 * row['score']:.2f}%",
            f"{100 * row['score'] / teacher_score:.1f}%", "–" if dm is None else f"{dm:.4f}"]


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hfkd report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="Saved teacher folder.")
    parser.add_argument("--student", action="append", default=[], help="Saved student folder (repeatable).")
    parser.add_argument("--artifact", action="append", default=[], metavar="NAME=PATH",
                        help="A deployable artifact, one row each (repeatable): an `hfkd export` folder (run in "
                             "ONNX Runtime / as int8) or any saved model folder, e.g. a trimmed student.")
    parser.add_argument("--references", default=None,
                        help="CSV of published pairs for the plot (default: the shared reference/"
                             f"{REFERENCE_CSV} when found; 'none' to leave them out).")
    add_data_arguments(parser)
    parser.add_argument("--metric", default=None, help="Score to rank by (default: the task's main metric).")
    parser.add_argument("--alpha", type=float, default=0.5, help="Weight of size vs score in DM.")
    parser.add_argument("--repeats", type=int, default=20, help="Timed runs per latency measurement.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--debug", action="store_true", help="Show the traceback of a refused input.")
    return parser.parse_args(list(argv))


def evaluation_data(options: argparse.Namespace, model_dir: str) -> dict[str, Any]:
    """The tokenized validation split named by `--config` and/or the data flags, tokenized with
    `model_dir`'s tokenizer, with its collator, metrics and task (what `report` and `export` evaluate on)."""
    from transformers import AutoConfig, AutoTokenizer

    from hfkd.app.arguments import load_yaml_config
    from hfkd.app.recipes import prepare_task_data
    from hfkd.app.task_data import DataArguments, build_data_collator, load_raw_datasets
    from hfkd.metrics import DEFAULT_METRIC, build_compute_metrics

    config = load_yaml_config(options.config) if options.config else {}
    data_fields = set(DataArguments.__dataclass_fields__)
    data_values = {k: v for k, v in config.items() if k in data_fields}
    overrides = {"dataset_name": options.dataset, "dataset_config_name": options.dataset_config_name,
                 "validation_file": options.validation_file, "text_column": options.text_column,
                 "text_pair_column": options.text_pair_column, "max_eval_samples": options.max_eval_samples}
    data_values.update({k: v for k, v in overrides.items() if v is not None})
    data_values.update(train_file=None, test_file=None)  # only the validation split is read
    data_values.setdefault("max_seq_length", options.max_seq_length)
    data_values.setdefault("label_column", options.label_column)
    data_args = DataArguments(**data_values)
    task = options.task or config.get("task", "sequence_classification")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    raw = load_raw_datasets(data_args)
    if "validation" not in raw:
        raise ValueError("the evaluation data has no validation split: give --validation_file or a config with one.")
    raw = type(raw)({"validation": raw["validation"]})
    datasets, labels = prepare_task_data(task, raw, tokenizer, data_args, AutoConfig.from_pretrained(model_dir))
    id2label = dict(enumerate(labels)) if labels else None
    return {"dataset": datasets["validation"], "collator": build_data_collator(tokenizer, data_args, task),
            "compute_metrics": build_compute_metrics(task, id2label=id2label), "task": task,
            "metric": getattr(options, "metric", None) or DEFAULT_METRIC[task]}


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags naming an evaluation set (shared by `hfkd report` and `hfkd export`)."""
    parser.add_argument("--config", help="Recipe YAML whose data keys give the evaluation set.")
    parser.add_argument("--dataset", help="Hub dataset name or local folder (instead of --config).")
    parser.add_argument("--dataset_config_name")
    parser.add_argument("--validation_file", help="Evaluation file (instead of --config).")
    parser.add_argument("--text_column")
    parser.add_argument("--text_pair_column")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--task", default=None, help="Task (default: the config's, else sequence_classification).")
    parser.add_argument("--max_eval_samples", type=int)
    parser.add_argument("--max_seq_length", type=int, default=128)


def report_rows(students: Sequence[str], artifacts: Sequence[str]) -> list[tuple[str, str]]:
    """(name, folder) of every row after the teacher: students by folder name, artifacts as NAME=PATH."""
    rows = [(os.path.basename(os.path.normpath(p)), p) for p in students]
    for spec in artifacts:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--artifact {spec!r}: give NAME=PATH, e.g. --artifact student-int8=outputs/student_onnx_int8.")
        rows.append((name, path))
    if not rows:
        raise ValueError("give at least one --student or --artifact to compare with the teacher.")
    missing = [path for _, path in rows if not os.path.isdir(path)]
    if missing:
        raise ValueError(f"no such folder: {', '.join(missing)}.")
    return rows


def reference_rows(option: str | None) -> list[dict[str, Any]]:
    """Published pairs for the plot: `option`'s CSV, else the shared one when it can be found."""
    from hfkd.report.io import read_references

    if option == "none":
        return []
    path = option or shared_reference_csv()
    return read_references(path) if path else []


def shared_reference_csv() -> str | None:
    """The project's shared reference table: under $HFKD_SHARED_DIR, else ../shared beside the working
    directory or beside the checkout (where tests and recipes find ../shared/data)."""
    import hfkd

    roots = [os.environ["HFKD_SHARED_DIR"]] if os.environ.get("HFKD_SHARED_DIR") else []
    roots += [os.path.join(os.getcwd(), "..", "shared"),
              os.path.join(os.path.dirname(os.path.abspath(hfkd.__file__)), "..", "..", "shared")]
    found = [os.path.join(root, "reference", REFERENCE_CSV) for root in roots]
    return next((os.path.normpath(path) for path in found if os.path.isfile(path)), None)


def own_tokenizations(options: argparse.Namespace, rows: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The evaluation rows tokenized by each row's own tokenizer where its vocabulary is not the
    teacher's (a trimmed student): name -> dataset. Rows sharing the teacher's vocabulary are absent."""
    from transformers import AutoTokenizer

    teacher_vocabulary = AutoTokenizer.from_pretrained(options.teacher).get_vocab()
    return {name: evaluation_data(options, path)["dataset"] for name, path in rows
            if AutoTokenizer.from_pretrained(path).get_vocab() != teacher_vocabulary}


def main(argv: Sequence[str]) -> dict[str, Any]:
    options = parse(argv)
    with one_line_errors(options.debug):
        return run(options)


def run(options: argparse.Namespace) -> dict[str, Any]:
    """Measure every row, write the report files, print the table."""
    from hfkd.report import build_report, write_report

    rows = report_rows(options.student, options.artifact)
    references = reference_rows(options.references)
    data = evaluation_data(options, options.teacher)
    report = build_report(
        options.teacher,
        rows,
        data["dataset"],
        data["collator"],
        data["compute_metrics"],
        metric_name=data["metric"],
        alpha=options.alpha,
        teacher_name=os.path.basename(os.path.normpath(options.teacher)),
        repeats=options.repeats,
        references=references,
        eval_datasets=own_tokenizations(options, rows),
    )
    paths = write_report(report, options.output_dir)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return report
