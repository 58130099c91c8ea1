"""Running a deployable artifact: an hfkd export (ONNX or PyTorch int8) or a plain model folder.

One loader (`load_artifact`) and one call contract for all of them: `artifact.model(**inputs)`
returns an object with `.logits`, like a Hugging Face model, so `hfkd predict`, the export check
and `hfkd report` run an ONNX Runtime session through the same code as a PyTorch model and
measure what is deployed, not what it was made from.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from hfkd.models import HfkdError, forward_arg_names, task_of

MANIFEST_NAME = "hfkd_export.json"
TORCH_INT8_FILE = "model_int8.pt"
EXPORT_EXTRA_INSTALL = "pip install 'hfkd[export]'"
# Inputs an artifact's graph may take, and what a model assumes when one is not given.
_INPUT_DEFAULTS = {"attention_mask": np.ones_like, "token_type_ids": np.zeros_like}


class ExportError(HfkdError, ValueError):
    """An export, its check or an artifact that hfkd refuses; the CLI prints it as one line."""


def require_modules(*names: str, purpose: str = "ONNX export") -> None:
    """Refuse before any compute when an optional dependency of `purpose` is not installed."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"{purpose} needs {', '.join(missing)} (the `export` extra): {EXPORT_EXTRA_INSTALL}")


@dataclass
class RuntimeOutput:
    """What a runtime returns: logits as a torch tensor, as a Hugging Face model's output has them."""

    logits: torch.Tensor


class OnnxRuntimeModel(nn.Module):
    """An ONNX Runtime CPU session behind a Hugging Face model's call contract.

    `forward(input_ids, attention_mask, token_type_ids)` returns `RuntimeOutput(logits)`; inputs the
    graph does not take are dropped and graph inputs not given get the model defaults (mask of ones,
    segment zeros). It has no parameters: its size comes from the artifact's files. The session
    uses `threads` intra-op threads (default: torch's current count), so ONNX Runtime and PyTorch
    are timed with the same number of cores.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        require_modules("onnxruntime", purpose="running an ONNX artifact")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """Logits as numpy for numpy or torch inputs (what `hfkd predict` calls: no torch model)."""
        arrays = {k: _as_int64(v) for k, v in inputs.items() if k in self.input_names and v is not None}
        if "input_ids" not in arrays:
            raise ExportError(f"{self.path} needs input_ids; got {sorted(inputs)}.")
        for name in self.input_names:
            if name not in arrays:
                arrays[name] = _INPUT_DEFAULTS[name](arrays["input_ids"])
        return self.session.run(["logits"], arrays)[0]

    def forward(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> RuntimeOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return RuntimeOutput(torch.from_numpy(self.run(inputs)))


@dataclass
class Artifact:
    """A loaded artifact: the runnable model and what the report needs to know about it."""

    path: Path
    model: nn.Module
    kind: str  # "pytorch fp32", "onnx fp32", "onnx int8", "pytorch int8"
    task: str | None
    files: list[Path] = field(default_factory=list)  # the weight files: what `size_bytes` counts
    parameters: int | None = None  # of the source model (None: count the loaded model's)
    parameters_no_embeddings: int | None = None

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest hfkd wrote into an export folder, or None when `folder` is not an hfkd export."""
    try:
        with open(Path(folder) / MANIFEST_NAME, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "hfkd_export" in manifest else None


def artifact_kind(format: str, quantize: str | None) -> str:
    return f"{'onnx' if format == 'onnx' else 'pytorch'} {quantize or 'fp32'}"


def load_artifact(folder: str | os.PathLike, threads: int | None = None) -> Artifact:
    """An hfkd export folder (ONNX through ONNX Runtime, PyTorch int8) or any saved model folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder: give the --output_dir of an hfkd export, or a saved model folder.")
    manifest = read_manifest(folder)
    if manifest is None:
        model = load_pretrained(folder)
        return Artifact(folder, model, "pytorch fp32", task_of(model), sorted(folder.glob("*.safetensors")))
    files = [folder / name for name in manifest["model_files"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ExportError(f"{folder} is an hfkd export but lacks {', '.join(missing)}: export it again.")
    if manifest["format"] == "onnx":
        model: nn.Module = OnnxRuntimeModel(files[0], threads)
    else:
        model = load_torch_int8(folder)
    return Artifact(folder, model, artifact_kind(manifest["format"], manifest["quantize"]), manifest["task"],
                    files, manifest["parameters"], manifest["parameters_no_embeddings"])


def load_pretrained(folder: str | os.PathLike) -> nn.Module:
    """A saved model folder, loaded with the architecture class named in its config (eval mode)."""
    return model_class_of(folder).from_pretrained(folder).eval()


def model_class_of(folder: str | os.PathLike) -> type:
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    architecture = (config.architectures or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    if model_class is None:
        raise ValueError(f"cannot tell which model class to load from {str(folder)!r} (config.architectures="
                         f"{config.architectures!r}); pass the loaded model instead.")
    return model_class


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """PyTorch dynamic int8: nn.Linear weights stored as int8, activations quantized per batch."""
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def load_torch_int8(folder: str | os.PathLike) -> nn.Module:
    """Rebuild a PyTorch int8 export: the architecture from config.json, quantized like the export,
    then its state dict (`model_int8.pt`, loaded with weights_only=True)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    model = quantize_linear_int8(model_class_of(folder)(config).eval())
    model.load_state_dict(torch.load(Path(folder) / TORCH_INT8_FILE, weights_only=True))
    return model.eval()


def predict(folder: str | os.PathLike, texts: Sequence[str], max_length: int = 512) -> list[dict[str, Any]]:
    """Labels and probabilities for `texts` from an artifact folder (its own tokenizer and config).

    Sequence classification: the label and its probability (and every label's); token
    classification: one label per token; masked LM: the top token at each mask; causal LM (no KV
    cache): the most likely next token.
    """
    from transformers import AutoConfig, AutoTokenizer

    if not texts:
        raise ExportError("give at least one text to predict (--text or --file).")
    artifact = load_artifact(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    id2label = AutoConfig.from_pretrained(folder).id2label
    batch = dict(tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np"))
    logits = artifact_logits(artifact.model, batch)
    probabilities = _softmax(logits)
    rows = []
    for i, text in enumerate(texts):
        mask = batch["attention_mask"][i].astype(bool)
        ids = batch["input_ids"][i]
        rows.append({"text": text, **_prediction(artifact.task, probabilities[i], ids, mask, tokenizer, id2label)})
    return rows


def artifact_logits(model: nn.Module, batch: Mapping[str, Any]) -> np.ndarray:
    """float32 logits of one batch from any artifact model (numpy in, numpy out)."""
    if isinstance(model, OnnxRuntimeModel):
        return model.run(batch)
    accepted = forward_arg_names(model)
    tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in batch.items() if k in accepted}
    with torch.inference_mode():
        return model(**tensors).logits.float().numpy()


def _prediction(task: str | None, probs: np.ndarray, ids: np.ndarray, mask: np.ndarray, tokenizer: Any,
                id2label: Mapping[int, str]) -> dict[str, Any]:
    if task == "sequence_classification":
        best = int(probs.argmax())
        return {"label": id2label[best], "probability": float(probs[best]),
                "probabilities": {id2label[k]: float(p) for k, p in enumerate(probs)}}
    special = set(tokenizer.all_special_ids)
    if task == "token_classification":
        return {"tokens": [{"token": tokenizer.convert_ids_to_tokens(int(ids[t])), "label": id2label[int(probs[t].argmax())],
                            "probability": float(probs[t].max())}
                           for t in np.flatnonzero(mask) if int(ids[t]) not in special]}
    if task == "masked_lm":
        return {"masks": [{"position": int(t), "token": tokenizer.convert_ids_to_tokens(int(probs[t].argmax())),
                           "probability": float(probs[t].max())}
                          for t in np.flatnonzero(ids == tokenizer.mask_token_id)]}
    last = int(np.flatnonzero(mask)[-1])  # causal LM: right padding, the next token after the last real one
    return {"next_token": tokenizer.convert_ids_to_tokens(int(probs[last].argmax())),
            "probability": float(probs[last].max())}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _as_int64(value: Any) -> np.ndarray:
    array = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
    return array.astype(np.int64, copy=False)
