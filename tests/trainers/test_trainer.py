"""DistillationTrainer: the loss it computes, what it trains, saves and restores, and what it refuses."""

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    BertForTokenClassification,
    Trainer,
    TrainingArguments,
)

from conftest import VOCAB, bert_config, seq_cls_dataset, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.objective.projections import PROJECTIONS_NAME
from hfkd.models import DistillationSetupError, require_attentions
from tolerance import float32_bound, kl_magnitudes


def config(tmp_path, **kw):
    defaults = dict(
        output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, per_device_train_batch_size=8,
        max_steps=4, learning_rate=1e-3, logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True,
    )
    return DistillationConfig(**{**defaults, **kw})


def batch(n=8, length=10, seed=0):
    ds = seq_cls_dataset(n, length, seed=seed)
    return {k: torch.tensor(ds[k]) for k in ds.column_names}


def test_classes_subclass_transformers():
    assert issubclass(DistillationTrainer, Trainer)
    assert issubclass(DistillationConfig, TrainingArguments)


def test_kd_only_loss_equals_hinton_kl(tmp_path, tiny_pair):
    teacher, student = tiny_pair
    args = config(tmp_path, alpha_kd=1.0, alpha_ce=0.0, temperature=3.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    inputs = batch()
    student.train()
    loss = trainer.compute_loss(student, dict(inputs))
    with torch.no_grad():  # the same float32 logits the trainer got (same inputs and kernels), then float64
        features = {k: v for k, v in inputs.items() if k != "labels"}
        s, t = student(**features).logits.double() / 3, teacher.eval()(**features).logits.double() / 3
    expected = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean") * 9
    # The float32 KL is bounded by the terms it sums, not by its own size (tests/tolerance.py).
    sizes = kl_magnitudes(t.log_softmax(-1), s.log_softmax(-1), t.logsumexp(-1), s.logsumexp(-1)) * 9 / len(s)
    assert loss.item() == pytest.approx(expected.item(), abs=float32_bound(sizes, n=3))


def test_total_loss_is_the_weighted_sum_of_logged_terms(tmp_path, tiny_pair):
    teacher, student = tiny_pair
    args = config(tmp_path, alpha_kd=0.7, alpha_ce=0.3, alpha_hidden=2.0, alpha_attention=5.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    student.train()
    loss = trainer.compute_loss(student, batch())
    terms = {k: float(v) for k, v in trainer._term_sums.items()}
    assert set(terms) == {"ce_loss", "kd_loss", "hidden_loss", "attention_loss"}
    weighted = [0.3 * terms["ce_loss"], 0.7 * terms["kd_loss"], 2 * terms["hidden_loss"], 5 * terms["attention_loss"]]
    # The trainer adds the same float32 terms in float32: a few ulps of the weighted terms.
    assert loss.item() == pytest.approx(sum(weighted), abs=float32_bound(weighted))
    assert all(v > 0 for v in terms.values())


def test_training_logs_every_term_and_leaves_teacher_untouched(tmp_path, tiny_pair, tiny_dataset):
    teacher, student = tiny_pair
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    args = config(tmp_path, alpha_kd=1.0, alpha_ce=1.0, alpha_hidden=1.0, alpha_attention=1.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=tiny_dataset)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all({"kd_loss", "ce_loss", "hidden_loss", "attention_loss"} <= set(h) for h in logged)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert teacher.config._attn_implementation == "eager"


def _token_data(n=16, length=10, labels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    tags = ids % labels
    tags[torch.rand(n, length, generator=g) < 0.4] = -100  # uneven label counts per example
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * length] * n, "labels": tags.tolist()})


def test_gradient_accumulation_is_exact_for_token_tasks(tmp_path):
    """One update from 2x4 accumulated examples equals one update from a batch of 8."""
    data = _token_data(seed=3)  # micro-batches of 26 and 23 labelled tokens: uneven counts
    results = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        # float64 models: the two runs' forward/backward passes then differ by ~1e-16, and hfkd's float32
        # loss terms give each item the same gradient up to a few float32 ulps; one SGD step of lr 0.5
        # moves weights by 0.5 x that, ~1e-7 at most (4e-17 seen), while normalising the label terms per
        # micro-batch moves them by 2e-4 and not dividing the hidden term by the steps by 2e-3.
        teacher = BertForTokenClassification(bert_config(layers=4, labels=4)).double()
        student = BertForTokenClassification(bert_config(layers=2, labels=4)).double()
        args = config(tmp_path, alpha_kd=1.0, alpha_ce=1.0, alpha_hidden=1.0, max_steps=1, optim="sgd",
                      learning_rate=0.5, per_device_train_batch_size=batch_size,
                      gradient_accumulation_steps=accumulation, lr_scheduler_type="constant")
        DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data).train()
        results.append(student.state_dict())
    for key in results[0]:
        assert results[0][key].dtype in (torch.float64, torch.int64), key
        torch.testing.assert_close(results[0][key], results[1][key], atol=1e-6, rtol=1e-5)


def test_projections_bridge_widths_train_with_own_lr_and_stay_out_of_student(tmp_path, tiny_dataset):
    """Width projections train in their own optimizer groups at `projection_learning_rate` (checked
    under a constant schedule, where the rate after training is still the one set: 0.05 for the
    projections, `learning_rate` for the student), are checkpointed, and are not saved in the student."""
    teacher, student = seq_cls_pair(student_hidden=16)
    args = config(tmp_path, alpha_hidden=1.0, alpha_kd=1.0, projection_learning_rate=0.05,
                  lr_scheduler_type="constant", save_strategy="steps", save_steps=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=tiny_dataset)
    assert trainer.layer_pairs == [(1, 2), (2, 4)]
    assert set(trainer.projections) == {"1", "2"} and trainer.projections["1"].weight.shape == (32, 16)
    initial = trainer.projections["1"].weight.detach().clone()
    trainer.train()
    assert not torch.equal(initial, trainer.projections["1"].weight)
    projection_ids = {id(p) for p in trainer.projections.parameters()}
    groups = [g for g in trainer.optimizer.param_groups if g["params"]]
    kinds = [{id(p) in projection_ids for p in g["params"]} for g in groups]
    assert all(len(kind) == 1 for kind in kinds)  # no group mixes projections and student weights
    projection_lrs = {g["lr"] for g, kind in zip(groups, kinds) if kind == {True}}
    student_lrs = {g["lr"] for g, kind in zip(groups, kinds) if kind == {False}}
    assert projection_lrs == {0.05} and student_lrs == {1e-3}
    checkpoint = tmp_path / "run" / "checkpoint-4"
    saved = load_file(checkpoint / PROJECTIONS_NAME)
    torch.testing.assert_close(saved["1.weight"], trainer.projections["1"].weight.detach())
    assert not any("projection" in k for k in load_file(checkpoint / "model.safetensors"))
    trainer.save_model(str(tmp_path / "final"))
    assert sorted(os.listdir(tmp_path / "final")) == ["README.md", "config.json", "model.safetensors", "training_args.bin"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final")
    inputs = batch()
    inputs.pop("labels")
    student.eval()
    torch.testing.assert_close(reloaded(**inputs).logits, student(**inputs).logits)


def test_resume_restores_projections(tmp_path, tiny_dataset):
    teacher, student = seq_cls_pair(student_hidden=16)
    args = config(tmp_path, alpha_hidden=1.0, alpha_kd=1.0, save_strategy="steps", save_steps=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=tiny_dataset)
    trainer.train()
    saved = load_file(tmp_path / "run" / "checkpoint-2" / PROJECTIONS_NAME)
    _, fresh_student = seq_cls_pair(student_hidden=16, seed=1)
    resumed = DistillationTrainer(model=fresh_student, teacher_model=teacher, args=args, train_dataset=tiny_dataset)
    resumed._load_from_checkpoint(str(tmp_path / "run" / "checkpoint-2"))
    torch.testing.assert_close(resumed.projections["2"].weight.detach(), saved["2.weight"])


def test_teacher_from_path_and_evaluation_on_student_alone(tmp_path, tiny_pair, tiny_dataset):
    teacher, student = tiny_pair
    student.double()  # float64: the per-batch eval losses and the 32-row loss then agree to ~1e-16
    teacher.save_pretrained(tmp_path / "teacher")
    args = config(tmp_path, alpha_kd=1.0, alpha_ce=0.5)
    trainer = DistillationTrainer(model=student, teacher_model=str(tmp_path / "teacher"), args=args,
                                  train_dataset=tiny_dataset, eval_dataset=tiny_dataset)
    assert isinstance(trainer.teacher, BertForSequenceClassification)
    metrics = trainer.evaluate()
    student.eval()
    with torch.no_grad():
        own_loss = student(**batch(32, 12)).loss  # the eval set is the same 32 examples
    assert metrics["eval_loss"] == pytest.approx(own_loss.item(), rel=1e-9)


def test_ce_only_needs_no_teacher_and_trains_like_plain_finetuning(tmp_path, tiny_pair, tiny_dataset):
    """With only alpha_ce no teacher is needed, only ce_loss is logged, and the run is plain fine-tuning:
    the same loss at every step and the same weights at the end as a stock Trainer from the same start
    (float64 models: only hfkd's float32 loss arithmetic differs; a 0.1% mis-weighted or mis-normalised
    CE, or a stray term, changes the logged loss by ~1e-3)."""
    _, student = tiny_pair
    student.double()
    plain = copy.deepcopy(student)
    args = config(tmp_path, alpha_kd=0.0, alpha_ce=1.0)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=tiny_dataset)
    assert trainer.teacher is None
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 4 and all({k for k in h if k.endswith("_loss")} == {"ce_loss"} for h in logged)
    stock = Trainer(model=plain, args=TrainingArguments(**{k: getattr(args, k) for k in (
        "output_dir", "report_to", "use_cpu", "per_device_train_batch_size", "max_steps", "learning_rate",
        "logging_steps", "save_strategy", "seed", "disable_tqdm")}), train_dataset=tiny_dataset)
    stock.train()
    stock_losses = [h["loss"] for h in stock.state.log_history if "loss" in h]
    # Per step the same float64 logits; hfkd's CE arithmetic is float32 (~1e-7 relative of losses ~1).
    assert [h["loss"] for h in logged] == pytest.approx(stock_losses, abs=1e-5)
    assert [h["ce_loss"] for h in logged] == pytest.approx(stock_losses, abs=1e-5)
    start = seq_cls_pair()[1].state_dict()
    assert any(not torch.equal(p.double(), q) for p, q in zip(start.values(), student.state_dict().values()))
    # The float32 loss arithmetic's rounding, through Adam, moves weights by ~1e-7 (tests/tolerance.py, rule 3).
    moved = max((p - q).abs().max().item() for p, q in zip(student.state_dict().values(), plain.state_dict().values()))
    assert moved < 1e-5, moved


def test_distilbert_student_from_bert_teacher_gets_only_its_inputs(tmp_path, tiny_dataset):
    """A DistilBERT student distilled from a BERT teacher on data with token_type_ids: every student
    forward gets only the inputs it takes."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    teacher, _ = seq_cls_pair()
    student = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, num_labels=3,
                         max_position_embeddings=64)
    )
    data = tiny_dataset.add_column("token_type_ids", [[0] * 12] * len(tiny_dataset))
    args = config(tmp_path, alpha_kd=1.0, alpha_ce=1.0, alpha_hidden=1.0)
    received = {"student": set(), "teacher": set()}
    for name, model in (("student", student), ("teacher", teacher)):
        model.register_forward_pre_hook(
            lambda module, a, kw, name=name: received[name].update(k for k, v in kw.items() if v is not None),
            with_kwargs=True)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    trainer.train()
    # DistilBERT takes no token_type_ids: the data's column never reaches the student's forward (which
    # would raise on it); both models get the inputs they share.
    assert "token_type_ids" not in received["student"] and {"input_ids", "attention_mask"} <= received["student"]
    assert {"input_ids", "attention_mask"} <= received["teacher"]
    assert trainer.state.global_step == 4


# ------------------------------------------------------------------ bad input


def test_refuses_plain_training_arguments(tmp_path, tiny_pair):
    teacher, student = tiny_pair
    with pytest.raises(TypeError, match="DistillationConfig"):
        DistillationTrainer(model=student, teacher_model=teacher, args=TrainingArguments(output_dir=str(tmp_path)))


def test_refuses_missing_teacher(tmp_path, tiny_pair):
    with pytest.raises(ValueError, match="need a teacher"):
        DistillationTrainer(model=tiny_pair[1], args=config(tmp_path))


def test_refuses_vocabulary_mismatch(tmp_path):
    teacher = BertForSequenceClassification(bert_config())
    student = BertForSequenceClassification(bert_config(layers=2))
    student.config.vocab_size = 120
    with pytest.raises(DistillationSetupError, match="teacher vocab_size=100, student vocab_size=120"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path))


def test_refuses_tokenizer_mismatch(tmp_path, tiny_pair):
    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    teacher, student = tiny_pair
    with pytest.raises(DistillationSetupError, match="tokenizers differ in 2 token→id entries"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path),
                            processing_class=Tok({"a": 0, "b": 1}), teacher_processing_class=Tok({"a": 0, "b": 2}))


def test_refuses_label_count_and_order_mismatch(tmp_path):
    teacher = BertForSequenceClassification(bert_config(labels=3))
    with pytest.raises(DistillationSetupError, match="teacher num_labels=3, student num_labels=2"):
        DistillationTrainer(model=BertForSequenceClassification(bert_config(layers=2, labels=2)),
                            teacher_model=teacher, args=config(tmp_path))
    teacher.config.id2label = {0: "neg", 1: "neu", 2: "pos"}
    student = BertForSequenceClassification(bert_config(layers=2, labels=3))
    student.config.id2label = {0: "pos", 1: "neu", 2: "neg"}
    with pytest.raises(DistillationSetupError, match="label orders differ"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path))


def test_refuses_task_head_mismatch(tmp_path):
    teacher = BertForTokenClassification(bert_config(labels=3))
    student = BertForSequenceClassification(bert_config(layers=2, labels=3))
    with pytest.raises(DistillationSetupError, match="task heads differ.*token_classification.*sequence_classification"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path))


def test_refuses_kl_on_a_single_output_regression(tmp_path):
    # softmax over one logit is 1: KL/CE/JSD would be 0 whatever the models do.
    teacher = BertForSequenceClassification(bert_config(labels=1))
    student = BertForSequenceClassification(bert_config(layers=2, labels=1))
    with pytest.raises(DistillationSetupError, match="kd_loss='kl'.*use kd_loss='mse'"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path))
    DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, kd_loss="mse"))


def test_refuses_train_sequences_longer_than_the_position_table(tmp_path, tiny_pair):
    teacher, student = tiny_pair  # max_position_embeddings=64
    too_long = seq_cls_dataset(n=4, length=65)
    with pytest.raises(DistillationSetupError, match="longest train_dataset input_ids=65 exceeds"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path), train_dataset=too_long)
    DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path),
                        train_dataset=seq_cls_dataset(n=4, length=64))


def test_refuses_impossible_layer_map(tmp_path, tiny_pair):
    teacher, student = tiny_pair
    with pytest.raises(ValueError, match="out of range"):
        DistillationTrainer(model=student, teacher_model=teacher,
                            args=config(tmp_path, alpha_hidden=1.0, layer_mapping=[[3, 4]]))
    with pytest.raises(ValueError, match="only pairs embedding outputs"):
        DistillationTrainer(model=student, teacher_model=teacher,
                            args=config(tmp_path, alpha_attention=1.0, layer_mapping=[[0, 0]]))


def test_refuses_ce_weight_without_labels(tmp_path, tiny_pair):
    teacher, student = tiny_pair
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, alpha_ce=0.5))
    inputs = batch()
    inputs.pop("labels")
    student.train()
    with pytest.raises(ValueError, match="alpha_ce=0.5 but the batch has no 'labels'"):
        trainer.compute_loss(student, inputs)


def test_attention_loss_without_attention_maps_is_named():
    class Out:
        attentions = ()

    with pytest.raises(DistillationSetupError, match="teacher returned no attention maps.*eager"):
        require_attentions(Out(), "teacher")


def test_nan_loss_stops_with_step_and_term(tmp_path, tiny_pair, tiny_dataset):
    teacher, student = tiny_pair
    with torch.no_grad():
        teacher.classifier.weight.fill_(float("nan"))
    trainer = DistillationTrainer(model=student, teacher_model=teacher, train_dataset=tiny_dataset,
                                  args=config(tmp_path, alpha_kd=1.0, alpha_ce=1.0))
    with pytest.raises(FloatingPointError, match="non-finite kd_loss at step 1"):
        trainer.train()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_skips_a_checkpoint_left_incomplete_by_a_kill(tmp_path, tiny_dataset, damage):
    teacher, student = seq_cls_pair(student_hidden=16)
    args = config(tmp_path, alpha_hidden=1.0, alpha_kd=1.0, save_strategy="steps", save_steps=2)
    DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=tiny_dataset).train()
    state = tmp_path / "run" / "checkpoint-4" / "trainer_state.json"  # killed while saving step 4:
    if damage == "missing":
        state.unlink()
    else:
        state.write_text(state.read_text()[:100])

    _, fresh = seq_cls_pair(student_hidden=16, seed=1)
    longer = config(tmp_path, alpha_hidden=1.0, alpha_kd=1.0, save_strategy="steps", save_steps=2, max_steps=6)
    trainer = DistillationTrainer(model=fresh, teacher_model=teacher, args=longer, train_dataset=tiny_dataset)
    with pytest.raises(ValueError, match=r"checkpoint-4 is incomplete .*resume from .*checkpoint-2"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    trainer.train(resume_from_checkpoint=True)  # picks checkpoint-2, the newest complete one
    assert trainer.state.global_step == 6


def test_nan_keeps_the_last_good_checkpoint(tmp_path, tiny_dataset):
    from transformers import TrainerCallback

    teacher, student = seq_cls_pair()

    class PoisonTeacher(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    teacher.classifier.bias.fill_(float("inf"))

    args = config(tmp_path, alpha_kd=1.0, alpha_ce=1.0, save_strategy="steps", save_steps=2, max_steps=6)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=tiny_dataset,
                                  callbacks=[PoisonTeacher()])
    with pytest.raises(FloatingPointError, match="non-finite kd_loss at step 3"):
        trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint-2"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())


def poison_teacher(teacher, start, stop=None):
    """A callback making the teacher's logits infinite after step `start` until step `stop`; it also
    keeps a snapshot of the student after every step (`.snapshots[step]`)."""
    from transformers import TrainerCallback

    saved = teacher.classifier.bias.detach().clone()

    class Poison(TrainerCallback):
        snapshots: dict = {}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.snapshots[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            with torch.no_grad():
                if state.global_step == start:
                    teacher.classifier.bias.fill_(float("inf"))
                if state.global_step == stop:
                    teacher.classifier.bias.copy_(saved)

    return Poison()


def test_nonfinite_skip_drops_only_the_bad_update(tmp_path, tiny_dataset):
    teacher, student = seq_cls_pair()
    poison = poison_teacher(teacher, start=2, stop=3)  # step 3 sees an infinite teacher
    args = config(tmp_path, alpha_kd=1.0, alpha_ce=1.0, max_steps=6, nonfinite_loss="skip", logging_steps=1)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=tiny_dataset,
                                  callbacks=[poison])
    trainer.train()
    assert trainer.state.global_step == 6 and trainer.skipped_updates == 1
    before, after = poison.snapshots[2], poison.snapshots[3]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the skipped update changed nothing
    assert not all(torch.equal(after[k], poison.snapshots[4][k]) for k in after)  # the next one did
    assert all(torch.isfinite(p).all() for p in student.parameters())
    adam_steps = {int(s["step"]) for s in trainer.optimizer.state.values()}
    assert adam_steps == {5}  # optimizer state advanced on the 5 good updates only
    assert [h["skipped_updates"] for h in trainer.state.log_history if "skipped_updates" in h][-1] == 1


def test_nonfinite_skip_stops_after_too_many(tmp_path, tiny_dataset):
    teacher, student = seq_cls_pair()
    args = config(tmp_path, alpha_kd=1.0, max_steps=8, nonfinite_loss="skip", max_skipped_updates=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=tiny_dataset,
                                  callbacks=[poison_teacher(teacher, start=1)])
    with pytest.raises(FloatingPointError, match="3 optimizer updates skipped .*max_skipped_updates=2"):
        trainer.train()


def test_nonfinite_loss_choices_are_checked(tmp_path):
    with pytest.raises(ValueError, match="nonfinite_loss"):
        config(tmp_path, nonfinite_loss="ignore")
