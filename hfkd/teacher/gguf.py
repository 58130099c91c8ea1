"""GGUF teachers: load a GGUF file as a plain model, or convert it once to a safetensors folder.

transformers dequantises a GGUF file into an ordinary architecture (SmolLM2's into a
`LlamaForCausalLM`), but the model it returns is marked as quantized and refuses `save_pretrained`
and dtype changes. Rebuilding it from its config without the quantization marker gives the same
weights in a model that behaves like any other. Loading a GGUF file also builds the tokenizer from
the file's metadata, which takes about a minute: convert once (`hfkd convert-gguf`) and load the folder.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfkd.io import staged
from hfkd.models import DistillationSetupError

MARKER = "hfkd_gguf.json"  # written last into a converted folder: its presence means the folder is complete


def split_gguf_path(gguf_path: str) -> tuple[str, str]:
    """'dir/model.gguf' -> ('dir', 'model.gguf'), as `from_pretrained(folder, gguf_file=name)` takes it."""
    if not os.path.isfile(gguf_path):
        raise DistillationSetupError(f"GGUF file {gguf_path!r} does not exist: pass the path of a .gguf file.")
    return os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)


def load_gguf_model(auto_class: Any, folder: str, gguf_file: str, dtype: torch.dtype | str = torch.float32,
                    **kwargs: Any) -> nn.Module:
    """The model in `folder/gguf_file`, dequantised, as a plain (saveable, castable) `auto_class` model."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    kwargs.pop("torch_dtype", None)
    quantized = auto_class.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype, **kwargs)
    config = quantized.config
    config.__dict__.pop("quantization_config", None)
    plain = auto_class.from_config(config, dtype=dtype)
    plain.load_state_dict(quantized.state_dict())
    return plain.eval()


def is_converted(output_dir: str) -> bool:
    return os.path.isfile(os.path.join(output_dir, MARKER))


def convert_gguf(gguf_path: str, output_dir: str, dtype: str = "float32") -> str:
    """Write `gguf_path`'s causal LM and tokenizer to `output_dir` as a plain safetensors folder.

    A folder already converted from the same file is kept as is (returned at once). The folder is
    written through `hfkd.io.staged`, so a kill leaves the old content or the whole new one; a
    non-empty folder hfkd did not convert is refused rather than overwritten.
    """
    folder, name = split_gguf_path(gguf_path)
    source = {"gguf_file": os.path.abspath(gguf_path), "size": os.path.getsize(gguf_path), "dtype": dtype}
    if is_converted(output_dir):
        with open(os.path.join(output_dir, MARKER), encoding="utf-8") as handle:
            if json.load(handle) == source:
                return output_dir
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not is_converted(output_dir):
        raise DistillationSetupError(
            f"{output_dir} exists and was not written by hfkd convert-gguf: choose an empty or new --output_dir."
        )
    model = load_gguf_model(AutoModelForCausalLM, folder, name, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    with staged(output_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        with open(os.path.join(staging, MARKER), "w", encoding="utf-8") as handle:
            json.dump(source, handle)
    return output_dir
