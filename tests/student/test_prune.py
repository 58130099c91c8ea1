"""Structured pruning (`create_student(init="prune")`): what it keeps, that it is exact at full size,
that every family saves and loads, and what it refuses before any forward pass."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForMaskedLM,
    ElectraConfig,
    ElectraForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from conftest import VOCAB, seq_cls_dataset
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.models import DistillationSetupError
from hfkd.student import STUDENT_INIT_KEY, TEACHER_LAYERS_KEY, create_student
from hfkd.student.importance import compute_importance

SIZES = dict(vocab_size=VOCAB, max_position_embeddings=64)

FAMILIES: dict[str, tuple[Callable[[], PreTrainedModel], type]] = {
    "bert": (lambda: BertForSequenceClassification(BertConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37, **SIZES)),
        AutoModelForSequenceClassification),
    "roberta": (lambda: RobertaForSequenceClassification(RobertaConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37, **SIZES)),
        AutoModelForSequenceClassification),
    "distilbert": (lambda: DistilBertForMaskedLM(DistilBertConfig(
        dim=32, n_layers=4, n_heads=4, hidden_dim=37, vocab_size=VOCAB, max_position_embeddings=64)),
        AutoModelForMaskedLM),
    "gpt2": (lambda: GPT2LMHeadModel(GPT2Config(
        n_embd=32, n_layer=4, n_head=4, n_positions=64, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)),
        AutoModelForCausalLM),
    "llama": (lambda: LlamaForCausalLM(LlamaConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=37,
        **SIZES)), AutoModelForCausalLM),
    "qwen2": (lambda: Qwen2ForSequenceClassification(Qwen2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=37,
        pad_token_id=0, **SIZES)), AutoModelForSequenceClassification),
}


def _teacher(name: str) -> PreTrainedModel:
    torch.manual_seed(0)
    return FAMILIES[name][0]().double().eval()


def _rows(n: int = 16, seed: int = 0) -> list[dict[str, list[int]]]:
    """Tokenized rows of different lengths, so padding is exercised."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, VOCAB, (3 + i % 9,), generator=g).tolist()} for i in range(n)]


IDS = torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))


def _outputs(model: PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_full_size_prune_reproduces_the_teacher(name: str) -> None:
    teacher = _teacher(name)
    student = create_student(teacher, init="prune", calibration_dataset=_rows())
    # Every tensor is a copy (index_select of all units, in order): the same float64 computation.
    assert torch.allclose(_outputs(student), _outputs(teacher), rtol=0, atol=1e-12)
    assert getattr(student.config, TEACHER_LAYERS_KEY) == [0, 1, 2, 3]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_pruned_student_round_trips_through_save_and_load(name: str, tmp_path) -> None:
    teacher = _teacher(name)
    student = create_student(teacher, num_layers=2, hidden_size=16, intermediate_size=20, num_attention_heads=2,
                             init="prune", calibration_dataset=_rows())
    config = student.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 16, 2)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    student.save_pretrained(tmp_path)
    reloaded = FAMILIES[name][1].from_pretrained(tmp_path, dtype=torch.float64)
    assert type(reloaded) is type(student)
    # float64 and the same weights; the reloaded (contiguous) tensors may take other kernels than the
    # sliced ones, which sum in another order: differences at the 1e-16 level, far below this bound
    assert (_outputs(reloaded) - _outputs(student)).abs().max() <= 1e-12
    assert getattr(reloaded.config, STUDENT_INIT_KEY) == {"init": "prune", "calibration_samples": 16}
    assert getattr(reloaded.config, TEACHER_LAYERS_KEY) == getattr(config, TEACHER_LAYERS_KEY)


def test_tied_lm_head_stays_tied() -> None:
    student = create_student(_teacher("gpt2"), hidden_size=16, init="prune", calibration_dataset=_rows())
    assert student.lm_head.weight.data_ptr() == student.transformer.wte.weight.data_ptr()


def _llama_with_known_units() -> LlamaForCausalLM:
    """Layer 1 is the identity, key/value group 0 of layer 0 outputs nothing, neurons 0-4 of layer 2 are
    silent and hidden channel 3 is zeroed by every norm: what pruning must drop first."""
    teacher = _teacher("llama")
    layers = teacher.model.layers
    with torch.no_grad():
        layers[1].self_attn.o_proj.weight.zero_()
        layers[1].mlp.down_proj.weight.zero_()
        layers[0].self_attn.v_proj.weight[:8].zero_()  # kv head 0 (head_dim 8) serves query heads 0 and 1
        layers[2].mlp.up_proj.weight[:5].zero_()
        for module in teacher.modules():
            if type(module).__name__ == "LlamaRMSNorm":
                module.weight[3] = 0.0
    return teacher


def test_importance_finds_the_units_that_do_nothing() -> None:
    importance = compute_importance(_llama_with_known_units(), _rows())
    assert importance.blocks[1] == pytest.approx(0.0, abs=1e-12)  # an identity layer: cos(input, output) = 1
    assert bool((importance.blocks[[0, 2, 3]] > 1e-3).all())
    assert importance.heads[0, :2].abs().max() == 0 and bool((importance.heads[0, 2:] > 0).all())
    assert importance.neurons[2, :5].abs().max() == 0 and bool((importance.neurons[2, 5:] > 0).all())
    assert importance.channels[3] == 0 and int((importance.channels > 0).sum()) == 31


def test_pruning_keeps_the_most_important_units_and_whole_kv_groups() -> None:
    teacher = _llama_with_known_units()
    student = create_student(teacher, num_layers=3, hidden_size=31, intermediate_size=32, num_attention_heads=2,
                             init="prune", calibration_dataset=_rows())
    assert getattr(student.config, TEACHER_LAYERS_KEY) == [0, 2, 3]
    assert (student.config.num_key_value_heads, student.config.head_dim) == (1, 8)
    channels = [c for c in range(32) if c != 3]
    t0, s0 = teacher.model.layers[0].self_attn, student.model.layers[0].self_attn
    # group 1 kept whole: kv head 1 (rows 8..15) with its query heads 2 and 3 (rows 16..31)
    assert torch.equal(s0.k_proj.weight, t0.k_proj.weight[8:16][:, channels])
    assert torch.equal(s0.q_proj.weight, t0.q_proj.weight[16:32][:, channels])
    assert torch.equal(s0.o_proj.weight, t0.o_proj.weight[channels][:, 16:32])
    t2, s2 = teacher.model.layers[2].mlp, student.model.layers[1].mlp
    assert torch.equal(s2.down_proj.weight, t2.down_proj.weight[channels][:, 5:])
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight[:, channels])


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("bert", dict(hidden_size=20), r"not a multiple of the teacher's head_dim=8.*\[8, 16, 24, 32\]"),
        ("bert", dict(num_attention_heads=2), r"would change head_dim from 8.*num_attention_heads=4"),
        ("bert", dict(num_attention_heads=0), r"num_attention_heads=0 .* integer from 1 to 4"),
        ("llama", dict(num_attention_heads=5), r"num_attention_heads=5 .* integer from 1 to 4"),
        ("llama", dict(num_attention_heads=3), r"whole groups; choose from \[2, 4\]"),
        ("llama", dict(intermediate_size=0), r"intermediate_size=0 .* integer from 1 to 37"),
        ("llama", dict(hidden_size=64), r"hidden_size=64 .* integer from 1 to 32"),
        ("llama", dict(num_layers=5), r"num_layers=5 .* 4 layers"),
        ("llama", dict(num_attention_heads=2, num_key_value_heads=2), r"omit it \(it becomes 1\)"),
        ("llama", dict(calibration_dataset=[]), r"calibration_samples=0 .* at least 8 rows"),
        ("llama", dict(calibration_dataset=_rows(4)), r"calibration_samples=4 .* at least 8 rows"),
        ("llama", dict(calibration_samples=32), r"has 16 rows but calibration_samples=32"),
        ("llama", dict(calibration_dataset=[{"text": "a"}] * 8), r"need a non-empty input_ids column"),
        ("llama", dict(calibration_dataset=None), r"needs calibration_dataset"),
    ],
)
def test_bad_shapes_and_calibration_sets_are_refused_before_any_forward(name, kwargs, match, monkeypatch) -> None:
    monkeypatch.setattr("hfkd.student.prune.compute_importance", pytest.fail)
    kwargs = {"calibration_dataset": _rows(), **kwargs}
    with pytest.raises(ValueError, match=match):  # DistillationSetupError, or create_student's ValueError
        create_student(_teacher(name), init="prune", **kwargs)


def test_unknown_family_names_the_supported_ones() -> None:
    teacher = ElectraForSequenceClassification(ElectraConfig(
        vocab_size=VOCAB, embedding_size=16, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=20, max_position_embeddings=64))
    with pytest.raises(DistillationSetupError, match=r"model_type='electra'.*\['bert', 'distilbert', 'gpt2'"):
        create_student(teacher, num_layers=1, init="prune", calibration_dataset=_rows())


def test_init_copy_and_random() -> None:
    teacher = _teacher("bert")
    with pytest.raises(ValueError, match="init='copy' needs the teacher's width"):
        create_student(teacher, hidden_size=16, init="copy")
    with pytest.raises(ValueError, match=r"init='fresh' is invalid; choose one of \['copy', 'prune', 'random'\]"):
        create_student(teacher, num_layers=2, init="fresh")
    with pytest.raises(ValueError, match="calibration_dataset is only read by init='prune'"):
        create_student(teacher, hidden_size=16, calibration_dataset=_rows())
    fresh = create_student(teacher, num_layers=2, init="random")
    assert getattr(fresh.config, STUDENT_INIT_KEY) == {"init": "random"}
    assert not hasattr(fresh.config, TEACHER_LAYERS_KEY)
    assert not torch.equal(fresh.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    copied = create_student(teacher, num_layers=2)
    assert getattr(copied.config, STUDENT_INIT_KEY) == {"init": "copy"}


def test_hidden_state_distillation_with_a_pruned_narrower_student(tmp_path) -> None:
    torch.manual_seed(0)
    teacher = FAMILIES["bert"][0]()
    data = seq_cls_dataset(16, labels=2)
    student = create_student(teacher, num_layers=2, hidden_size=16, init="prune", calibration_dataset=data)
    args = DistillationConfig(
        output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, per_device_train_batch_size=8, max_steps=2,
        learning_rate=1e-3, save_strategy="no", alpha_kd=1.0, alpha_hidden=1.0, layer_mapping="skip",
        disable_tqdm=True,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    # the pruned width (16) is projected to the teacher's (32) for the hidden-state term
    assert {tuple(p.shape) for p in student.hfkd_projections.parameters() if p.dim() == 2} == {(32, 16)}
