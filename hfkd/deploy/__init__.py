"""Shipping a trained model: vocabulary trimming, export to ONNX / int8 checked against the source,
and running the artifacts.

vocabulary: `trim_vocabulary` (keep the tokens given texts use; same tokens and outputs on them),
`TrimReport`, `compare_tokenizers`; export: `export_model` (ONNX fp32/int8 via torch.onnx + ONNX Runtime quantization, PyTorch
dynamic int8), the export check (`compare_logits`, `check_artifact`, `DEFAULT_BOUNDS`); runtime:
`load_artifact` / `predict` (ONNX Runtime behind a Hugging Face model's call contract).
Names are imported on use, so `import hfkd.deploy` costs nothing and needs no optional extra.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "CheckBounds": "hfkd.deploy.export",
    "DEFAULT_BOUNDS": "hfkd.deploy.export",
    "check_artifact": "hfkd.deploy.export",
    "compare_logits": "hfkd.deploy.export",
    "export_model": "hfkd.deploy.export",
    "Artifact": "hfkd.deploy.runtime",
    "ExportError": "hfkd.deploy.runtime",
    "OnnxRuntimeModel": "hfkd.deploy.runtime",
    "load_artifact": "hfkd.deploy.runtime",
    "load_torch_int8": "hfkd.deploy.runtime",
    "predict": "hfkd.deploy.runtime",
    "TokenChange": "hfkd.deploy.vocabulary",
    "TrimReport": "hfkd.deploy.vocabulary",
    "VocabularyError": "hfkd.deploy.vocabulary",
    "compare_tokenizers": "hfkd.deploy.vocabulary",
    "trim_vocabulary": "hfkd.deploy.vocabulary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hfkd.deploy' has no attribute {name!r}")
