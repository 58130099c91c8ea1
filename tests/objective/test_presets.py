"""Presets: the published settings by name, explicit values win, usable from YAML and flags."""

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import seq_cls_dataset, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.app.arguments import ModelArguments, parse_args
from hfkd.objective.layer_mapping import resolve_layer_mapping
from hfkd.objective.losses import hidden_pkd_cls_loss
from hfkd.objective.presets import PRESETS
from tolerance import float32_bound


def make(**kw):
    return DistillationConfig(output_dir="unused", report_to=[], **kw)


def test_presets_set_the_papers_settings():
    distilbert = make(preset="distilbert")
    assert (distilbert.temperature, distilbert.alpha_kd, distilbert.alpha_ce, distilbert.alpha_hidden) == (2.0, 5.0, 2.0, 1.0)
    assert (distilbert.hidden_loss, distilbert.layer_mapping) == ("cosine", "last")
    tinybert = make(preset="tinybert")
    assert [s["num_train_epochs"] for s in tinybert.stages] == [20.0, 3.0] and tinybert.num_train_epochs == 23.0
    assert tinybert.stages[0]["alpha_hidden"] == tinybert.stages[0]["alpha_attention"] == 1.0
    assert tinybert.stages[0]["alpha_kd"] == tinybert.stages[1]["alpha_hidden"] == 0.0
    assert (tinybert.kd_loss, tinybert.temperature, tinybert.include_embeddings) == ("ce", 1.0, True)
    minilm = make(preset="minilm")
    assert (minilm.alpha_relation, minilm.relations, minilm.alpha_kd) == (1.0, "qq,kk,vv", 0.0)
    assert make(preset="minilm_v1").relations == "qk,vv"
    pkd = make(preset="pkd")
    assert (pkd.alpha_kd, pkd.alpha_ce, pkd.temperature, pkd.alpha_hidden) == (0.5, 0.5, 10.0, 100.0)
    assert (pkd.hidden_loss, pkd.layer_mapping) == ("pkd_cls", "pkd_skip")
    assert all(p.paper and p.student and p.notes for p in PRESETS.values())


def test_values_set_by_the_user_win_over_the_preset():
    args = make(preset="distilbert", temperature=4.0)
    assert args.temperature == 4.0 and args.alpha_kd == 5.0
    args = make(preset="tinybert", stages=[{"max_steps": 2, "alpha_hidden": 1.0}])
    assert args.max_steps == 2 and len(args.stages) == 1
    # The constructor cannot tell an explicit default value from a default: the preset takes it ...
    assert make(preset="distilbert", alpha_hidden=0.0).alpha_hidden == 1.0
    # ... from_preset can: every keyword wins.
    args = DistillationConfig.from_preset("distilbert", output_dir="unused", report_to=[], alpha_hidden=0.0)
    assert args.alpha_hidden == 0.0 and args.alpha_kd == 5.0 and args.preset == "distilbert"


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="preset='bert-pkd' is not known; choose one of"):
        make(preset="bert-pkd")


def test_presets_and_new_fields_parse_from_yaml_and_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "out"), "preset": "tinybert", "relation_heads": 4,
        "stages": [{"max_steps": 2, "alpha_hidden": 1.0}, {"max_steps": 1, "alpha_kd": 1.0}],
    }))
    _, args = parse_args([ModelArguments, DistillationConfig], ["--config", str(path)])
    assert args.preset == "tinybert" and args.max_steps == 3 and args.relation_heads == 4 and args.kd_loss == "ce"
    _, args = parse_args([ModelArguments, DistillationConfig], [
        "--config", str(path), "--stages", '[{"max_steps": 5}]', "--alpha_relation", "2", "--relations", "qk,vv",
        "--relation_teacher_layer", "3"])
    assert args.max_steps == 5 and args.alpha_relation == 2.0 and args.relations == "qk,vv"
    assert args.relation_teacher_layer == 3
    # Keys the user gives win even when they equal the field's default.
    _, args = parse_args([ModelArguments, DistillationConfig], [
        "--output_dir", str(tmp_path), "--preset", "distilbert", "--alpha_hidden", "0", "--temperature", "2.0"])
    assert args.alpha_hidden == 0.0 and args.alpha_kd == 5.0 and args.preset == "distilbert"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path), "preset": "pkd", "layer_mapping": "uniform"}))
    _, args = parse_args([ModelArguments, DistillationConfig], ["--config", str(path)])
    assert args.layer_mapping == "uniform" and args.hidden_loss == "pkd_cls"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_trains_a_tiny_student(tmp_path, name):
    teacher, student = seq_cls_pair()
    # TinyBERT's 20 + 3 epochs shrunk to 1 + 1 steps.
    extra = {"stages": [{"max_steps": 1, "alpha_hidden": 1.0, "alpha_attention": 1.0, "alpha_kd": 0.0, "alpha_ce": 0.0},
                        {"max_steps": 1, "alpha_kd": 1.0, "alpha_hidden": 0.0, "alpha_attention": 0.0}]}
    args = DistillationConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_train_batch_size=8,
                              max_steps=2 if name != "tinybert" else -1, save_strategy="no", disable_tqdm=True, logging_steps=1, preset=name,
                              **(extra if name == "tinybert" else {}))
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=seq_cls_dataset(16))
    trainer.train()
    assert trainer.state.global_step == 2
    assert trainer.distillation_settings()["preset"] == name


def test_pkd_cls_loss_is_the_papers_normalised_cls_distance():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 6, 8, generator=g), torch.randn(4, 6, 8, generator=g)
    s64, t64 = s.double(), t.double()
    expected = sum(float(((s64[i, 0] / s64[i, 0].norm() - t64[i, 0] / t64[i, 0].norm()) ** 2).sum())
                   for i in range(4)) / 4
    # Float32 unit vectors: each entry within a few ulps (ulps=2: the norm, then the division); the
    # squared differences of entries are at most (|s_i| + |t_i|)^2, 4 per pair of unit vectors.
    unit_s, unit_t = F.normalize(s64[:, 0], dim=-1), F.normalize(t64[:, 0], dim=-1)
    bound = float32_bound(((unit_s.abs() + unit_t.abs()) ** 2).sum(-1) / 4, n=8, ulps=2)
    assert hidden_pkd_cls_loss(s, t).item() == pytest.approx(expected, abs=bound)
    # Scale-free: normalising 3s and s gives the same unit vector up to those ulps, squared.
    assert hidden_pkd_cls_loss(s, 3 * s).item() == pytest.approx(0.0, abs=(2 * float32_bound(1.0, n=8, ulps=2)) ** 2)
    assert hidden_pkd_cls_loss(s, t).item() == pytest.approx(
        float((2 - 2 * F.cosine_similarity(s64[:, 0], t64[:, 0])).mean()), abs=bound)


def test_pkd_skip_mapping_leaves_out_the_last_layer():
    assert resolve_layer_mapping("pkd_skip", student_layers=6, teacher_layers=12) == [(i, 2 * i) for i in range(1, 6)]
    with pytest.raises(ValueError, match="2 or more layers"):
        resolve_layer_mapping("pkd_skip", student_layers=1, teacher_layers=12)
