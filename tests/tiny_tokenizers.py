"""Tiny fast tokenizers of each kind, trained in-test with the `tokenizers` library (well under a second),
and a small seeded corpus. Imported like the conftest helpers: `from tiny_tokenizers import ...`.

- `wordpiece()`: BERT style (lower-casing, `##` continuations, [CLS] ... [SEP]).
- `byte_level_bpe()`: GPT-2/RoBERTa style (byte alphabet, no unknown token, <s> ... </s>).
- `sentencepiece_bpe()`: Llama/SmolLM2 style (▁ for spaces, byte fallback <0x..>, <s> prefix).
- `affixed_bpe()`: BPE with a `##` continuing-subword prefix and a `</w>` end-of-word suffix.
- `unigram()`: T5/ALBERT style SentencePiece Unigram (Metaspace, </s> suffix).
"""

from __future__ import annotations

import json
import random

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

WORDS = ("the film is a great and moving story about love loss hope friendship with wonderful acting "
         "but its plot feels slow predictable boring tedious although the music remains beautiful "
         "director actors scenes characters performances audiences laughing crying thinking "
         "unbelievably overlong underwhelming heartwarming breathtaking").split()


def corpus(n: int = 120, seed: int = 0, words: tuple[str, ...] = WORDS) -> list[str]:
    """n sentences of 4-12 words, seeded; some capitalised and with punctuation."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
        sentences.append(sentence.capitalize() + rng.choice((".", "!", " ?", ", really.")))
    return sentences


def other_texts() -> list[str]:
    """Text outside the corpus: new words, digits and characters the corpus never had."""
    return ["An unforgettable, dazzling masterpiece of 2024!", "Zany québécois humour; 10/10 would rewatch.",
            "the film is a great story", "Wonderfully acted yet weirdly paced."]


def _wrap(tokenizer: Tokenizer, **special: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)


def wordpiece(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(corpus(400, seed=1), trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                                                 special_tokens=specials))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer.decoder = decoders.WordPiece()
    return _wrap(tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                 mask_token="[MASK]")


def byte_level_bpe(vocab_size: int = 500) -> PreTrainedTokenizerFast:
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus(400, seed=1), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return _wrap(tokenizer, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                 mask_token="<mask>")


def sentencepiece_bpe(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Trained without byte tokens, which are then inserted after the specials (as Llama's vocabulary has them)."""
    specials = ["<unk>", "<s>", "</s>"]
    trained = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    trained.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trained.train_from_iterator(corpus(400, seed=1), trainers.BpeTrainer(vocab_size=vocab_size,
                                                                         special_tokens=specials))
    spec = json.loads(trained.to_str())
    pieces = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    pieces[3:3] = [f"<0x{byte:02X}>" for byte in range(256)]
    spec["model"].update(vocab={piece: i for i, piece in enumerate(pieces)}, byte_fallback=True)
    spec["added_tokens"] = [{**added, "id": pieces.index(added["content"])} for added in spec["added_tokens"]]
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                             special_tokens=[("<s>", 1)])
    return _wrap(tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def affixed_bpe(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", continuing_subword_prefix="##", end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(corpus(400, seed=1), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<pad>"], continuing_subword_prefix="##",
        end_of_word_suffix="</w>"))
    return _wrap(tokenizer, unk_token="<unk>", pad_token="<pad>")


def unigram(vocab_size: int = 200) -> PreTrainedTokenizerFast:
    specials = ["<pad>", "</s>", "<unk>"]
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(corpus(400, seed=1), trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>"))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B:1 </s>:1",
                                                             special_tokens=[("</s>", 1)])
    return _wrap(tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


TOKENIZERS = {"wordpiece": wordpiece, "byte_level_bpe": byte_level_bpe, "sentencepiece_bpe": sentencepiece_bpe,
              "affixed_bpe": affixed_bpe, "unigram": unigram}
