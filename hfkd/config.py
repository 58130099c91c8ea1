"""`DistillationConfig`: the distillation settings, as a real `transformers.TrainingArguments`.

Every field carries `metadata={"help": ...}` so `HfArgumentParser` turns it into a documented
command-line flag, and `__post_init__` rejects impossible settings before any compute is spent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers import TrainingArguments

from hfkd.student.quantization import INT8_SCHEMES
from hfkd.teacher.fast import TEACHER_QUANTIZATIONS
from hfkd.teacher.loading import parse_dtype
from hfkd.objective.losses import ATTENTION_LOSSES, HIDDEN_LOSSES, KD_LOSSES, require_topk_loss
from hfkd.teacher.ensemble import TEACHER_COMBINATIONS, check_teacher_weights
from hfkd.objective.presets import PRESETS, apply_preset, with_preset
from hfkd.objective.relations import parse_relations
from hfkd.objective.schedules import SCHEDULES, check_schedule_settings
from hfkd.objective.stages import loss_weights_at, parse_stages, stage_unit, total_length
from hfkd.objective.terms import TERMS, check_weights
from hfkd.trainers.on_policy import check_on_policy_settings

LAYER_MAPPING_STRATEGIES = ("uniform", "pkd_skip", "last", "skip")


def option(default: Any, help: str) -> Any:
    """A documented dataclass field: HfArgumentParser turns it into a `--flag` with this help."""
    return field(default=default, metadata={"help": help})

PROJECTION_INITS = ("xavier", "normal", "identity")


@dataclass
class DistillationConfig(TrainingArguments):
    r"""Training arguments plus the distillation objective.

    The training loss is exactly
    `alpha_ce * CE(student, labels) + alpha_kd * KD + alpha_hidden * HIDDEN + alpha_attention * ATTN
    + alpha_relation * RELATION + Σ term_weights[name] * NAME` (terms added with `hfkd.register_term`),
    each term logged separately (`ce_loss`, `kd_loss`, ...). With
    `stages`, the weights are those of the stage the current step is in. `preset` fills the fields
    left at their default with a published recipe's settings (see `hfkd.objective.presets`).

    Layer indices in `layer_mapping` pairs are *hidden-state* indices: 0 is the embedding output and
    `i` is the output of the i-th transformer layer (as in `outputs.hidden_states`). Attention maps are
    matched for the same pairs (hidden index `i` ↔ attention map of layer `i`, 1-based); pairs on the
    embedding output have no attention map and only enter the hidden-state loss.
    """

    temperature: float = option(2.0, "Softmax temperature T for the KD term (> 0).")
    alpha_kd: float = option(0.5, "Weight of the soft-logit KD term.")
    alpha_ce: float = option(0.5, "Weight of the student's task loss on the hard labels.")
    alpha_hidden: float = option(0.0, "Weight of the hidden-state term over the mapped layers.")
    alpha_attention: float = option(
        0.0,
        "Weight of the attention term: post-softmax attention probabilities "
        "(`output_attentions`), which needs eager attention; hfkd switches both models to it.",
    )
    alpha_relation: float = option(
        0.0,
        "Weight of the self-attention relation term (MiniLM/MiniLMv2): KL between the "
        "teacher's and student's softmax(X·Y^T/sqrt(d)) relations of Q/K/V (see `relations`).",
    )
    term_weights: dict | str | None = option(
        None,
        "Weights of terms registered with hfkd.register_term (dict or JSON string), e.g. "
        '{"margin": 0.5}; stages and loss_weights_end name them as alpha_<name>.',
    )
    kd_loss: str = option(
        "kl",
        f"KD loss on logits, one of {sorted(KD_LOSSES)}. `kl` is Hinton's "
        "KL(softmax(t/T) || softmax(s/T)) * T**2.",
    )
    kd_scale_by_t2: bool = option(True, "Multiply distribution-based KD losses by T**2 (Hinton et al.).")
    jsd_beta: float = option(
        0.5,
        "Mixture weight of the generalized JSD: M = beta*p_teacher + (1-beta)*p_student; "
        "0 is forward KL, 1 is reverse KL.",
    )
    hidden_loss: str = option("mse", f"Hidden-state loss, one of {sorted(HIDDEN_LOSSES)}.")
    attention_loss: str = option("mse", f"Attention loss, one of {sorted(ATTENTION_LOSSES)}.")
    relations: str = option(
        "qq,kk,vv",
        "Relations of the relation term, comma-separated pairs of q, k, v: 'qq,kk,vv' is "
        "MiniLMv2, 'qk,vv' is MiniLM (attention distributions and value relation).",
    )
    relation_heads: int | None = option(
        None,
        "Relation heads, the same for both models so widths may differ; must divide every "
        "related q/k/v width. Default: the teacher's attention heads.",
    )
    relation_teacher_layer: int | None = option(
        None,
        "Teacher layer (1-based) whose Q/K/V are related. Default: the last; MiniLMv2 "
        "takes an upper-middle layer of large teachers.",
    )
    relation_student_layer: int | None = option(
        None,
        "Student layer (1-based) whose Q/K/V are related. Default: the last.",
    )
    layer_mapping: str = option(
        "uniform",
        "Student↔teacher layer pairs for hidden/attention losses: 'uniform' (TinyBERT: "
        "student layer i ↔ teacher layer (i+1)*k-1, 0-based, k = teacher/student depth), "
        "'pkd_skip' (uniform without the last pair, Patient KD), 'last', "
        "'skip' (the teacher layers the student was copied from), or a JSON list of "
        "[student, teacher] hidden-state indices (0 = embedding output).",
    )
    hidden_layer_mapping: str | None = option(
        None,
        "Layer map of the hidden-state term alone (same forms as layer_mapping; default: layer_mapping).",
    )
    attention_layer_mapping: str | None = option(
        None,
        "Layer map of the attention term alone (same forms as layer_mapping; default: layer_mapping).",
    )
    include_embeddings: bool = option(
        False,
        "Also match the embedding outputs (hidden-state index 0 of both models).",
    )
    projection_init: str = option(
        "xavier",
        f"Initialisation of the student→teacher width projections, one of {PROJECTION_INITS}.",
    )
    projection_learning_rate: float | None = option(
        None,
        "Learning rate of the projection parameters (default: learning_rate).",
    )
    teacher_model_init_kwargs: dict | str | None = option(
        None,
        "Keyword arguments (dict or JSON string) for `from_pretrained` when the teacher is "
        "given as a name or path. trust_remote_code here must be the boolean true, and in recipes needs "
        "the --trust_remote_code flag too.",
    )
    teacher_dtype: str | None = option(
        None,
        "Run the teacher in this dtype (e.g. 'bfloat16'); 'auto': bfloat16 where the device has bf16 matrix "
        "instructions (a bf16 GPU; a CPU with AVX512-BF16 or AMX), else as loaded; default: as loaded.",
    )
    teacher_quantization: str | None = option(
        None,
        "'int8_dynamic': quantize the teacher's linear layers to int8 on the fly (CPU only), a "
        "cheaper forward pass; its fidelity is measured before training (see teacher_min_agreement).",
    )
    teacher_compile: bool = option(
        False,
        "Run the teacher through torch.compile (fidelity measured as for teacher_quantization).",
    )
    teacher_min_agreement: float = option(
        0.99,
        "With teacher_dtype, teacher_quantization or teacher_compile set: the fraction of evaluation "
        "items on which the cheaper teacher's top class must equal the full teacher's, or training is refused.",
    )
    teacher_cache_dir: str | None = option(
        None,
        "Folder of the teacher-output cache of the train split: `hfkd cache-teacher` builds it, "
        "`hfkd distill` trains from it when it exists (the teacher then runs only for hidden/attention "
        "terms). Not for inputs that change every epoch, such as random MLM masking.",
    )
    teacher_cache_top_k: int | None = option(
        None,
        "Cache only the teacher's k most likely classes per item: their log-probabilities at "
        "`temperature`, the log of the remaining mass and their ids, instead of all logits (length × vocab "
        "floats per row for an LM). KD then compares the k+1 buckets (kd_loss kl or ce); k = vocab size "
        "is exact. The cache is tied to top_k and temperature: changing either needs a rebuild.",
    )
    teacher_cache_shard_rows: int = option(
        4096,
        "Rows per shard of a teacher cache build (shards also stay under 256 MiB of outputs): the unit "
        "of work that processes share under accelerate launch, that a killed build resumes from, and "
        "that the build holds in memory.",
    )
    nonfinite_loss: str = option(
        "raise",
        "What a NaN/inf loss does: 'raise' stops training naming the step and term (the last "
        "saved checkpoint is intact); 'skip' drops that optimizer update (gradients zeroed, weights and "
        "optimizer state untouched, as AMP's GradScaler does) and logs it, up to `max_skipped_updates`.",
    )
    max_skipped_updates: int = option(
        10,
        "With nonfinite_loss='skip': stop (as 'raise' does) once more updates than this are skipped.",
    )
    teacher_weights: list[float] | None = option(
        None,
        "One weight per teacher when teacher_model is a list (divided by their sum; default "
        "equal). With cached logits only, their count says how many teachers the cache holds.",
    )
    teacher_combination: str = option(
        "prob_mean",
        f"How several teachers make one KD target, one of {list(TEACHER_COMBINATIONS)}: "
        "'prob_mean' = Σ w_i softmax(z_i/T) (the mixture of their distributions), 'logit_mean' = "
        "Σ w_i z_i. Hidden/attention terms use the first teacher.",
    )
    temperature_schedule: str = option(
        "constant",
        f"Temperature over the optimizer steps, one of {list(SCHEDULES)}: from `temperature` "
        "to `temperature_end` (see hfkd.objective.schedules); logged as `temperature`.",
    )
    temperature_end: float | None = option(
        None,
        "Temperature at the end of a linear/cosine temperature_schedule (> 0).",
    )
    loss_weight_schedule: str = option(
        "constant",
        f"Loss weights over the optimizer steps, one of {list(SCHEDULES)}: each alpha_* goes "
        "from its value to its entry in `loss_weights_end`; logged as alpha_*.",
    )
    loss_weights_end: dict | str | None = option(
        None,
        'End values (dict or JSON string) of a linear/cosine loss_weight_schedule, e.g. '
        '{"alpha_kd": 0.2, "alpha_ce": 0.8}; weights not listed stay constant.',
    )
    merge_adapter_on_save: bool = option(
        False,
        "With a PEFT student (peft_config), save_model writes the merged plain student instead "
        "of the adapter (checkpoints keep the adapter, for resuming).",
    )
    stages: list | str | None = option(
        None,
        "Train in stages (TinyBERT): a list (JSON on the command line) of dicts, each with "
        "its length (`num_train_epochs` or `max_steps`, one unit for all) and `alpha_*` weights that "
        "override the top-level ones during it. The run's length is the stages' sum; one learning-rate "
        "schedule spans it; resuming works across stage boundaries.",
    )
    preset: str | None = option(
        None,
        f"Published recipe whose distillation settings fill the fields left at their default: "
        f"{sorted(PRESETS)} (hfkd.objective.presets names each paper).",
    )
    lmbda: float = option(
        0.0,
        "On-policy distillation (GKD): the share of optimizer steps trained on completions the student "
        "samples for the dataset's prompts (0 = off-policy, 1 = always on-policy); alpha_ce is left out on "
        "those steps (its labels would be the student's own tokens) unless reference_ce is set; see "
        "hfkd.trainers.on_policy.",
    )
    reference_ce: bool = option(
        False,
        "With lmbda > 0: on the steps trained on student samples, apply the task loss (alpha_ce) to the "
        "dataset's reference completions of the same prompts instead of leaving it out (MiniLLM's "
        "pre-training term, Gu et al. 2024): the student keeps fitting real text while it learns from its "
        "own samples. One more student forward and backward on those steps; needs a dataset with completions.",
    )
    seq_kd: bool = option(
        False,
        "Sequence-level KD: the steps not on student samples train on completions the (first) teacher "
        "generates instead of the dataset's.",
    )
    max_new_tokens: int = option(128, "With lmbda > 0 or seq_kd: the most tokens a generated completion has.")
    generation_temperature: float = option(
        1.0, "Sampling temperature of generated completions (0 = greedy); the KD term keeps `temperature`.")
    generation_top_p: float = option(1.0, "Nucleus sampling threshold of generated completions (1 = off).")
    generation_top_k: int = option(0, "Top-k sampling of generated completions (0 = off).")
    length_bucketing: bool = option(
        False,
        "Batch rows of similar length (less padding, faster steps) in a random order: each epoch, sort "
        "shuffled mega-batches by length, cut them into batches and shuffle those (hfkd.trainers.sampling). "
        "Deterministic given the seed (DDP ranks and resume agree). Needs train_sampling_strategy='random'.",
    )
    bucket_megabatch: int = option(
        50,
        "With length_bucketing: batches per mega-batch sorted by length (more: less padding, less random).",
    )
    report_at_end: bool = option(
        False,
        "After training, measure teacher and student (size, score, latency, distillation "
        "metric) and write report.json/.md/.png to output_dir/report; the model card includes it.",
    )
    report_alpha: float = option(0.5, "alpha of the distillation metric in the report and model card.")
    qat_start: float | None = option(
        None,
        "Quantization-aware distillation: after this fraction of the optimizer steps (0.8: the last fifth) the "
        "student's nn.Linear layers (and, for onnxruntime, its embedding tables) train fake-quantised int8 as "
        "qat_scheme deploys them (straight-through estimator); the saved student stays plain fp32.",
    )
    qat_scheme: str = option(
        "onnxruntime",
        "The dynamic int8 rounding QAT matches: onnxruntime (quantize_dynamic(per_channel=True): weights "
        "per channel in ±127, activations and embedding tables 0..255) or torch (quantize_dynamic with "
        "per_channel_dynamic_qconfig, x86: activations 0..127).",
    )

    def __post_init__(self) -> None:
        if cpu_only_multiprocess():
            self.use_cpu = True  # `accelerate launch --multi_gpu` without GPUs: DDP over gloo on the CPU
        self._check_unused_fields()  # before a preset fills fields in
        if self.preset is not None:
            apply_preset(self, self.preset)
        self.term_weights = _parse_term_weights(self.term_weights)
        if self.stages is not None:
            self._set_length_from_stages()
        super().__post_init__()
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number, got {self.temperature!r}.")
        if self.temperature <= 0:
            raise ValueError(
                f"temperature must be > 0, got {self.temperature}; typical values are 1 to 8."
            )
        check_weights(self.base_loss_weights, allow_all_zero=self.stages is not None)
        parse_relations(self.relations)
        for name in ("relation_heads", "relation_teacher_layer", "relation_student_layer"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer (layers are 1-based) or unset, got {value!r}.")
        _check_choice("kd_loss", self.kd_loss, KD_LOSSES)
        _check_choice("hidden_loss", self.hidden_loss, HIDDEN_LOSSES)
        _check_choice("attention_loss", self.attention_loss, ATTENTION_LOSSES)
        _check_choice("projection_init", self.projection_init, PROJECTION_INITS)
        if not 0.0 <= self.report_alpha <= 1.0:
            raise ValueError(f"report_alpha must be in [0, 1], got {self.report_alpha}.")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise ValueError(f"jsd_beta must be in [0, 1], got {self.jsd_beta}.")
        if self.projection_learning_rate is not None and self.projection_learning_rate <= 0:
            raise ValueError(
                f"projection_learning_rate must be > 0, got {self.projection_learning_rate}."
            )
        if isinstance(self.teacher_cache_shard_rows, bool) or not isinstance(self.teacher_cache_shard_rows, int) \
                or self.teacher_cache_shard_rows < 1:
            raise ValueError(f"teacher_cache_shard_rows must be an int >= 1, got {self.teacher_cache_shard_rows!r}.")
        if self.teacher_cache_top_k is not None:
            if isinstance(self.teacher_cache_top_k, bool) or not isinstance(self.teacher_cache_top_k, int) \
                    or self.teacher_cache_top_k < 1:
                raise ValueError(
                    f"teacher_cache_top_k must be an int >= 1 (e.g. 50), got {self.teacher_cache_top_k!r}; "
                    "unset it to cache all logits."
                )
            require_topk_loss(self.kd_loss, "unset teacher_cache_top_k")
            if self.temperature_schedule != "constant":
                raise ValueError(
                    "a top-k teacher cache holds log-probabilities at one temperature, so temperature_schedule "
                    "must be 'constant': unset teacher_cache_top_k (full logits) or the schedule."
                )
        parse_dtype(self.teacher_dtype)
        if self.teacher_quantization is not None:
            _check_choice("teacher_quantization", self.teacher_quantization, TEACHER_QUANTIZATIONS)
        if self.teacher_compile and self.uses("relation"):
            raise ValueError(
                "teacher_compile with alpha_relation > 0: the relation term hooks the teacher's attention "
                "projections around each forward, which a compiled teacher would retrace; drop one of them."
            )
        if not 0.0 <= self.teacher_min_agreement <= 1.0:
            raise ValueError(f"teacher_min_agreement must be in [0, 1], got {self.teacher_min_agreement}.")
        self._check_length_bucketing()
        _check_choice("nonfinite_loss", self.nonfinite_loss, ("raise", "skip"))
        _check_choice("qat_scheme", self.qat_scheme, INT8_SCHEMES)
        if self.qat_start is not None and not (isinstance(self.qat_start, (int, float)) and 0 <= self.qat_start < 1):
            raise ValueError(
                f"qat_start must be a fraction of the run in [0, 1) (0.8: the last fifth quantization-aware), "
                f"got {self.qat_start!r}; unset it to train in fp32 throughout."
            )
        if self.max_skipped_updates < 0:
            raise ValueError(f"max_skipped_updates must be >= 0, got {self.max_skipped_updates}.")
        if self.nonfinite_loss == "skip" and self.deepspeed:
            raise ValueError(
                "nonfinite_loss='skip' is not supported under DeepSpeed, whose optimizer hfkd does not "
                "step: use nonfinite_loss='raise' (DeepSpeed's fp16 loss scaler skips overflowing steps itself)."
            )
        self.layer_mapping = _parse_layer_mapping(self.layer_mapping)
        for name in ("hidden_layer_mapping", "attention_layer_mapping"):
            if getattr(self, name) is not None:
                setattr(self, name, _parse_layer_mapping(getattr(self, name), name))
        if isinstance(self.teacher_model_init_kwargs, str):
            self.teacher_model_init_kwargs = json.loads(self.teacher_model_init_kwargs)
        if isinstance(self.loss_weights_end, str):
            try:
                self.loss_weights_end = json.loads(self.loss_weights_end)
            except json.JSONDecodeError:
                raise ValueError(
                    f"loss_weights_end={self.loss_weights_end!r} is not JSON; write e.g. '{{\"alpha_kd\": 0.2}}'."
                ) from None
        check_schedule_settings(self)
        if self.stages and self.loss_weight_schedule != "constant":
            raise ValueError(
                "stages and loss_weight_schedule both set the loss weights over the run: use one of them "
                "(a temperature_schedule works with stages)."
            )
        check_teacher_weights(self.teacher_weights, self.teacher_combination, self.kd_loss)
        check_on_policy_settings(self)

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> DistillationConfig:
        """A config with preset `name` where every keyword wins, even one equal to a field's default."""
        config = cls(**{**with_preset(name, kwargs), "preset": None})
        config.preset = name  # applied above; kept as a record for the model card
        return config

    def _check_length_bucketing(self) -> None:
        if isinstance(self.bucket_megabatch, bool) or not isinstance(self.bucket_megabatch, int) \
                or self.bucket_megabatch < 1:
            raise ValueError(f"bucket_megabatch must be an int >= 1 (e.g. 50), got {self.bucket_megabatch!r}.")
        if self.length_bucketing and self.train_sampling_strategy != "random":
            raise ValueError(
                f"length_bucketing replaces train_sampling_strategy={self.train_sampling_strategy!r}: "
                "keep the strategy 'random' (the default) or unset length_bucketing."
            )

    def _set_length_from_stages(self) -> None:
        """Validate `stages` and make the run as long as their sum (before Trainer reads the length)."""
        self.stages = parse_stages(self.stages, self.base_loss_weights)
        unit, length = stage_unit(self.stages), total_length(self.stages)
        if unit == "max_steps":
            if self.max_steps > 0 and self.max_steps != length:
                raise ValueError(
                    f"max_steps={self.max_steps} disagrees with the stages' {length} steps; leave max_steps "
                    "unset, the stages set the run's length."
                )
            self.max_steps = int(length)
        else:
            if self.max_steps > 0:
                raise ValueError(
                    f"max_steps={self.max_steps} would override the stages' {length} epochs; leave it unset "
                    "or give the stages' lengths in max_steps."
                )
            self.num_train_epochs = length

    # Fields a family of trainers cannot honour (refused at construction unless at their default).
    unsupported_fields: ClassVar[tuple[str, ...]] = ()

    def _check_unused_fields(self) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.default is not dataclasses.MISSING}
        for name in self.unsupported_fields:
            if getattr(self, name) != defaults[name]:
                raise ValueError(
                    f"{type(self).__name__} does not use {name} (got {getattr(self, name)!r}): leave it at its "
                    f"default {defaults[name]!r}, or use DistillationConfig/DistillationTrainer for it."
                )

    @property
    def base_loss_weights(self) -> dict[str, float]:
        """The top-level weight of every registered term by key (`alpha_kd`, ..., `alpha_<name>` of
        user terms from `term_weights`); stages override them."""
        user = self.term_weights or {}
        return {term.weight_key: getattr(self, term.weight_key) if term.builtin else user.get(term.name, 0.0)
                for term in TERMS.values()}

    def loss_weights(self, step: int = 0, total_steps: int = 1) -> dict[str, float]:
        """Weight of each term ('ce', 'kd', ...) at optimizer step `step` of a `total_steps` run."""
        return loss_weights_at(self.base_loss_weights, self.stages, step, total_steps)

    def uses(self, term: str) -> bool:
        """Whether the `term` loss ('kd', 'hidden', ...) has a weight > 0 at some point of the run."""
        return any(weights.get(f"alpha_{term}", 0.0) > 0 for weights in (self.stages or [self.base_loss_weights]))

    def used_terms(self) -> list[Any]:
        return [term for name, term in TERMS.items() if self.uses(name)]

    @property
    def needs_teacher(self) -> bool:
        """Whether any term used in the run compares against the teacher (CE alone needs none)."""
        return any(term.needs_teacher for term in self.used_terms())

    def needs_output(self, need: str) -> bool:
        """Whether a term used in the run needs `need` ('attentions', 'hidden_states', ...; `hfkd.objective.terms.NEEDS`)."""
        return any(need in term.needs for term in self.used_terms())

    def layer_mapping_of(self, term: str) -> str | list[tuple[int, int]]:
        """The layer map of `term`: its own `<term>_layer_mapping` field when set, else `layer_mapping`."""
        return getattr(self, f"{term}_layer_mapping", None) or self.layer_mapping


def cpu_only_multiprocess() -> bool:
    """Several processes launched on a machine with no accelerator.

    Accelerate then sees no GPU and gives every process a single-process state, so each one
    would train on the whole dataset alone; running them as CPU processes makes it real DDP.
    """
    accelerated = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not accelerated


def _check_choice(name: str, value: str, choices: Any) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {sorted(choices)}.")


def _parse_term_weights(value: Any) -> dict[str, float] | None:
    """`term_weights` as a dict of registered, non-built-in term names (JSON text accepted)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"term_weights={value!r} is not JSON; write e.g. '{{\"margin\": 0.5}}'.") from None
    if not isinstance(value, dict):
        raise ValueError(f"term_weights must map term names to weights, got {value!r}.")
    for name in value:
        if name not in TERMS:
            raise ValueError(
                f"term_weights names {name!r}, which is not registered: call hfkd.register_term({name!r}, ...) "
                f"before building the config (registered: {sorted(TERMS)})."
            )
        if TERMS[name].builtin:
            raise ValueError(f"term_weights names the built-in term {name!r}: set alpha_{name} instead.")
    return dict(value)


def _parse_layer_mapping(value: Any, name: str = "layer_mapping") -> str | list[tuple[int, int]]:
    """Accept a strategy name, a JSON string of pairs, or a list of pairs."""
    if isinstance(value, str):
        if value in LAYER_MAPPING_STRATEGIES:
            return value
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(
                f"{name}={value!r} is neither one of {list(LAYER_MAPPING_STRATEGIES)} nor a "
                "JSON list of [student_layer, teacher_layer] pairs."
            ) from None
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(
            f"{name} must be a strategy name or a non-empty list of pairs, got {value!r}."
        )
    pairs = []
    for pair in value:
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair)
        ):
            raise ValueError(
                f"layer_mapping entry {pair!r} is not a [student_layer, teacher_layer] pair of ints."
            )
        pairs.append((int(pair[0]), int(pair[1])))
    return pairs
