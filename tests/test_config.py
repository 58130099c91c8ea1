import pytest
from transformers import HfArgumentParser, TrainingArguments

from hfkd import DistillationConfig


def make(**kw):
    return DistillationConfig(output_dir="unused", report_to=[], **kw)


def test_is_training_arguments_with_documented_fields():
    assert issubclass(DistillationConfig, TrainingArguments)
    config = make()
    assert config.temperature == 2.0 and config.kd_loss == "kl" and config.kd_scale_by_t2
    import dataclasses

    own = [f for f in dataclasses.fields(DistillationConfig) if f.name not in TrainingArguments.__dataclass_fields__]
    assert own and all(f.metadata.get("help") for f in own)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"temperature": 0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"alpha_kd": -0.1}, "alpha_kd must be a finite number >= 0"),
        ({"alpha_kd": 0, "alpha_ce": 0}, "all loss weights"),
        ({"kd_loss": "kld"}, "kd_loss='kld' is not supported"),
        ({"hidden_loss": "l1"}, "hidden_loss='l1' is not supported"),
        ({"attention_loss": "cosine"}, "attention_loss='cosine' is not supported"),
        ({"jsd_beta": 1.5}, "jsd_beta must be in"),
        ({"layer_mapping": "diagonal"}, "neither one of"),
        ({"layer_mapping": [[1, 2, 3]]}, "not a \\[student_layer, teacher_layer\\] pair"),
        ({"projection_learning_rate": 0.0}, "projection_learning_rate must be > 0"),
    ],
)
def test_invalid_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_layer_mapping_from_json_and_cli():
    assert make(layer_mapping="[[1, 2], [2, 4]]").layer_mapping == [(1, 2), (2, 4)]
    (config,) = HfArgumentParser(DistillationConfig).parse_args_into_dataclasses(
        ["--output_dir", "x", "--temperature", "4", "--alpha_hidden", "1", "--layer_mapping", "[[0,0],[1,3]]",
         "--teacher_model_init_kwargs", '{"dtype": "float32"}', "--report_to", "none"]
    )
    assert config.temperature == 4.0 and config.layer_mapping == [(0, 0), (1, 3)]
    assert config.teacher_model_init_kwargs == {"dtype": "float32"}


def test_needs_teacher():
    assert make(alpha_kd=0, alpha_ce=1).needs_teacher is False
    assert make(alpha_kd=0, alpha_ce=1, alpha_hidden=1).needs_teacher is True


def test_teacher_dtype_typo_is_one_line_at_config_time():
    with pytest.raises(ValueError, match=r"teacher_dtype='bf16' is not a torch floating dtype; use 'auto', 'bfloat16'"):
        make(teacher_dtype="bf16")
    assert make(teacher_dtype="bfloat16").teacher_dtype == "bfloat16"
    assert make(teacher_dtype="auto").teacher_dtype == "auto"
