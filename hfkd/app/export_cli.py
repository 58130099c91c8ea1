"""`hfkd export` (a model folder -> a checked ONNX / int8 artifact) and `hfkd predict` (run one).

    hfkd export --model outputs/sst2/student_l3 --format onnx --quantize int8 \
        --config recipes/configs/sst2_minilm_l3.yaml --output_dir outputs/sst2/student_l3_onnx_int8
    hfkd predict --model outputs/sst2/student_l3_onnx_int8 --text "a gripping, funny film"
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, Sequence

from hfkd.app.arguments import one_line_errors
from hfkd.app.report_cli import add_data_arguments, evaluation_data


def parse_export(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hfkd export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Saved model folder (config, weights, tokenizer).")
    parser.add_argument("--format", default="onnx", choices=["onnx", "torch"],
                        help="onnx: torch.onnx.export(dynamo=True), run with ONNX Runtime; torch: PyTorch "
                             "dynamic int8 (needs --quantize int8).")
    parser.add_argument("--quantize", default=None, choices=["int8"], help="int8 weights (dynamic quantization).")
    parser.add_argument("--output_dir", required=True,
                        help="New or empty folder, or an earlier hfkd export (replaced whole).")
    parser.add_argument("--texts", help="Check inputs: a text file, one text per line (instead of --config).")
    add_data_arguments(parser)
    parser.add_argument("--max_check_samples", type=int, default=1000, help="Validation rows the check runs on.")
    parser.add_argument("--max_relative_error", type=float, default=None,
                        help="Bound on max |Δlogit| / logit scale (default 1e-4 fp32, 0.1 int8).")
    parser.add_argument("--min_argmax_agreement", type=float, default=None, help="Bound on argmax agreement (default 0.99).")
    parser.add_argument("--allow_mismatch", action="store_true", help="Keep an artifact outside the bounds (recorded).")
    parser.add_argument("--debug", action="store_true", help="Show the traceback of an error.")
    return parser.parse_args(list(argv))


def run_export(options: argparse.Namespace) -> dict[str, Any]:
    """Export `--model` as asked, checked on the validation rows of `--config`/data flags, `--texts`
    lines, or the built-in sentences; prints the check and returns the manifest."""
    from hfkd.deploy.export import DEFAULT_BOUNDS, CheckBounds, export_model

    bounds = {kind: CheckBounds(
        options.max_relative_error if options.max_relative_error is not None else bound.max_relative_error,
        options.min_argmax_agreement if options.min_argmax_agreement is not None else bound.min_argmax_agreement)
        for kind, bound in DEFAULT_BOUNDS.items()}
    manifest = export_model(options.model, options.output_dir, format=options.format, quantize=options.quantize,
                            texts=_check_texts(options), bounds=bounds, allow_mismatch=options.allow_mismatch,
                            max_length=options.max_seq_length)
    with open(f"{options.output_dir}/export_check.json", encoding="utf-8") as handle:
        for check in json.load(handle)["checks"]:
            print(f"{check['artifact']}: argmax agreement {check['argmax_agreement']:.2%}, max |Δlogit| "
                  f"{check['max_abs_logit_diff']:.3g} ({check['relative_logit_diff']:.2g} × logit scale) on "
                  f"{check['positions']} positions: "
                  f"{'passed' if check['passed'] else 'OUTSIDE THE BOUND (kept: --allow_mismatch)'}")
    print(f"wrote {options.output_dir} ({', '.join(manifest['model_files'])}, tokenizer, config, manifest)")
    return manifest


def _check_texts(options: argparse.Namespace) -> list[Any] | None:
    if options.texts and (options.config or options.dataset or options.validation_file):
        raise ValueError("give the check inputs once: --texts FILE or --config/--dataset/--validation_file.")
    if options.texts:
        with open(options.texts, encoding="utf-8") as handle:
            return [line.rstrip("\n") for line in handle if line.strip()][:options.max_check_samples]
    if options.config or options.dataset or options.validation_file:
        dataset = evaluation_data(options, options.model)["dataset"]
        return [dataset[i] for i in range(min(len(dataset), options.max_check_samples))]
    return None


def parse_predict(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hfkd predict", description="Labels and probabilities from an exported "
                                     "artifact (ONNX Runtime; no PyTorch model needed).")
    parser.add_argument("--model", required=True, help="Folder written by hfkd export (or any saved model folder).")
    parser.add_argument("--text", action="append", default=[], help="A text to label (repeatable).")
    parser.add_argument("--file", help="A text file, one text per line.")
    parser.add_argument("--json", action="store_true", help="One JSON object per text instead of a table.")
    parser.add_argument("--debug", action="store_true", help="Show the traceback of an error.")
    return parser.parse_args(list(argv))


def run_predict(options: argparse.Namespace) -> list[dict[str, Any]]:
    from hfkd.deploy.runtime import predict

    texts = list(options.text)
    if options.file:
        with open(options.file, encoding="utf-8") as handle:
            texts += [line.rstrip("\n") for line in handle if line.strip()]
    rows = predict(options.model, texts)
    for row in rows:
        print(json.dumps(row, ensure_ascii=False) if options.json else _row_line(row))
    return rows


def _row_line(row: dict[str, Any]) -> str:
    if "label" in row:
        return f"{row['label']}\t{row['probability']:.4f}\t{row['text']}"
    if "tokens" in row:
        return " ".join(f"{t['token']}/{t['label']}({t['probability']:.2f})" for t in row["tokens"])
    if "masks" in row:
        masks = " ".join(f"{m['token']}({m['probability']:.2f})" for m in row["masks"])
        return f"{masks}\t{row['text']}"
    return f"{row['next_token']}\t{row['probability']:.4f}\t{row['text']}"


def _command(parse: Callable[[Sequence[str]], argparse.Namespace], run: Callable[[argparse.Namespace], Any]):
    def main(argv: Sequence[str]) -> Any:
        options = parse(argv)
        with one_line_errors(options.debug):
            return run(options)
    return main


export_main = _command(parse_export, run_export)
predict_main = _command(parse_predict, run_predict)
