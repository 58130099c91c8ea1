"""`hfkd convert-gguf`: a GGUF causal LM (e.g. SmolLM2-135M-Instruct) -> a plain safetensors folder.

    hfkd convert-gguf --gguf_file PATH.gguf --output_dir DIR [--dtype float32]

Loading a GGUF file dequantises it and builds its tokenizer from the file's metadata (about a minute for
SmolLM2); the folder this writes loads in seconds with `AutoModelForCausalLM.from_pretrained(DIR)` and
serves as `teacher_model_name_or_path`. Rerunning on a finished folder does nothing.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from hfkd.teacher.gguf import convert_gguf


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hfkd convert-gguf", description=__doc__.splitlines()[0])
    parser.add_argument("--gguf_file", required=True, help="Path of the .gguf file.")
    parser.add_argument("--output_dir", required=True, help="New or empty folder (or one this command wrote).")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="Dtype of the saved weights.")
    options = parser.parse_args(argv)
    print(convert_gguf(options.gguf_file, options.output_dir, dtype=options.dtype))
