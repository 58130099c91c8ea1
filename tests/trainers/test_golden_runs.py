"""Golden runs: the final weights of one short, fixed-seed training run per distillation family,
compared with the weights recorded in `tests/golden/<family>.safetensors` to 1e-6 (absolute).

A regression baseline for restructurings: code that moves or splits the trainer must reproduce
these runs. A change of what is trained (a loss term, a weight, a temperature, a normalisation,
the data order, an initialisation) moves some weight by far more than 1e-6 within a few steps.

Families: logit + hidden-state KD with width projections (the projections are compared too, as
`projections.*`), attention KD (eager), MiniLMv2 relations, TinyBERT stages (max_steps-based, with
projections), cached teacher logits (no teacher at training time), two teachers (prob_mean),
mutual learning (both peers, `peer{i}.*`), born-again (2 generations through the `hfkd born-again`
command; the last generation's saved student), and a causal LM (GPT-2) with logit KD and
gradient_accumulation_steps=2. Models and data are defined here, not taken from conftest, so that
editing the shared fixtures cannot move the baseline.

Machine independence. CPUs differ in the summation order of their kernels (AVX2 vs AVX-512 vs
AMX, MKL code paths). Hence:
- every model, teachers included, is float64 (the born-again teacher is saved as float64, so each
  generation loads and builds float64);
- a few paths compute in float32 whatever the model dtype: the losses in `hfkd.losses` cast their
  inputs with `.float()` (loss values, and their gradients up to the logits/representations, are
  float32 before flowing back in float64), and the teacher cache stores float32 logits. They are
  deterministic, but their rounding differs between kernels, and Adam amplifies such noise
  (m/sqrt(v) of a near-zero gradient): with AdamW, runs under ATEN_CPU_CAPABILITY=avx2 or
  MKL_ENABLE_INSTRUCTIONS=AVX2 differed from AVX-512 runs by up to 4e-7. The golden runs therefore
  use plain SGD (linear in the gradient): the same variations then agree to 5e-9 or better (to
  2e-7 even on the scalar ATEN_CPU_CAPABILITY=default kernels), while e.g. alpha_ce 0.5 -> 0.501
  moves a weight by 1e-5 and the hidden term as a sum instead of a mean by 7e-3;
- dropout is 0 and the seed fixed; `set_seed` is called just before each trainer is built, so the
  width projections (drawn from the global RNG when the trainer is built) start the same whether
  they are made before or after `Trainer.__init__`'s own `set_seed(args.seed)`.

A missing fixture fails. To (re)write the fixtures, only when a change of the numbers is intended,
run from the repository root

    HFKD_RECORD_GOLDEN=1 python -m pytest tests/test_golden_runs.py

which writes each file atomically (temporary file, then rename) instead of comparing.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    default_data_collator,
    set_seed,
)

from hfkd import (
    DistillationConfig,
    DistillationTrainer,
    MutualDistillationConfig,
    MutualDistillationTrainer,
    build_teacher_cache,
    load_teacher_cache,
)
from hfkd.teacher.cache import teacher_cache_fingerprint

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
RECORD = os.environ.get("HFKD_RECORD_GOLDEN") == "1"
SEED, VOCAB, LENGTH = 0, 60, 8
WORDS = ["good", "bad", "fun", "dull", "film", "plot", "great", "weak", "story", "long", "actors", "and", "a"]
DEFAULTS = dict(
    report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=SEED, data_seed=SEED,
    per_device_train_batch_size=8, max_steps=4, optim="sgd", learning_rate=0.1, logging_steps=1,
    alpha_ce=0.5, alpha_kd=1.0, temperature=2.0,
)


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Keep the Arrow caches of these runs out of the shared ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def bert(layers: int, hidden: int = 16, seed: int = 0, head: float = 1.0, qkv: float = 1.0, vocab: int = VOCAB):
    """A tiny float64 BERT classifier (3 labels, no dropout). `head` and `qkv` scale the classifier and
    the Q/K/V projections: a confident teacher with peaked attention, so that no term is ~0."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=2 * hidden, max_position_embeddings=16, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).double()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name == "classifier.weight":
                parameter.mul_(head)
            elif name.endswith(("query.weight", "key.weight", "value.weight")):
                parameter.mul_(qkv)
    return model


def teacher_bert(layers: int = 4, seed: int = 1, head: float = 30.0, **kw):
    """A wider (32), confident teacher for the 16-wide students."""
    return bert(layers, hidden=32, seed=seed, head=head, qkv=10.0, **kw)


def gpt2(layers: int, hidden: int, seed: int = 0, head: float = 1.0):
    """A tiny float64 GPT-2 (no dropout); `head` scales the final layer norm, hence the logits."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=hidden, n_layer=layers, n_head=4, n_positions=16,
                                       bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0)).double()
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(head)
    return model


def rows(n: int = 24, causal: bool = False) -> Dataset:
    """Fixed-length rows with trailing padding (masks exercised); label = first token mod 3, or the LM labels."""
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    mask = (torch.arange(LENGTH) < torch.randint(LENGTH // 2, LENGTH + 1, (n, 1), generator=g)).long()
    ids = ids * mask
    labels = ids.masked_fill(mask == 0, -100) if causal else ids[:, 0] % 3
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})


def run(tmp_path: Path, data: Dataset, student=None, teacher=None, peers=None, **overrides) -> dict[str, torch.Tensor]:
    """Train one DistillationTrainer (or, with `peers`, a MutualDistillationTrainer) and return the
    final weights: the student's (plus `projections.*` when width projections exist) or `peer{i}.*`."""
    settings = {**DEFAULTS, "output_dir": str(tmp_path / "run"), **overrides}
    set_seed(SEED)
    if peers:
        trainer = MutualDistillationTrainer(peers=peers, args=MutualDistillationConfig(**settings), train_dataset=data)
    else:
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=DistillationConfig(**settings),
                                      train_dataset=data)
    trainer.train()
    if peers:
        return {f"peer{i}.{k}": v for i, peer in enumerate(peers) for k, v in peer.state_dict().items()}
    state = {k: v for k, v in student.state_dict().items() if not k.startswith("hfkd_projections.")}
    if trainer.projections is not None:
        state.update({f"projections.{k}": v for k, v in trainer.projections.state_dict().items()})
    return state


def logit_hidden_projection(tmp_path):
    return run(tmp_path, rows(), bert(2, 16), teacher_bert(), alpha_hidden=1.0, projection_learning_rate=0.3)


def attention(tmp_path):
    return run(tmp_path, rows(), bert(2, 16), teacher_bert(), alpha_attention=10.0)


def relation(tmp_path):
    return run(tmp_path, rows(), bert(2, 16), teacher_bert(), alpha_kd=0.0, alpha_relation=1.0,
               relations="qq,kk,vv", relation_heads=4)


def stages(tmp_path):
    intermediate = {"max_steps": 2, "alpha_hidden": 1.0, "alpha_attention": 10.0, "alpha_kd": 0.0, "alpha_ce": 0.0}
    prediction = {"max_steps": 2, "alpha_kd": 1.0, "alpha_ce": 0.0}
    return run(tmp_path, rows(), bert(2, 16), teacher_bert(), max_steps=-1,
               stages=[intermediate, prediction], include_embeddings=True)


def cached_teacher(tmp_path):
    model, data = teacher_bert(), rows()
    build_teacher_cache(model, data, default_data_collator, tmp_path / "cache", batch_size=5)
    cache = load_teacher_cache(tmp_path / "cache", teacher_cache_fingerprint(model, data))
    return run(tmp_path, cache, bert(2, 16), None)


def multi_teacher(tmp_path):
    teachers = [teacher_bert(), teacher_bert(3, seed=2, head=-20.0)]
    return run(tmp_path, rows(), bert(2, 16), teachers, teacher_weights=[3.0, 1.0], teacher_combination="prob_mean")


def mutual(tmp_path):
    return run(tmp_path, rows(), peers=[bert(1, 16, seed=3, head=10.0), bert(2, 24, seed=4, head=-10.0)])


def born_again(tmp_path):
    from hfkd.app.born_again import generation_dir
    from hfkd.app.cli import main

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    teacher = bert(2, 16, seed=5, head=30.0, qkv=10.0, vocab=len(tokenizer))
    teacher.save_pretrained(tmp_path / "teacher")  # float64 on disk: every generation loads and builds float64
    tokenizer.save_pretrained(tmp_path / "teacher")
    for split, n in (("train", 24), ("dev", 8)):
        lines = ["sentence\tlabel"] + [f"{' '.join(WORDS[(i * k) % len(WORDS)] for k in (1, 3, 5))}\t{i % 3}"
                                       for i in range(n)]
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "ban"
    main(["born-again", "--teacher_model_name_or_path", str(tmp_path / "teacher"), "--generations", "2",
          "--train_file", str(tmp_path / "train.tsv"), "--validation_file", str(tmp_path / "dev.tsv"),
          "--output_dir", str(out), "--max_seq_length", "16", "--per_device_train_batch_size", "8",
          "--max_steps", "3", "--optim", "sgd", "--learning_rate", "0.1", "--alpha_kd", "1", "--alpha_ce", "0.5",
          "--temperature", "2", "--seed", str(SEED), "--data_seed", str(SEED), "--report_to", "none",
          "--use_cpu", "--save_strategy", "no", "--disable_tqdm", "true", "--debug"])
    return load_file(Path(generation_dir(str(out), 2)) / "model.safetensors")


def causal_lm(tmp_path):
    return run(tmp_path, rows(causal=True), gpt2(1, 16), gpt2(2, 32, seed=1, head=20.0),
               per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=3)


FAMILIES = {f.__name__: f for f in (logit_hidden_projection, attention, relation, stages, cached_teacher,
                                    multi_teacher, mutual, born_again, causal_lm)}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_golden_run_reproduces_recorded_weights(tmp_path, family):
    state = {k: v.detach().cpu().clone().contiguous() for k, v in FAMILIES[family](tmp_path).items()}
    assert all(v.dtype == torch.float64 for v in state.values() if v.is_floating_point()), "golden runs are float64"
    path = GOLDEN_DIR / f"{family}.safetensors"
    if RECORD:
        GOLDEN_DIR.mkdir(exist_ok=True)
        partial = path.with_name(path.name + ".tmp")
        save_file(state, str(partial), metadata={"family": family})
        os.replace(partial, path)
        return
    if not path.is_file():
        pytest.fail(f"no golden fixture {path}: record it with HFKD_RECORD_GOLDEN=1 python -m pytest tests/test_golden_runs.py")
    golden = load_file(str(path))
    shapes = {k: tuple(v.shape) for k, v in golden.items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes, "trained and recorded tensors differ in names/shapes"
    # Every tensor to 1e-6, the worst first (so a failure names the tensor that moved most).
    for name in sorted(golden, key=lambda k: -float((state[k].double() - golden[k].double()).abs().max())):
        torch.testing.assert_close(state[name], golden[name], atol=1e-6, rtol=0, msg=lambda m: f"{family} {name}: {m}")
