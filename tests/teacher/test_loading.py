"""hfkd.teacher.loading: a teacher checkpoint without its task head, and trust_remote_code only when stated."""

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, BertForMaskedLM, BertForSequenceClassification, BertModel

from conftest import bert_config
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.models import DistillationSetupError
from hfkd.teacher.loading import native_bf16, parse_dtype, teacher_load_kwargs


def config(tmp_path, **kw):
    return DistillationConfig(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, **kw)


def test_teacher_path_without_a_trained_head_is_refused(tmp_path):
    # A base encoder loaded as a classifier: transformers initialises the head at random and only warns.
    BertModel(bert_config()).save_pretrained(tmp_path / "base")
    student = BertForSequenceClassification(bert_config(layers=2))
    with pytest.raises(DistillationSetupError, match="no trained BertForSequenceClassification head.*hfkd finetune"):
        DistillationTrainer(model=student, teacher_model=str(tmp_path / "base"), args=config(tmp_path))


def test_teacher_path_with_its_head_loads(tmp_path):
    from hfkd.teacher.loading import load_trained_teacher

    BertForSequenceClassification(bert_config()).save_pretrained(tmp_path / "teacher")
    teacher = load_trained_teacher(AutoModelForSequenceClassification, str(tmp_path / "teacher"))
    assert isinstance(teacher, BertForSequenceClassification)
    # A bare encoder has no head: its pooler, absent from a masked-LM checkpoint, is no reason to refuse.
    BertForMaskedLM(bert_config()).save_pretrained(tmp_path / "mlm")
    assert isinstance(load_trained_teacher(AutoModel, str(tmp_path / "mlm")), BertModel)


def test_trust_remote_code_inside_init_kwargs_needs_the_explicit_flag(tmp_path):
    args = config(tmp_path, teacher_model_init_kwargs={"trust_remote_code": True})
    with pytest.raises(DistillationSetupError, match="--trust_remote_code"):
        teacher_load_kwargs(args, trust_remote_code=False)  # the recipes' flag left unset
    assert teacher_load_kwargs(args, trust_remote_code=True)["trust_remote_code"] is True
    assert teacher_load_kwargs(args)["trust_remote_code"] is True  # library: stated as the boolean True
    truthy = config(tmp_path, teacher_model_init_kwargs={"trust_remote_code": "yes"})
    with pytest.raises(DistillationSetupError, match="trust_remote_code='yes'"):
        teacher_load_kwargs(truthy)
    assert teacher_load_kwargs(config(tmp_path), trust_remote_code=False)["trust_remote_code"] is False


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, None), (True, False, torch.bfloat16),
                                                         (False, True, torch.bfloat16)])
def test_auto_dtype_follows_the_cpu_instructions(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_bf16("cpu") is (expected is not None)
    assert parse_dtype("auto", device="cpu") is expected
    assert parse_dtype("auto") is None  # no device named: as loaded
    assert parse_dtype("bfloat16", device="cpu") is torch.bfloat16  # an explicit dtype is kept either way
