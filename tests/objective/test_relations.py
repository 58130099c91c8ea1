"""Relation distillation (MiniLM/MiniLMv2): the loss, the Q/K/V capture, and the trainer term."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from conftest import seq_cls_dataset, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.objective.losses import relation_kl_loss, relation_log_probs
from hfkd.objective.relations import QKVCapture, RelationDistiller, parse_relations
from tolerance import assert_within, float32_bound, kl_magnitudes


def config(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, per_device_train_batch_size=8,
                    max_steps=2, learning_rate=1e-3, logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True,
                    alpha_kd=0.0, alpha_ce=0.0, alpha_relation=1.0)
    return DistillationConfig(**{**defaults, **kw})


def padded_batch(n=4, length=9, seed=0):
    ds = seq_cls_dataset(n, length, seed=seed)
    batch = {k: torch.tensor(ds[k]) for k in ds.column_names}
    batch["attention_mask"][0, 5:] = 0  # padding at the end of two rows
    batch["attention_mask"][2, 7:] = 0
    return batch


def reference_relation_kl(student, teacher, heads, mask):
    """Loop over examples, heads and valid rows; padding removed by slicing, torch's kl_div, in float64.

    Also returns the float32 error bound of that mean: each score is a dot product of width d, so a few
    ulps of sum |a_i b_i| / sqrt(d); a row's log-softmax moves by at most its largest score error; then
    the KL's own terms (tests/tolerance.py).
    """
    per_row, sizes = [], []
    for i in range(student.shape[0]):
        valid = int(mask[i].sum())
        s, t = student[i, :valid].double(), teacher[i, :valid].double()
        ds, dt = s.shape[-1] // heads, t.shape[-1] // heads
        for h in range(heads):
            sh, th = s[:, h * ds:(h + 1) * ds], t[:, h * dt:(h + 1) * dt]
            scores_s, scores_t = sh @ sh.T / math.sqrt(ds), th @ th.T / math.sqrt(dt)
            log_s, log_t = F.log_softmax(scores_s, -1), F.log_softmax(scores_t, -1)
            per_row.append(F.kl_div(log_s, log_t.exp(), reduction="none").sum(-1))
            dot_sizes = (sh.abs() @ sh.abs().T / math.sqrt(ds)).amax(-1) + (th.abs() @ th.abs().T / math.sqrt(dt)).amax(-1)
            sizes.append(kl_magnitudes(log_t, log_s, scores_t.logsumexp(-1), scores_s.logsumexp(-1)) + 2 * dot_sizes)
    sizes = torch.cat(sizes)
    return torch.cat(per_row).mean(), float32_bound(sizes / len(sizes), n=max(student.shape[-1], student.shape[1]))


def test_relation_kl_matches_an_independent_loop_with_padding_and_different_widths():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 6, 8, generator=g), torch.randn(3, 6, 12, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6, [1, 1, 1, 0, 0, 0]])
    loss = relation_kl_loss((student, student), (teacher, teacher), num_relation_heads=4, mask=mask)
    expected, bound = reference_relation_kl(student, teacher, 4, mask)
    assert loss.item() == pytest.approx(expected.item(), abs=bound)


def test_relation_of_q_and_k_is_the_models_own_attention_distribution(tiny_pair):
    """MiniLM's Q-K relation with one relation head per attention head is BERT's attention map."""
    teacher, _ = tiny_pair
    teacher.set_attn_implementation("eager")
    batch = padded_batch()
    capture = QKVCapture(teacher, layer=3, who="teacher")
    with capture.capture() as qkv:
        out = teacher.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             output_attentions=True)
    log_probs = relation_log_probs(qkv["q"], qkv["k"], 4, batch["attention_mask"])
    probs = log_probs.exp()
    # Two float32 softmaxes of the same scores q.k / sqrt(8). Relative to p, each errs by its scores'
    # errors (a few ulps of sum |q_i k_i| / sqrt(8); the row's largest counts twice, via the normaliser)
    # plus a few ulps of |log p| and of the normaliser, from exp and the row sum.
    q, k = (qkv[name].double().reshape(4, 9, 4, 8).transpose(1, 2) for name in "qk")
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    score_errors = float32_bound((q.abs() @ k.abs().transpose(-1, -2) / math.sqrt(8)).unsqueeze(-1), n=8, dim=-1)
    valid = batch["attention_mask"].bool()
    for i in range(len(valid)):
        rows = valid[i]
        p, log_p = probs[i][:, rows][..., rows].double(), log_probs[i][:, rows][..., rows].double()
        norm = scores[i][:, rows][..., rows].logsumexp(-1, keepdim=True)
        softmax_errors = float32_bound(torch.stack([torch.ones_like(p), log_p.abs(), norm.abs().expand_as(p)], -1),
                                       n=9, dim=-1)
        relative = score_errors[i][:, rows][..., rows] + score_errors[i][:, rows][..., rows].amax(-1, keepdim=True)
        assert_within(p, out.attentions[2][i][:, rows][..., rows], 2 * p * (relative + softmax_errors), f"example {i}")


def test_captured_qkv_are_the_layer_projections_and_hooks_are_removed(tiny_pair):
    teacher, _ = tiny_pair
    batch = padded_batch()
    capture = QKVCapture(teacher, layer=2, who="teacher")
    with capture.capture() as qkv:
        out = teacher.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             output_hidden_states=True)
    attention = teacher.bert.encoder.layer[1].attention.self
    for name, module in zip("qkv", (attention.query, attention.key, attention.value)):
        torch.testing.assert_close(qkv[name], module(out.hidden_states[1]))
        assert not module._forward_hooks


def test_gpt2_fused_c_attn_is_split_into_q_k_v():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32))
    ids = torch.randint(0, 100, (2, 7))
    capture = QKVCapture(model, layer=2, who="student")
    assert capture.widths() == {"q": 32, "k": 32, "v": 32}
    with capture.capture() as qkv:
        out = model.eval()(ids, output_hidden_states=True)
    block = model.transformer.h[1]
    q, k, v = block.attn.c_attn(block.ln_1(out.hidden_states[1])).split(32, dim=-1)
    for name, expected in zip("qkv", (q, k, v)):
        torch.testing.assert_close(qkv[name], expected)


def _llama(hidden, heads, kv_heads, seed):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                        max_position_embeddings=32))


def test_llama_with_grouped_query_attention_trains_on_relations(tmp_path):
    teacher, student = _llama(64, 8, 2, seed=0), _llama(32, 4, 2, seed=1)  # k/v widths 16 and 16
    data = seq_cls_dataset(16, 10).remove_columns("labels")
    data = data.add_column("labels", data["input_ids"])
    args = config(tmp_path, relation_heads=2, relations="qq,kk,vv")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    assert trainer.relations.causal and trainer.relations.num_heads == 2
    trainer.train()
    logged = [h["relation_loss"] for h in trainer.state.log_history if "relation_loss" in h]
    assert len(logged) == 2 and all(math.isfinite(v) and v > 0 for v in logged)


def test_causal_relations_only_look_back():
    x = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(0))
    log_probs = relation_log_probs(x, x, 2, causal=True)
    probs = log_probs.exp()
    assert torch.all(probs[..., torch.ones(5, 5).triu(1).bool()] == 0)
    # Each probability carries a few ulps of its log-probability (and of the normaliser, < 3 here) relatively.
    sizes = probs.double() * (1 + log_probs.double().abs().nan_to_num(0.0, posinf=0.0) + 3)
    assert_within(probs.sum(-1), torch.ones(1, 2, 5), float32_bound(sizes, n=5, ulps=2, dim=-1))


def relation_loss_of(tmp_path, teacher, student, **kw):
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, **kw))
    student.train()
    return trainer.compute_loss(student, padded_batch()).item()


def test_relation_loss_is_zero_for_identical_models_and_grows_with_perturbation(tmp_path, tiny_pair):
    teacher, _ = tiny_pair
    losses = []
    for scale in (0.0, 0.01, 0.05, 0.2):
        student = copy.deepcopy(teacher).requires_grad_(True)  # the trainer froze the teacher
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in student.bert.encoder.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g))
        losses.append(relation_loss_of(tmp_path, teacher, student))
    # Identical models: p (log p - log q) with log p == log q up to the roundings of exp and log; a few ulps
    # of the terms summed, p log p and p log q, whose sum is twice the row entropy <= 2 log 9 (9 keys).
    assert losses[0] == pytest.approx(0.0, abs=float32_bound(2 * math.log(9), n=9))
    assert losses == sorted(losses) and losses[1] > 0 and losses[-1] > 10 * losses[1]


def test_trainer_term_matches_the_pure_loss_on_captured_projections(tmp_path):
    teacher, student = seq_cls_pair(student_hidden=16)  # widths 32 vs 16, 4 relation heads each
    args = config(tmp_path, relations="qk,vv", relation_teacher_layer=3, alpha_ce=0.5)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    student.train()
    batch = padded_batch()
    loss = trainer.compute_loss(student, dict(batch))
    features = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t_hidden = teacher.eval()(**features, output_hidden_states=True).hidden_states[2]
        s_hidden = student(**features, output_hidden_states=True).hidden_states[1]
    t_att, s_att = teacher.bert.encoder.layer[2].attention.self, student.bert.encoder.layer[1].attention.self
    tq, tk, tv = (m(t_hidden) for m in (t_att.query, t_att.key, t_att.value))
    sq, sk, sv = (m(s_hidden) for m in (s_att.query, s_att.key, s_att.value))
    mask = features["attention_mask"]
    expected = (relation_kl_loss((sq, sk), (tq, tk), 4, mask) + relation_kl_loss((sv, sv), (tv, tv), 4, mask)) / 2
    # Exact by construction: the same function on the same projections (same inputs and kernels).
    assert trainer._term_sums["relation_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    logits = student(**features).logits.double()
    log_q, norm = F.log_softmax(logits, -1), logits.logsumexp(-1)
    ce = F.cross_entropy(logits, batch["labels"])
    # The trainer's float32 CE: a few ulps of -log q_y and its normaliser per example; then one float32 sum.
    ce_sizes = (log_q.gather(1, batch["labels"][:, None])[:, 0].abs() + norm.abs()).mean()
    bound = float32_bound([0.5 * ce_sizes.item(), expected.item()], n=3)
    assert loss.item() == pytest.approx(0.5 * ce.item() + expected.item(), abs=bound)


def test_relation_gradients_reach_the_student_and_the_teacher_stays_frozen(tmp_path, tiny_pair, tiny_dataset):
    teacher, student = tiny_pair
    before = copy.deepcopy(student.bert.encoder.layer[1].attention.self.query.weight)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path),
                                  train_dataset=tiny_dataset)
    trainer.train()
    assert not torch.equal(before, student.bert.encoder.layer[1].attention.self.query.weight)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(not m._forward_hooks for m in list(student.modules()) + list(teacher.modules()))
    assert "relations" in trainer.distillation_settings()


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"relation_heads": 3}, "divisible by relation_heads=3"),
        ({"relation_teacher_layer": 9}, "relation layer 9 is out of range for the teacher's 4 layers"),
        ({"relation_student_layer": 3}, "relation layer 3 is out of range for the student's 2 layers"),
    ],
)
def test_impossible_relation_settings_fail_before_training(tmp_path, tiny_pair, kw, message):
    teacher, student = tiny_pair
    with pytest.raises(ValueError, match=message):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, **kw))


def test_qk_relation_refuses_grouped_query_widths():
    teacher, student = _llama(64, 8, 2, seed=0), _llama(32, 4, 2, seed=1)
    with pytest.raises(ValueError, match="relation 'qk' of the student"):
        RelationDistiller(student, teacher, ["qk"], num_heads=2)


def test_hooks_go_on_the_quantized_teacher_that_runs(tmp_path, tiny_pair, tiny_dataset):
    teacher, student = tiny_pair
    args = config(tmp_path, teacher_quantization="int8_dynamic")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=tiny_dataset)
    assert trainer.relations.teacher.modules[0] is trainer.teacher.bert.encoder.layer[3].attention.self.query
    trainer.train()
    assert all(math.isfinite(h["relation_loss"]) for h in trainer.state.log_history if "relation_loss" in h)


def test_compiled_teacher_is_refused_with_relations(tmp_path):
    with pytest.raises(ValueError, match="teacher_compile with alpha_relation > 0"):
        config(tmp_path, teacher_compile=True)


@pytest.mark.parametrize("value", ["", "qq,qx", "q", "qq,qq"])
def test_bad_relations_are_refused(value):
    with pytest.raises(ValueError, match="relations="):
        parse_relations(value)
