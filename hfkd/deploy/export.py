"""Export a model to a deployable artifact (ONNX fp32/int8, PyTorch int8), checked against its source.

An artifact is only written when it reproduces its PyTorch source on real inputs within stated
bounds (`DEFAULT_BOUNDS`), so a broken trace or a quantization that costs too much is refused
before anyone ships it. The output folder is usable alone: the model file(s), the tokenizer, the
config (labels), `hfkd_export.json` (what it is, how it was made) and `export_check.json` (how
closely it matches). It is built in a staging folder and swapped in whole (`hfkd.io.staged`):
a failed trace, a refused check or a kill leaves the previous folder as it was.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from hfkd.deploy.runtime import (
    MANIFEST_NAME,
    TORCH_INT8_FILE,
    ExportError,
    OnnxRuntimeModel,
    artifact_kind,
    artifact_logits,
    load_pretrained,
    load_torch_int8,
    quantize_linear_int8,
    read_manifest,
    require_modules,
)
from hfkd.io import atomic_write, recover, staged
from hfkd.models import forward_arg_names, task_of
from hfkd.report.measure import count_parameters
from hfkd.student.quantization import onnx_reduce_range

FORMATS = ("onnx", "torch")
QUANTIZATIONS = ("int8",)
SUPPORTED_TASKS = ("sequence_classification", "token_classification", "masked_lm", "causal_lm")
ONNX_FILE = "model.onnx"
CHECK_FILE = "export_check.json"
_GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_MAX_BATCH = 1024
_SINGLE_FILE_LIMIT = 2**31 - 2**27  # protobuf's 2 GiB: larger models keep their weights in model.onnx.data


@dataclass(frozen=True)
class CheckBounds:
    """An artifact passes when max |Δlogit| ≤ `max_relative_error` × the logit scale and its argmax
    agrees with the source's on at least `min_argmax_agreement` of the checked positions (examples,
    or real tokens for token-level heads). The logit scale is the largest |logit| of the source on
    the check inputs, and at least 1: a model whose logits are all near 0 (an untrained head) is
    held to an absolute bound, as a Δ of 0.1 nats moves no probability by more than ~10% of itself."""

    max_relative_error: float
    min_argmax_agreement: float

    def __post_init__(self) -> None:
        if not self.max_relative_error >= 0 or not 0 <= self.min_argmax_agreement <= 1:
            raise ExportError(f"check bounds need max_relative_error >= 0 and min_argmax_agreement in [0, 1], "
                              f"got {self.max_relative_error} and {self.min_argmax_agreement}.")


# fp32: only float reordering separates ONNX Runtime from PyTorch (1e-6 relative is typical);
# int8: weights rounded to 1/127 of their range move logits by about 1% and flip near-ties.
DEFAULT_BOUNDS = {"fp32": CheckBounds(1e-4, 0.99), "int8": CheckBounds(0.1, 0.99)}

# Checked when no texts are given: lengths from 1 word to ~60 tokens, negation, numbers, names,
# punctuation, questions, casing and rare words, so padding and truncation paths are exercised.
CHECK_TEXTS = (
    "Great.",
    "Terrible!",
    "I loved every minute of this film.",
    "The plot was dull and the acting was worse.",
    "Not bad at all, actually.",
    "It isn't the worst thing I've seen, but it's close.",
    "What time does the train to Paris leave on Monday?",
    "Alice met Bob in New York City in 2019.",
    "The quarterly revenue rose 12.5% to $3.4 billion, beating estimates.",
    "Why would anyone ever think that was a good idea?",
    "an unexpectedly moving , quietly funny and thoroughly original piece of work",
    "THE SERVICE WAS SLOW AND THE FOOD ARRIVED COLD.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She said she would call back, and she never did.",
    "The museum, which opened in 1889, houses over 20,000 artefacts from Mesopotamia.",
    "ok",
    "Despite a promising first act, the film collapses under the weight of its own ambition, "
    "with a muddled second half, a score that never stops telling you what to feel and an ending "
    "that arrives long after you have stopped caring about anyone on screen.",
    "Click here to reset your password; the link expires in 24 hours.",
    "Dr. Smith prescribed 20 mg twice daily for two weeks.",
    "I can't recommend it highly enough!!!",
    "The defendant pleaded not guilty to all three charges.",
    "How many moons does Jupiter have?",
    "Mix the flour, sugar and butter, then bake at 180 degrees for 25 minutes.",
    "Meh.",
)


def export_model(
    model: str | os.PathLike | nn.Module,
    output_dir: str | os.PathLike,
    *,
    format: str = "onnx",
    quantize: str | None = None,
    tokenizer: Any = None,
    texts: Sequence[Any] | None = None,
    bounds: Mapping[str, CheckBounds] | None = None,
    allow_mismatch: bool = False,
    max_length: int = 128,
) -> dict[str, Any]:
    """Export `model` (a saved folder, or a model with its `tokenizer`) into `output_dir`, checked.

    `format="onnx"` traces with `torch.onnx.export(dynamo=True)` (dynamic batch and sequence
    dimensions), `quantize="int8"` then applies ONNX Runtime's dynamic quantization (int8 weights);
    `format="torch", quantize="int8"` is PyTorch dynamic int8 on nn.Linear, saved as a state dict
    beside config.json (`hfkd.deploy.load_torch_int8` rebuilds it). Every artifact (and, for ONNX
    int8, the fp32 graph it came from) is compared with the PyTorch model on `texts` (texts, text
    pairs or tokenized rows; default `CHECK_TEXTS`) and refused outside `bounds` (default
    `DEFAULT_BOUNDS`) unless `allow_mismatch`.
    Returns the manifest written to `output_dir/hfkd_export.json`, with the check results.
    """
    _check_choices(format, quantize)
    if format == "onnx":
        require_modules("onnx", "onnxscript", "onnxruntime")
    bounds = {**DEFAULT_BOUNDS, **(bounds or {})}
    output_dir = Path(output_dir).absolute()
    source = None if isinstance(model, nn.Module) else Path(model)
    check_output_dir(output_dir, source)
    if source is not None:
        from transformers import AutoTokenizer

        model, tokenizer = load_pretrained(source), tokenizer or AutoTokenizer.from_pretrained(source)
    if tokenizer is None:
        raise ExportError("export_model needs the model's tokenizer (it goes with the artifact): pass tokenizer=.")
    task = _supported_task(model)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batches = check_batches(tokenizer, list(CHECK_TEXTS if texts is None else texts), model, max_length)
    reference = [artifact_logits(model, b) for b in batches]
    with staged(output_dir.parent) as staging:
        folder = Path(staging, output_dir.name)
        folder.mkdir()
        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]  # what load_torch_int8 and `hfkd predict` rebuild from
        config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        files, checks = _write_artifact(model, folder, format, quantize, batches, reference, task, bounds)
        _refuse_failed(checks, allow_mismatch)
        manifest = _manifest(model, source, task, format, quantize, files, batches, checks)
        (folder / CHECK_FILE).write_text(json.dumps(
            {"checks": checks, "texts": sum(len(b["input_ids"]) for b in batches), "allow_mismatch": allow_mismatch},
            indent=2) + "\n", encoding="utf-8")
        atomic_write(folder / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_output_dir(output_dir: Path, source: Path | None = None) -> None:
    """Refuse a folder hfkd did not create (the export replaces the whole folder) or the source itself."""
    recover(output_dir.parent)  # finish a swap a kill interrupted before judging what the folder holds
    if source is not None and source.absolute() == output_dir:
        raise ExportError(f"--output_dir {output_dir} is the model folder itself: choose another folder.")
    if output_dir.is_file() or (output_dir.is_dir() and any(output_dir.iterdir()) and read_manifest(output_dir) is None):
        raise ExportError(f"--output_dir {output_dir} holds files but no hfkd export ({MANIFEST_NAME}), and an "
                          "export replaces the whole folder: choose a new or empty folder.")


def check_batches(tokenizer: Any, texts: Sequence[Any], model: nn.Module, max_length: int,
                  batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    """The check inputs in padded batches, as the model takes them. Each item of `texts` is a text,
    a (text, text pair) tuple, or already tokenized features (a mapping with input_ids, e.g. a row
    of the evaluation dataset, so the check sees exactly what evaluation sees)."""
    texts = [t for t in texts if not isinstance(t, str) or t.strip()]
    if not texts:
        raise ExportError("the export check needs at least one non-empty text: give --texts FILE or --config.")
    accepted = forward_arg_names(model)
    batches = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        if isinstance(chunk[0], Mapping):
            encoded = tokenizer.pad([{k: f[k] for k in _GRAPH_INPUTS if k in f} for f in chunk], return_tensors="np")
        else:
            pairs = [t if isinstance(t, tuple) else (t,) for t in chunk]
            encoded = tokenizer(*zip(*pairs), padding=True, truncation=True, max_length=max_length, return_tensors="np")
        batches.append({k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()
                        if k in _GRAPH_INPUTS and k in accepted})
    return batches


def compare_logits(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
                   batches: Sequence[Mapping[str, np.ndarray]], task: str, bounds: CheckBounds) -> dict[str, Any]:
    """Argmax agreement and max |Δlogit| of `candidate` against `reference`, and whether `bounds` hold.

    Token-level heads are compared at real (unpadded) tokens only; padding positions are arbitrary.
    """
    ref, cand = [], []
    for r, c, batch in zip(reference, candidate, batches):
        if r.shape != c.shape:
            raise ExportError(f"the artifact returns logits of shape {c.shape}, its source {r.shape}: export it again.")
        if task == "sequence_classification":
            ref.append(r), cand.append(c)
        else:
            mask = batch["attention_mask"].astype(bool) if "attention_mask" in batch else np.ones(r.shape[:2], bool)
            ref.append(r[mask]), cand.append(c[mask])
    ref_all, cand_all = np.concatenate(ref).astype(np.float64), np.concatenate(cand).astype(np.float64)
    max_abs = float(np.abs(ref_all - cand_all).max()) if np.isfinite(cand_all).all() else float("inf")
    scale = float(np.abs(ref_all).max())
    relative = max_abs / max(1.0, scale)
    agreement = float((ref_all.argmax(-1) == cand_all.argmax(-1)).mean())
    return {"positions": int(len(ref_all)), "argmax_agreement": agreement, "max_abs_logit_diff": max_abs,
            "logit_scale": scale, "relative_logit_diff": relative, "bounds": asdict(bounds),
            "passed": relative <= bounds.max_relative_error and agreement >= bounds.min_argmax_agreement}


def check_artifact(folder: str | os.PathLike, model: nn.Module, tokenizer: Any, texts: Sequence[Any] | None = None,
                   bounds: Mapping[str, CheckBounds] | None = None, max_length: int = 128) -> dict[str, Any]:
    """Check an existing artifact folder against a PyTorch model; raises `ExportError` when it disagrees."""
    from hfkd.deploy.runtime import load_artifact

    artifact = load_artifact(folder)
    manifest = read_manifest(folder) or {}
    bound = {**DEFAULT_BOUNDS, **(bounds or {})}[manifest.get("quantize") or "fp32"]
    model.eval()
    batches = check_batches(tokenizer, list(CHECK_TEXTS if texts is None else texts), model, max_length)
    check = compare_logits([artifact_logits(model, b) for b in batches],
                           [artifact_logits(artifact.model, b) for b in batches], batches, _supported_task(model), bound)
    _refuse_failed([{"artifact": artifact.kind, **check}], allow_mismatch=False)
    return check


# ------------------------------------------------------------------------------------ helpers


def _check_choices(format: str, quantize: str | None) -> None:
    if format not in FORMATS:
        raise ExportError(f"--format {format!r} is not supported: choose one of {', '.join(FORMATS)}.")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"--quantize {quantize!r} is not supported: choose {', '.join(QUANTIZATIONS)} or leave it out.")
    if format == "torch" and quantize is None:
        raise ExportError("--format torch needs --quantize int8 (an fp32 PyTorch model is its saved folder already).")


def _supported_task(model: nn.Module) -> str:
    task = task_of(model)
    if task not in SUPPORTED_TASKS:
        raise ExportError(f"cannot export {type(model).__name__}: its head ({task or 'none, a bare encoder'}) is not one "
                          f"of {', '.join(SUPPORTED_TASKS)}; load it with the AutoModelFor* class of its task.")
    return task


def _write_artifact(model: nn.Module, folder: Path, format: str, quantize: str | None, batches: list[dict],
                    reference: list[np.ndarray], task: str,
                    bounds: Mapping[str, CheckBounds]) -> tuple[list[str], list[dict]]:
    """Write the model file(s) into `folder`; returns their names and one check per artifact made."""
    def check(kind: str, runner: nn.Module) -> dict[str, Any]:
        bound = bounds["int8" if "int8" in kind else "fp32"]
        return {"artifact": kind, **compare_logits(reference, [artifact_logits(runner, b) for b in batches],
                                                   batches, task, bound)}

    if format == "torch":
        torch.save(quantize_linear_int8(copy.deepcopy(model)).state_dict(), folder / TORCH_INT8_FILE)
        return [TORCH_INT8_FILE], [check(artifact_kind(format, quantize), load_torch_int8(folder))]
    fp32 = folder / "fp32" / ONNX_FILE if quantize else folder / ONNX_FILE
    fp32.parent.mkdir(exist_ok=True)
    _trace_onnx(model, batches, fp32, task)
    checks = [check(artifact_kind(format, None), OnnxRuntimeModel(fp32))]
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Per output channel: what QAT (`qat_scheme='onnxruntime'`) trains for, and a smaller error.
        quantize_dynamic(fp32, folder / ONNX_FILE, weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=onnx_reduce_range(),
                         use_external_data_format=(fp32.parent / f"{ONNX_FILE}.data").exists())
        checks.append(check(artifact_kind(format, quantize), OnnxRuntimeModel(folder / ONNX_FILE)))
        for leftover in fp32.parent.iterdir():
            leftover.unlink()
        fp32.parent.rmdir()
    return sorted(p.name for p in folder.glob(f"{ONNX_FILE}*")), checks


class _LogitsOnly(nn.Module):
    """The traced function: named integer inputs in, the logits tensor out (no cache, no dict)."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.options = {"use_cache": False} if task == "causal_lm" else {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.model(**{k: v for k, v in inputs.items() if v is not None}, **self.options).logits


def _trace_onnx(model: nn.Module, batches: list[dict[str, np.ndarray]], path: Path, task: str) -> None:
    """torch.onnx.export(dynamo=True) with dynamic batch and sequence dimensions; one line when it fails."""
    example = _example_inputs(batches)
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    seq = torch.export.Dim("sequence", min=1, max=_usable_positions(model))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        torch.onnx.export(
            _LogitsOnly(model, task).eval(), (), str(path), kwargs=example, dynamo=True, verbose=False,
            input_names=list(example), output_names=["logits"], dynamic_shapes={k: {0: batch, 1: seq} for k in example},
            external_data=weight_bytes > _SINGLE_FILE_LIMIT,
        )
    except Exception as error:  # torch.export raises many types; every one means "this forward does not trace"
        detail = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        raise ExportError(f"{type(model).__name__} failed to trace for ONNX export ({detail[:300]}); make its forward "
                          "traceable by torch.export (no data-dependent Python control flow), or export it with "
                          "--format torch --quantize int8.") from error


def _example_inputs(batches: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """The longest check batch, at least 2 rows and 2 positions, so torch.export keeps both dims dynamic
    (a size of 1 would be specialised as a constant)."""
    longest = max(batches, key=lambda b: b["input_ids"].shape[1])
    rows = {k: np.concatenate([v, v])[:max(2, len(v))] for k, v in longest.items()}
    if rows["input_ids"].shape[1] < 2:
        rows = {k: np.concatenate([v, v], axis=1) for k, v in rows.items()}
    return {k: torch.from_numpy(v) for k, v in rows.items()}


def _usable_positions(model: nn.Module) -> int:
    config = model.config
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 512
    return int(positions)


def _refuse_failed(checks: list[dict[str, Any]], allow_mismatch: bool) -> None:
    failed = [c for c in checks if not c["passed"]]
    if failed and not allow_mismatch:
        c = failed[0]
        b = c["bounds"]
        raise ExportError(
            f"the {c['artifact']} artifact disagrees with its PyTorch source beyond the bound: argmax agreement "
            f"{c['argmax_agreement']:.2%} (need >= {b['min_argmax_agreement']:.0%}), max |Δlogit| "
            f"{c['max_abs_logit_diff']:.3g} = {c['relative_logit_diff']:.3g} × the logit scale (need <= "
            f"{b['max_relative_error']:g}) on {c['positions']} positions; nothing was written. Pass --allow_mismatch "
            "to keep it anyway, or export without --quantize.")


def _manifest(model: nn.Module, source: Path | None, task: str, format: str, quantize: str | None,
              files: list[str], batches: list[dict], checks: list[dict]) -> dict[str, Any]:
    import transformers

    import hfkd

    params, params_no_embeddings = count_parameters(model)
    versions = {"hfkd": hfkd.__version__, "torch": torch.__version__, "transformers": transformers.__version__}
    if format == "onnx":
        import onnx
        import onnxruntime

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return {
        "hfkd_export": 1,
        "format": format,
        "quantize": quantize,
        "kind": artifact_kind(format, quantize),
        "task": task,
        "architecture": type(model).__name__,
        "model_files": files,
        "inputs": list(batches[0]),
        "outputs": ["logits"],
        "source": None if source is None else str(source.absolute()),
        "parameters": params,
        "parameters_no_embeddings": params_no_embeddings,
        "check_passed": all(c["passed"] for c in checks),
        "versions": versions,
    }
