"""Named presets that set a published recipe's distillation settings (`preset: tinybert`).

Whatever the user sets explicitly wins over the preset:
- recipes and the `hfkd` command (YAML keys and flags) know which keys were given, so exactly
  those win, whatever their value;
- `DistillationConfig.from_preset(name, **kwargs)` lets every keyword win the same way;
- `DistillationConfig(preset=name, ...)` fills only the fields still at their dataclass default: a
  dataclass cannot tell "left at default" from "set to the default value", so there a field set to
  its default value (e.g. `alpha_hidden=0.0`) is taken by the preset; use `from_preset` for that.
Presets set the distillation objective only; optimisation settings (learning rate, batch size)
and how to build the student are in each preset's `student` and `notes`, because they depend on
the model sizes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    paper: str
    settings: dict[str, Any]
    student: str
    notes: str


# MiniLM v1/v2: the relation term next to the task loss, nothing else.
_RELATIONS_ONLY: dict[str, Any] = dict(alpha_relation=1.0, alpha_kd=0.0, alpha_ce=1.0, alpha_hidden=0.0, alpha_attention=0.0)

PRESETS: dict[str, Preset] = {
    "distilbert": Preset(
        paper="Sanh et al. 2019, DistilBERT, a distilled version of BERT (arXiv:1910.01108), §2-3; T and the "
        "weights 5/2/1 are those of the authors' training command (transformers examples/distillation).",
        settings=dict(
            temperature=2.0, kd_loss="kl", kd_scale_by_t2=True, alpha_kd=5.0, alpha_ce=2.0,
            alpha_hidden=1.0, hidden_loss="cosine", layer_mapping="last",
        ),
        student="every other teacher layer: create_student(teacher, num_layers=depth // 2) "
        "(recipes: student_num_layers).",
        notes="The paper's 2.0·L_mlm is the masked-LM loss of pre-training; alpha_ce weights the task loss "
        "(the masked-LM recipe makes it the MLM loss). L_cos aligns the last hidden states.",
    ),
    "tinybert": Preset(
        paper="Jiao et al. 2020, TinyBERT: Distilling BERT for Natural Language Understanding (Findings of "
        "EMNLP 2020, arXiv:1909.10351), §3 (losses, layer map n = g(m)) and §4 (task-specific distillation: "
        "intermediate layers 20 epochs, then prediction layer 3 epochs, temperature 1).",
        settings=dict(
            stages=[
                {"num_train_epochs": 20, "alpha_hidden": 1.0, "alpha_attention": 1.0,
                 "alpha_kd": 0.0, "alpha_ce": 0.0, "alpha_relation": 0.0},
                {"num_train_epochs": 3, "alpha_kd": 1.0, "alpha_hidden": 0.0, "alpha_attention": 0.0,
                 "alpha_ce": 0.0, "alpha_relation": 0.0},
            ],
            kd_loss="ce", temperature=1.0, hidden_loss="mse", attention_loss="mse",
            include_embeddings=True, layer_mapping="uniform",
        ),
        student="a narrower fresh model (student_hidden_size, e.g. TinyBERT-4: 4 layers, width 312) or "
        "create_student layers; width projections are learned (the paper's W_h, W_e).",
        notes="TinyBERT matches unnormalised attention scores; hfkd matches attention probabilities. The "
        "paper's data augmentation is not part of the preset, and it ran the stages as two fine-tunings "
        "(lr 5e-5, then {1e-5, 2e-5, 3e-5}, batch 32); here one schedule spans both.",
    ),
    "minilm": Preset(
        paper="Wang et al. 2021, MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing "
        "Pretrained Transformers (Findings of ACL 2021, arXiv:2012.15828), §3: Q-Q, K-K, V-V relations of "
        "one teacher layer and the student's last layer.",
        settings={**_RELATIONS_ONLY, "relations": "qq,kk,vv"},
        student="any depth and width: relation heads make widths and head counts free.",
        notes="The paper distills task-agnostically (relations only), then fine-tunes; here the relation "
        "term trains next to the task loss (or use `stages`). It relates the teacher's last layer for "
        "base-size teachers and an upper-middle one for large ones (relation_teacher_layer), with more "
        "relation heads for large teachers (relation_heads; default: the teacher's attention heads).",
    ),
    "minilm_v1": Preset(
        paper="Wang et al. 2020, MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of "
        "Pre-Trained Transformers (NeurIPS 2020, arXiv:2002.10957), §3: last-layer attention distributions "
        "(Q-K) and value relation (V-V), KL.",
        settings={**_RELATIONS_ONLY, "relations": "qk,vv"},
        student="the teacher's number of attention heads (relation_heads = attention heads).",
        notes="As for minilm: distilled next to the task loss rather than before fine-tuning.",
    ),
    "pkd": Preset(
        paper="Sun et al. 2019, Patient Knowledge Distillation for BERT Model Compression (EMNLP 2019, "
        "arXiv:1908.09355), §3-4: alpha 0.5 between soft and hard loss, T from {5, 10, 20}, beta from "
        "{10, 100, 500, 1000} on normalised [CLS] states, PKD-Skip layers.",
        settings=dict(
            alpha_kd=0.5, alpha_ce=0.5, temperature=10.0, kd_loss="kl", alpha_hidden=100.0,
            hidden_loss="pkd_cls", layer_mapping="pkd_skip",
        ),
        student="the teacher's first k layers (student_layer_indices: [0, ..., k-1]).",
        notes="The paper sums the [CLS] loss over layers; hfkd averages over the layer pairs, so beta "
        "is alpha_hidden times the number of pairs. T and beta are the middle of the paper's grids.",
    ),
}


def preset_settings(name: str) -> dict[str, Any]:
    """A fresh copy of the settings of preset `name` (config field -> value)."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not known; choose one of {sorted(PRESETS)}.")
    return copy.deepcopy(PRESETS[name].settings)


def with_preset(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The one rule of every entry point (constructor, `from_preset`, YAML + flags): preset `name`'s
    settings, overridden by whatever the user gave."""
    return {**preset_settings(name), **given}


def apply_preset(config: Any, name: str) -> list[str]:
    """Set preset `name` on a constructed config, where "given" means a field not at its default;
    return the names the preset set."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    settings = preset_settings(name)
    given = {key: getattr(config, key) for key in settings if getattr(config, key) != defaults[key]}
    for key, value in with_preset(name, given).items():
        setattr(config, key, value)
    applied = sorted(set(settings) - set(given))
    logger.info("preset %s set %s%s", name, applied, f"; kept your {sorted(given)}" if given else "")
    return applied
