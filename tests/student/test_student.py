"""Tests for hfkd.student.create: layer-stack discovery, depth- and width-reduced students."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    DistilBertConfig,
    DistilBertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from hfkd.models import find_layer_stack
from hfkd.student.create import create_student, hidden_size, num_layers

VOCAB = 100


def _bert(depth: int = 4) -> BertForSequenceClassification:
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=depth,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
        )
    )


def _distilbert() -> DistilBertForMaskedLM:
    return DistilBertForMaskedLM(
        DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=4, n_heads=4, hidden_dim=37, max_position_embeddings=64)
    )


def _roberta() -> RobertaForSequenceClassification:
    return RobertaForSequenceClassification(
        RobertaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=64,
        )
    )


def _gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    )


def _llama() -> LlamaForCausalLM:
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=37,
            max_position_embeddings=64,
        )
    )


# builder, config field holding the feed-forward width
MODELS: dict[str, tuple[Callable[[], PreTrainedModel], str]] = {
    "bert": (_bert, "intermediate_size"),
    "distilbert": (_distilbert, "hidden_dim"),
    "roberta": (_roberta, "intermediate_size"),
    "gpt2": (_gpt2, "n_inner"),
    "llama": (_llama, "intermediate_size"),
}


@pytest.fixture(scope="module")
def teachers() -> dict[str, PreTrainedModel]:
    torch.manual_seed(0)
    return {name: builder().eval() for name, (builder, _) in MODELS.items()}


def _ids() -> torch.Tensor:
    return torch.randint(2, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))


def _logits(model: PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=_ids()).logits


def _snapshot(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("name", list(MODELS))
def test_depth_student_copies_chosen_layers(teachers: dict[str, PreTrainedModel], name: str) -> None:
    teacher = teachers[name]
    before = _snapshot(teacher)

    student = create_student(teacher, num_layers=2)

    assert type(student) is type(teacher)
    assert num_layers(student) == 2
    assert student.config.hfkd_teacher_layers == [0, 2]
    assert not student.training
    path, student_stack = find_layer_stack(student)
    teacher_path, teacher_stack = find_layer_stack(teacher)
    assert path == teacher_path and len(student_stack) == 2
    for student_idx, teacher_idx in enumerate([0, 2]):
        _assert_same_state(student_stack[student_idx], teacher_stack[teacher_idx])

    # Embeddings, final norm, pooler and head: every tensor outside the stack is copied unchanged.
    teacher_state = teacher.state_dict()
    outside = [k for k in student.state_dict() if not k.startswith(path + ".")]
    assert any("embed" in k or "wte" in k for k in outside)
    for key in outside:
        assert torch.equal(student.state_dict()[key], teacher_state[key]), key
    # A new model: no storage shared with the teacher.
    teacher_ptrs = {p.data_ptr() for p in teacher.parameters()}
    assert not any(p.data_ptr() in teacher_ptrs for p in student.parameters())

    assert _logits(student).shape == _logits(teacher).shape

    assert num_layers(teacher) == 4 and len(teacher_stack) == 4
    assert not hasattr(teacher.config, "hfkd_teacher_layers")
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_explicit_layer_indices() -> None:
    teacher = _bert(depth=6)
    student = create_student(teacher, layer_indices=[1, 5])
    assert student.config.hfkd_teacher_layers == [1, 5]
    _, student_stack = find_layer_stack(student)
    _, teacher_stack = find_layer_stack(teacher)
    _assert_same_state(student_stack[0], teacher_stack[1])
    _assert_same_state(student_stack[1], teacher_stack[5])
    assert create_student(teacher, num_layers=2, layer_indices=[1, 5]).config.hfkd_teacher_layers == [1, 5]


@pytest.mark.parametrize(
    ("teacher_depth", "student_depth", "expected"),
    [(6, 3, [0, 2, 4]), (12, 6, [0, 2, 4, 6, 8, 10]), (6, 6, [0, 1, 2, 3, 4, 5]), (6, 1, [0])],
)
def test_default_spread(teacher_depth: int, student_depth: int, expected: list[int]) -> None:
    student = create_student(_bert(depth=teacher_depth), num_layers=student_depth)
    assert student.config.hfkd_teacher_layers == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_layers": 0}, r"num_layers=0 .*6 layers.*1 to 6"),
        ({"num_layers": 7}, r"num_layers=7 .*6 layers"),
        ({"layer_indices": []}, r"empty"),
        ({"layer_indices": [0, 6]}, r"\[6\] out of range .*6 layers"),
        ({"layer_indices": [-1, 2]}, r"\[-1\] out of range"),
        ({"layer_indices": [2, 2]}, r"repeats \[2\].*unique"),
        ({"layer_indices": [3, 1]}, r"not sorted.*\[1, 3\]"),
        ({"num_layers": 3, "layer_indices": [0, 1]}, r"num_layers=3 disagrees"),
        ({}, r"needs num_layers"),
        ({"hidden_size": 30}, r"hidden_size=30 is not divisible by num_attention_heads=4"),
        ({"hidden_size": 16, "layer_indices": [0, 1]}, r"layer_indices=\[0, 1\] cannot be combined with a width"),
        ({"num_layers": 2, "num_hidden_layers": 2}, r"pass num_layers"),
        ({"num_layers": 2, "hiden_dropout_prob": 0.0}, r"no attribute 'hiden_dropout_prob'"),
        ({"num_layers": 2, "num_labels": 5}, r"cannot copy the teacher's weights.*Drop config overrides"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_student(_bert(depth=6), **kwargs)


def test_config_overrides_are_applied() -> None:
    student = create_student(_bert(), num_layers=2, hidden_dropout_prob=0.0)
    assert student.config.hidden_dropout_prob == 0.0
    assert student.config.hfkd_teacher_layers == [0, 2]


@pytest.mark.parametrize("name", list(MODELS))
def test_width_student_is_random_and_narrow(teachers: dict[str, PreTrainedModel], name: str) -> None:
    teacher = teachers[name]
    ffn_field = MODELS[name][1]
    student = create_student(teacher, num_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=24)

    assert type(student) is type(teacher)
    assert hidden_size(student) == 16 and num_layers(student) == 2
    assert getattr(student.config, ffn_field) == 24
    assert any(24 in p.shape for p in student.parameters())
    assert not hasattr(student.config, "hfkd_teacher_layers")
    assert _logits(student).shape == _logits(teacher).shape
    assert hidden_size(teacher) == 32 and num_layers(teacher) == 4


def test_width_change_of_ffn_only_does_not_copy_weights() -> None:
    teacher = _bert()
    student = create_student(teacher, intermediate_size=20)
    assert num_layers(student) == 4 and student.config.intermediate_size == 20
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(student.state_dict()[embeddings], teacher.state_dict()[embeddings])
    assert not hasattr(student.config, "hfkd_teacher_layers")


def test_width_student_of_a_student_drops_teacher_layers() -> None:
    depth_student = create_student(_bert(), num_layers=2)
    assert not hasattr(create_student(depth_student, hidden_size=16).config, "hfkd_teacher_layers")


def test_llama_width_keeps_head_dim_and_kv_heads_consistent() -> None:
    teacher = _llama()  # 4 heads, 2 KV heads, head_dim 8
    student = create_student(teacher, hidden_size=24, num_attention_heads=3)
    assert student.config.head_dim == 8
    assert student.config.num_key_value_heads == 3  # 2 does not divide 3
    kept = create_student(teacher, hidden_size=16, num_attention_heads=2)
    assert kept.config.head_dim == 8 and kept.config.num_key_value_heads == 2
    assert _logits(student).shape == (2, 7, VOCAB)
    with pytest.raises(ValueError, match=r"num_key_value_heads=2 must divide num_attention_heads=3"):
        create_student(teacher, hidden_size=24, num_attention_heads=3, num_key_value_heads=2)


def test_per_layer_config_lists_are_sliced() -> None:
    teacher = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=37,
            use_sliding_window=True,
            max_window_layers=1,
        )
    )
    assert teacher.config.layer_types == ["full_attention"] + ["sliding_attention"] * 3
    student = create_student(teacher, layer_indices=[0, 3])
    assert student.config.layer_types == ["full_attention", "sliding_attention"]
    assert _logits(student).shape == (2, 7, VOCAB)


def test_base_model_and_dtype() -> None:
    teacher = BertModel(_bert().config).to(torch.bfloat16)
    student = create_student(teacher, num_layers=2)
    assert find_layer_stack(student)[0] == "encoder.layer"
    assert all(p.dtype == torch.bfloat16 for p in student.parameters())
    _assert_same_state(student.embeddings, teacher.embeddings)


def test_find_layer_stack_falls_back_to_largest_matching_module_list() -> None:
    class Toy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = BertConfig(num_hidden_layers=3)
            self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(4) for _ in range(3))
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))

    toy = Toy()
    assert find_layer_stack(toy) == ("blocks", toy.blocks)


def test_find_layer_stack_error_names_model_and_paths() -> None:
    with pytest.raises(ValueError, match=r"Linear.*bert\.encoder\.layer.*model\.layers"):
        find_layer_stack(torch.nn.Linear(2, 2))


def test_helpers_read_aliased_config_fields(teachers: dict[str, PreTrainedModel]) -> None:
    for teacher in teachers.values():
        assert num_layers(teacher) == num_layers(teacher.config) == 4
        assert hidden_size(teacher) == hidden_size(teacher.config) == 32


def test_save_and_reload_round_trip(teachers: dict[str, PreTrainedModel], tmp_path) -> None:
    student = create_student(teachers["gpt2"], num_layers=2)
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(reloaded) is GPT2LMHeadModel
    assert reloaded.config.hfkd_teacher_layers == [0, 2]
    _assert_same_state(reloaded, student)
    assert torch.equal(_logits(reloaded.eval()), _logits(student))
