"""Cheaper teacher forward passes, and their fidelity to the full-precision teacher.

Online distillation pays a teacher forward pass on every step. Three options make it cheaper:
a lower precision (`teacher_dtype`, e.g. bfloat16), dynamic int8 quantization of the teacher's
linear layers on CPU (`teacher_quantization="int8_dynamic"`) and `torch.compile`
(`teacher_compile`). Each changes the teacher's logits a little, so none is on by default, and when
one is on `DistillationTrainer` measures it against the unmodified teacher on evaluation batches
(`teacher_fidelity`: argmax agreement and mean KL) and refuses to train below
`teacher_min_agreement`. `scripts/benchmark_teacher.py` reports speed-up and fidelity per option.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hfkd.models import DistillationSetupError, forward_arg_names

TEACHER_QUANTIZATIONS = ("int8_dynamic",)


def speed_up_teacher(
    teacher: nn.Module,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    quantization: str | None = None,
    compile: bool = False,
) -> nn.Module:
    """The teacher on `device`, cast/quantized/compiled as asked (a new module when quantized or compiled).

    Only forward passes are made faster: the result is for inference only.
    """
    teacher = teacher.to(device=device, dtype=dtype)
    if quantization is not None:
        if quantization not in TEACHER_QUANTIZATIONS:
            raise ValueError(f"teacher_quantization={quantization!r}: use one of {TEACHER_QUANTIZATIONS} or None.")
        if torch.device(device).type != "cpu":
            raise ValueError(
                "teacher_quantization='int8_dynamic' runs on CPU only; on a GPU use teacher_dtype='bfloat16'."
            )
        if dtype not in (None, torch.float32):
            raise ValueError("teacher_quantization='int8_dynamic' needs a float32 teacher: unset teacher_dtype.")
        with warnings.catch_warnings():  # torch.ao's deprecation notices: the kernels are what we measure
            warnings.simplefilter("ignore")
            teacher = torch.ao.quantization.quantize_dynamic(teacher, {nn.Linear}, dtype=torch.qint8)
    if compile:
        teacher = torch.compile(teacher, dynamic=True)
    return teacher


@torch.inference_mode()
def teacher_fidelity(
    reference: nn.Module,
    candidate: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    accepted_inputs: Iterable[str],
    max_rows: int = 512,
) -> dict[str, float]:
    """How closely `candidate` reproduces `reference`'s logits on `batches` (both in eval mode).

    Returns argmax agreement (fraction of items, i.e. rows or unpadded positions, where the top class
    agrees), mean KL(reference || candidate) per item at temperature 1, max absolute logit difference,
    and the number of items compared.
    """
    accepted = frozenset(accepted_inputs)
    agree = kl = items = 0.0
    max_diff = 0.0
    rows = 0
    for batch in batches:
        feed = {k: v for k, v in batch.items() if k in accepted and k != "labels"}
        ref = reference(**feed).logits.float()
        cand = candidate(**feed).logits.float()
        if ref.dim() == 3:  # per position: keep the real tokens only
            mask = feed.get("attention_mask")
            keep = mask.bool() if mask is not None else torch.ones(ref.shape[:2], dtype=torch.bool)
            ref, cand = ref[keep], cand[keep]
        kl += F.kl_div(F.log_softmax(cand, -1), F.log_softmax(ref, -1), log_target=True, reduction="sum").item()
        agree += (ref.argmax(-1) == cand.argmax(-1)).sum().item()
        items += ref.shape[0]
        max_diff = max(max_diff, (ref - cand).abs().max().item())
        rows += len(next(iter(feed.values())))
        if rows >= max_rows:
            break
    if not items:
        raise ValueError("teacher_fidelity got no batches: pass an evaluation dataset.")
    return {"argmax_agreement": agree / items, "mean_kl": kl / items, "max_abs_logit_diff": max_diff,
            "items": int(items)}


def require_fidelity(fidelity: Mapping[str, float], min_agreement: float, what: str) -> None:
    """Refuse a cheaper teacher (`what`) whose top class departs from the full teacher's too often."""
    agreement = fidelity["argmax_agreement"]
    if agreement < min_agreement:
        raise DistillationSetupError(
            f"{what} agrees with the full teacher on {agreement:.1%} of evaluation items, below "
            f"teacher_min_agreement={min_agreement}: drop that option or lower the bound knowingly."
        )


def cast_with_fidelity(
    teacher: nn.Module,
    dtype: torch.dtype | None,
    batches: Callable[[], Iterable[Mapping[str, Any]]],
    *,
    device: torch.device | str = "cpu",
    min_agreement: float,
) -> tuple[nn.Module, dict[str, float] | None]:
    """`teacher` on `device` in `dtype` (in place), with its fidelity to the uncast teacher on `batches()`.

    What a teacher-output cache built at a lower precision needs: the cache stores that teacher's
    logits for a whole training run, so a cast that moves its decisions beyond `min_agreement` is
    refused before the build. float32 or None: no copy, no measurement (fidelity None).
    """
    if dtype in (None, torch.float32) or next(teacher.parameters()).dtype == dtype:
        return teacher.to(device=device, dtype=dtype), None
    reference = copy.deepcopy(teacher).to(device)
    cast = teacher.to(device=device, dtype=dtype)
    with torch.inference_mode():
        fidelity = teacher_fidelity(reference, cast.eval(), batches(), accepted_inputs=forward_arg_names(reference))
    require_fidelity(fidelity, min_agreement, f"the teacher cast to {dtype} for the cache")
    return cast, fidelity
