"""Where an int8 ONNX artifact's error comes from: the linear layers' rounding or the embedding tables'.

    python scripts/benchmark_int8_parts.py --model outputs/sst2/student_pruned [--model outputs/qat2/...] \
        [--output outputs/bench/int8_parts.json]

ONNX Runtime's `quantize_dynamic` rounds two kinds of operator: MatMul (the linear layers: weights
int8 per channel, activations uint8 per call) and Gather of a weight (the word, position and
token-type embeddings: uint8, one scale per table). For each model folder this exports fp32 ONNX
once (`hfkd export`, checked against PyTorch) and quantizes it three ways (both, MatMul only, Gather
only), as hfkd's export does otherwise (per channel, reduced range where the CPU lacks VNNI), then
runs each on the full SST-2 dev set: accuracy, agreement with the fp32 ONNX decisions, max |Δlogit|,
bytes. Writes JSON + Markdown.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from benchmarking import SST2_DIR, cpu_name, quiet_libraries, write_results  # first: sets the Hub offline

import numpy as np  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from hfkd.app.export_cli import export_main  # noqa: E402
from hfkd.app.task_data import DataArguments, load_raw_datasets  # noqa: E402
from hfkd.deploy.runtime import OnnxRuntimeModel, artifact_logits  # noqa: E402
from hfkd.student.quantization import onnx_reduce_range  # noqa: E402

PARTS = {"MatMul + Gather (hfkd export)": ["MatMul", "Gather"], "MatMul only (linear layers)": ["MatMul"],
         "Gather only (embedding tables)": ["Gather"]}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="A trained sequence-classification folder.")
    parser.add_argument("--data_dir", default=SST2_DIR)
    parser.add_argument("--output", default="outputs/bench/int8_parts.json")
    return parser.parse_args()


def load_dev(data_dir: str) -> tuple[list[str], np.ndarray]:
    raw = load_raw_datasets(DataArguments(train_file=os.path.join(data_dir, "train.tsv"),
                                          validation_file=os.path.join(data_dir, "dev.tsv")))["validation"]
    return list(raw["sentence"]), np.array(raw["label"])


def dev_batches(tokenizer, data_dir: str, batch_size: int = 64) -> tuple[list[dict], np.ndarray]:
    texts, labels = load_dev(data_dir)
    batches = [dict(tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=64,
                              return_tensors="np")) for i in range(0, len(texts), batch_size)]
    return batches, labels


def logits(path: str, batches: list[dict]) -> np.ndarray:
    model = OnnxRuntimeModel(path)
    return np.concatenate([artifact_logits(model, batch) for batch in batches])


def measure(model_dir: str, data_dir: str, scratch: str) -> list[dict]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_dir = os.path.join(scratch, "fp32")
    batches, labels = dev_batches(AutoTokenizer.from_pretrained(model_dir), data_dir)
    texts = os.path.join(scratch, "dev.txt")
    with open(texts, "w", encoding="utf-8") as handle:
        handle.writelines(f"{text}\n" for text in load_dev(data_dir)[0])
    export_main(["--model", model_dir, "--format", "onnx", "--output_dir", fp32_dir, "--texts", texts])
    fp32 = os.path.join(fp32_dir, "model.onnx")
    reference = logits(fp32, batches)
    rows = [{"model": model_dir, "quantized": "none (fp32 ONNX)", "accuracy": float((reference.argmax(-1) == labels).mean()),
             "agreement": 1.0, "max_abs_logit_diff": 0.0, "bytes": os.path.getsize(fp32)}]
    for name, ops in PARTS.items():
        path = os.path.join(scratch, f"{'_'.join(ops)}.onnx")
        quantize_dynamic(fp32, path, weight_type=QuantType.QInt8, per_channel=True, reduce_range=onnx_reduce_range(),
                         op_types_to_quantize=ops)
        found = logits(path, batches)
        rows.append({"model": model_dir, "quantized": name, "accuracy": float((found.argmax(-1) == labels).mean()),
                     "agreement": float((found.argmax(-1) == reference.argmax(-1)).mean()),
                     "max_abs_logit_diff": float(np.abs(found - reference).max()), "bytes": os.path.getsize(path)})
    return rows


def main() -> None:
    options = parse()
    quiet_libraries()
    rows = []
    for model_dir in options.model:
        with tempfile.TemporaryDirectory() as scratch:
            rows += measure(model_dir, options.data_dir, scratch)
    lines = [f"CPU: {cpu_name()}; SST-2 dev, 872 sentences.", "",
             "| model | quantized | dev accuracy | decisions kept vs fp32 ONNX | max abs Δlogit | MB |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['quantized']} | {r['accuracy']:.2%} | {r['agreement']:.2%} | "
              f"{r['max_abs_logit_diff']:.3f} | {r['bytes'] / 1e6:.2f} |" for r in rows]
    write_results(options.output, {"cpu": cpu_name(), "rows": rows}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
