"""Teacher-output cache: same student as online KD, stale caches refused, uncacheable inputs refused."""

import copy
import json
import os

import datasets
import pytest
import torch
from datasets import Dataset
from transformers import (
    BertForSequenceClassification,
    BertForTokenClassification,
    BertTokenizerFast,
    DataCollatorForLanguageModeling,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
)

from conftest import VOCAB, bert_config, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.teacher.cache import (
    FINGERPRINT_NAME,
    TEACHER_LOGITS,
    TEACHER_TOPK_INDICES,
    TEACHER_TOPK_LOGPROBS,
    TeacherCacheCollator,
    build_teacher_cache,
    load_teacher_cache,
    teacher_cache_fingerprint,
)
from tolerance import assert_within, float32_bound, kl_magnitudes


pytestmark = pytest.mark.usefixtures("datasets_cache")  # Arrow caches in tmp_path (conftest)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> BertTokenizerFast:
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, VOCAB)]))
    return BertTokenizerFast(vocab=str(path))


def ragged_dataset(n=24, seed=0, token_labels=False) -> Dataset:
    """Rows of 4 to 12 tokens, so batches are padded differently when cached and when trained."""
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for _ in range(n):
        length = int(torch.randint(4, 13, (1,), generator=g))
        ids = [2] + torch.randint(5, VOCAB, (length - 2,), generator=g).tolist() + [3]
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * length)
        rows["labels"].append([-100] + [i % 4 for i in ids[1:-1]] + [-100] if token_labels else ids[1] % 3)
    return Dataset.from_dict(rows)


def config(tmp_path, name, **kw):
    defaults = dict(output_dir=str(tmp_path / name), report_to=[], use_cpu=True, per_device_train_batch_size=8,
                    max_steps=4, learning_rate=1e-3, logging_steps=1, save_strategy="no", seed=0,
                    disable_tqdm=True, alpha_kd=0.8, alpha_ce=0.2, temperature=2.0)
    return DistillationConfig(**{**defaults, **kw})


def train(tmp_path, name, student, teacher, data, collator):
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, name),
                                  train_dataset=data, data_collator=collator)
    trainer.train()
    return trainer


def assert_cached_run_matches_online(online, cached):
    """The cached run had no teacher, yet ended with the online run's weights and logged KD terms."""
    assert cached.teacher is None
    assert_same_weights(online.model, cached.model)
    kd = [[h["kd_loss"] for h in t.state.log_history if "kd_loss" in h] for t in (online, cached)]
    # Logged rounded to 6 decimals; float32 KD terms of the same float32 teacher values: a few ulps apart at most.
    assert kd[0] == pytest.approx(kd[1], abs=1e-5) and len(kd[0]) == 4


def assert_same_weights(a, b):
    """Same weights after 4 Adam steps (lr 1e-3), for students trained in float64.

    Float64 because the cache is built on other batches (other padding) than training uses: in
    float32 the teacher's logits, hence the KD gradients, would differ by a few ulps between the two
    runs, which Adam (dividing each gradient by its own size) amplifies where a gradient nearly
    cancels; in float64 those logits agree to ~1e-16 and round to the same float32 values hfkd's
    float32 KD loss uses, so the runs match to ~1e-16. 1e-5 (1% of one step) still holds where the
    two runs use different float32 KD formulas (the k = V top-k cache: ~2e-7 seen), and a wrong
    target row or a missing shift moves weights by about a whole step, 1e-3.
    """
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert p.dtype == torch.float64, name
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=name)


def test_student_trained_from_cache_equals_online(tmp_path, tokenizer):
    teacher, student = (m.double() for m in seq_cls_pair())  # float64: see assert_same_weights
    twin = BertForSequenceClassification(student.config).double()
    twin.load_state_dict(student.state_dict())
    data, collator = ragged_dataset(), DataCollatorWithPadding(tokenizer)

    online = train(tmp_path, "online", student, teacher, data, collator)
    cache = build_teacher_cache(teacher, data, collator, tmp_path / "cache", batch_size=16)
    cached = train(tmp_path, "cached", twin, None, cache, collator)

    assert_cached_run_matches_online(online, cached)


def test_token_classification_cache_pads_positions_like_online(tmp_path, tokenizer):
    torch.manual_seed(0)
    teacher = BertForTokenClassification(bert_config(layers=2, labels=4)).double()  # see assert_same_weights
    student = BertForTokenClassification(bert_config(layers=1, labels=4)).double()
    twin = BertForTokenClassification(student.config).double()
    twin.load_state_dict(student.state_dict())
    data, collator = ragged_dataset(token_labels=True), DataCollatorForTokenClassification(tokenizer)

    online = train(tmp_path, "online", student, teacher, data, collator)
    cache = build_teacher_cache(teacher, data, collator, tmp_path / "cache")
    assert [len(row) for row in cache[TEACHER_LOGITS]] == [len(ids) for ids in data["input_ids"]]
    cached = train(tmp_path, "cached", twin, None, cache, collator)
    assert_same_weights(online.model, cached.model)


def test_causal_lm_cache_is_shifted_like_online(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, default_data_collator

    def gpt2(layers):
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=64,
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))

    torch.manual_seed(0)
    teacher, student = gpt2(2).double(), gpt2(1).double()  # see assert_same_weights
    twin = GPT2LMHeadModel(student.config).double()
    twin.load_state_dict(student.state_dict())
    ids = torch.randint(1, VOCAB, (16, 10), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 10] * 16, "labels": ids.tolist()})

    online = train(tmp_path, "online", student, teacher, data, default_data_collator)
    cache = build_teacher_cache(teacher, data, default_data_collator, tmp_path / "cache")
    cached = train(tmp_path, "cached", twin, None, cache, default_data_collator)
    assert_same_weights(online.model, cached.model)


def test_cache_keeps_row_order_and_records_its_fingerprint(tmp_path, tokenizer):
    teacher = seq_cls_pair()[0].double()  # float64: the row-by-row reference below is then exact
    data = ragged_dataset(n=10)
    data = data.add_column("text", [f"row {i}" for i in range(10)])  # not an input: must not reach the collator
    cache = build_teacher_cache(teacher, data, DataCollatorWithPadding(tokenizer), tmp_path / "cache", batch_size=4,
                                fingerprint_extra={"max_length": 12})
    assert cache.column_names == data.column_names + [TEACHER_LOGITS]
    assert cache["input_ids"] == data["input_ids"]
    teacher.eval()
    with torch.no_grad():
        for row in range(len(data)):
            expected = teacher(input_ids=torch.tensor([data[row]["input_ids"]])).logits[0]
            # Stored in float32: the teacher's float64 logits rounded, whatever the batch they were padded in.
            assert_within(torch.tensor(cache[row][TEACHER_LOGITS]), expected, float32_bound(expected.unsqueeze(-1),
                                                                                              n=1, dim=-1))
    stored = json.loads((tmp_path / "cache" / FINGERPRINT_NAME).read_text())
    shards = stored.pop("shards")
    assert stored == teacher_cache_fingerprint(teacher, data, extra={"max_length": 12})
    assert [s["rows"] for s in shards] == [[0, 10]]
    assert {"teacher_sha256", "rows_sha256", "top_k", "hfkd_version", "max_length"} <= set(stored)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_the_fingerprint_follows_the_rows_not_how_they_were_made(tokenizer):
    """Two tokenize functions closing over different, irrelevant settings make the same rows: the same
    fingerprint (datasets' own `_fingerprint` differs); one changed token or label does not."""
    teacher = seq_cls_pair()[0]
    raw = Dataset.from_dict({"text": ["w5 w6 w7", "w8 w9", "w10 w11 w12 w13"], "label": [0, 1, 2]})

    def tokenizer_with(setting):
        def tokenize(batch):
            assert setting is not None  # closed over, as recipes close over their data arguments
            return {**tokenizer(batch["text"]), "labels": batch["label"]}
        return tokenize

    first = raw.map(tokenizer_with({"max_eval_samples": 1}), batched=True, remove_columns=raw.column_names)
    second = raw.map(tokenizer_with({"max_eval_samples": 2}), batched=True, remove_columns=raw.column_names)
    assert first._fingerprint != second._fingerprint
    assert teacher_cache_fingerprint(teacher, first) == teacher_cache_fingerprint(teacher, second)
    assert teacher_cache_fingerprint(teacher, first.select([0, 1, 2])) == teacher_cache_fingerprint(teacher, first)
    reordered, relabelled = first.select([1, 0, 2]), first.map(lambda row: {"labels": (row["labels"] + 1) % 3})
    touched = first.map(lambda row, i: {"input_ids": [2, 6, 3] if i == 0 else row["input_ids"]}, with_indices=True)
    for changed in (reordered, relabelled, touched, first.select([0, 1])):
        assert teacher_cache_fingerprint(teacher, changed)["rows_sha256"] != teacher_cache_fingerprint(
            teacher, first)["rows_sha256"]


def test_collator_pads_cached_positions_on_the_tokenizer_side(tokenizer):
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    collate = TeacherCacheCollator(DataCollatorForTokenClassification(left))
    rows = [{"input_ids": [2, 7, 3], "labels": [-100, 1, -100], TEACHER_LOGITS: [[1.0, 2.0]] * 3},
            {"input_ids": [2, 3], "labels": [-100, -100], TEACHER_LOGITS: [[5.0, 6.0]] * 2}]
    batch = collate(rows)
    assert batch["input_ids"].tolist() == [[2, 7, 3], [0, 2, 3]]
    assert batch[TEACHER_LOGITS].tolist() == [[[1.0, 2.0]] * 3, [[0.0, 0.0], [5.0, 6.0], [5.0, 6.0]]]
    assert rows[0][TEACHER_LOGITS] == [[1.0, 2.0]] * 3  # features are not modified


def test_stale_or_missing_cache_is_refused(tmp_path, tokenizer):
    teacher, _ = seq_cls_pair()
    data = ragged_dataset()
    build_teacher_cache(teacher, data, DataCollatorWithPadding(tokenizer), tmp_path / "cache")
    assert len(load_teacher_cache(tmp_path / "cache", teacher_cache_fingerprint(teacher, data))) == len(data)

    retrained, _ = seq_cls_pair()
    with torch.no_grad():
        retrained.classifier.bias += 0.1
    with pytest.raises(ValueError, match=r"stale teacher cache .*teacher_sha256 differs.*hfkd cache-teacher") as error:
        load_teacher_cache(tmp_path / "cache", teacher_cache_fingerprint(retrained, data))
    assert "\n" not in str(error.value)
    other_data = ragged_dataset(seed=1)
    with pytest.raises(ValueError, match="rows_sha256 differs .*other training rows"):
        load_teacher_cache(tmp_path / "cache", teacher_cache_fingerprint(teacher, other_data))
    with pytest.raises(ValueError, match="max_length differs"):
        load_teacher_cache(tmp_path / "cache", teacher_cache_fingerprint(teacher, data, extra={"max_length": 64}))
    with pytest.raises(FileNotFoundError, match="no teacher cache .*hfkd cache-teacher"):
        load_teacher_cache(tmp_path / "nowhere", teacher_cache_fingerprint(teacher, data))


def test_interrupted_build_leaves_the_previous_cache(tmp_path, tokenizer, monkeypatch):
    teacher, _ = seq_cls_pair()
    collator = DataCollatorWithPadding(tokenizer)
    build_teacher_cache(teacher, ragged_dataset(), collator, tmp_path / "cache")

    def killed(self, path, **_):
        os.makedirs(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(Dataset, "save_to_disk", killed)
    with pytest.raises(KeyboardInterrupt):
        build_teacher_cache(teacher, ragged_dataset(seed=1), collator, tmp_path / "cache")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hf_cache") == ["cache"]
    load_teacher_cache(tmp_path / "cache", teacher_cache_fingerprint(teacher, ragged_dataset()))


def test_inputs_that_change_every_epoch_are_refused(tmp_path, tokenizer):
    teacher, _ = seq_cls_pair()
    data = ragged_dataset()
    with pytest.raises(ValueError, match="random MLM masking"):
        build_teacher_cache(teacher, data, DataCollatorForLanguageModeling(tokenizer), tmp_path / "c")
    padding = DataCollatorWithPadding(tokenizer)

    def augmenting(features):
        batch = padding(features)
        batch["input_ids"] = torch.where(torch.rand(batch["input_ids"].shape) < 0.5, 1, batch["input_ids"])
        return batch

    with pytest.raises(ValueError, match="different batches for the same rows"):
        build_teacher_cache(teacher, data, augmenting, tmp_path / "c")
    with pytest.raises(ValueError, match="on-the-fly transform"):
        build_teacher_cache(teacher, data.with_transform(lambda rows: rows), padding, tmp_path / "c")
    with pytest.raises(ValueError, match=r"top_k=5 must be an int from 1 to the teacher's 3 output classes"):
        build_teacher_cache(teacher, data, padding, tmp_path / "c", top_k=5, temperature=2.0)
    with pytest.raises(ValueError, match="at the distillation temperature"):
        build_teacher_cache(teacher, data, padding, tmp_path / "c", top_k=2)
    assert not (tmp_path / "c").exists()


def test_teacher_is_still_required_without_a_cache_or_for_hidden_terms(tmp_path, tokenizer):
    teacher, student = seq_cls_pair()
    data = ragged_dataset()
    with pytest.raises(ValueError, match="need a teacher"):
        DistillationTrainer(model=student, args=config(tmp_path, "a"), train_dataset=data)
    cache = build_teacher_cache(teacher, data, DataCollatorWithPadding(tokenizer), tmp_path / "cache")
    with pytest.raises(ValueError, match="need a teacher"):
        DistillationTrainer(model=student, args=config(tmp_path, "b", alpha_hidden=1.0), train_dataset=cache)


@pytest.mark.parametrize("top_k", [None, 3])
def test_cache_teacher_command_then_distill_from_the_cache(tmp_path, tokenizer, capsys, top_k):
    from hfkd.app.cli import main as cli
    from hfkd.app.recipes import main as recipe
    from hfkd.app.recipes import run_distillation

    teacher = seq_cls_pair()[0].double()  # saved in float64: the recipe derives a float64 student from it
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    rows = ["text,label"] + [f"w{5 + i % 90} w{7 + i % 50} w{9 + i % 30},{i % 3}" for i in range(40)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "c.yaml").write_text(
        f"teacher_model_name_or_path: {tmp_path / 'teacher'}\nstudent_num_layers: 1\n"
        f"train_file: {tmp_path / 'train.csv'}\nvalidation_file: {tmp_path / 'train.csv'}\nmax_seq_length: 16\n"
        f"teacher_cache_dir: {tmp_path / 'cache'}\nmax_steps: 3\nper_device_train_batch_size: 8\nuse_cpu: true\n"
        "report_to: none\nsave_strategy: 'no'\ndisable_tqdm: true\nalpha_kd: 0.8\nalpha_ce: 0.2\n")
    config = ["--config", str(tmp_path / "c.yaml")] + (["--teacher_cache_top_k", str(top_k)] if top_k else [])

    cli(["cache-teacher", *config])
    stored = json.loads((tmp_path / "cache" / FINGERPRINT_NAME).read_text())
    assert len(load_teacher_cache(tmp_path / "cache", stored)) == 40
    cached = recipe(run_distillation, [*config, "--output_dir", str(tmp_path / "cached")])
    online = recipe(run_distillation, [*config, "--output_dir", str(tmp_path / "online"), "--teacher_cache_dir", ""])
    # float64 students (see assert_same_weights), so the bound holds on any CPU (~1e-12 seen).
    assert json.loads((tmp_path / "cached" / "config.json").read_text())["dtype"] == "float64"
    assert cached["eval_loss"] == pytest.approx(online["eval_loss"], abs=1e-5)
    if top_k:  # k = num_labels: exact; the cache is tied to the temperature and to top_k
        assert "teacher_topk_logprobs" in load_teacher_cache(tmp_path / "cache", stored).column_names
        for flags, refusal in ((["--temperature", "4"], "temperature differs"), (["--teacher_cache_top_k", "2"],
                                                                                "top_k differs")):
            with pytest.raises(SystemExit):
                recipe(run_distillation, [*config, *flags, "--output_dir", str(tmp_path / "other")])
            assert refusal in capsys.readouterr().err

    with torch.no_grad():
        teacher.classifier.bias += 0.1
    teacher.save_pretrained(tmp_path / "teacher")
    with pytest.raises(SystemExit) as refused:
        recipe(run_distillation, [*config, "--output_dir", str(tmp_path / "stale")])
    assert refused.value.code == 2
    assert "stale teacher cache" in capsys.readouterr().err


# ---------------------------------------------------------------- top-k caches (LM vocabularies)


def gpt2_pair(dtype=torch.float32):
    from transformers import GPT2Config, GPT2LMHeadModel

    def gpt2(layers):
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=64,
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))

    torch.manual_seed(0)
    teacher, student = gpt2(2).to(dtype), gpt2(1).to(dtype)
    twin = GPT2LMHeadModel(student.config).to(dtype)
    twin.load_state_dict(student.state_dict())
    return teacher, student, twin


def test_top_k_cache_with_k_equal_vocab_trains_like_online(tmp_path, tokenizer, caplog):
    """Ragged rows, padded and shifted: k = vocabulary keeps the whole distribution, so the student is the same."""
    teacher, student, twin = gpt2_pair(torch.float64)  # see assert_same_weights
    data, collator = ragged_dataset(), DataCollatorForLanguageModeling(tokenizer, mlm=False)

    online = train(tmp_path, "online", student, teacher, data, collator)
    with caplog.at_level("INFO", logger="hfkd.teacher.cache"):
        cache = build_teacher_cache(teacher, data, collator, tmp_path / "cache", top_k=VOCAB, temperature=2.0)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("hfkd.teacher.cache")]
    assert "GiB of top-100 log-probabilities (T=2.0)" in messages[0] and "written by process 0 in" in messages[-1]
    assert TEACHER_LOGITS not in cache.column_names
    cached = train(tmp_path, "cached", twin, None, cache, collator)

    assert_cached_run_matches_online(online, cached)


def test_top_k_cache_stores_the_teacher_top_k_and_the_kd_term_is_the_bucketed_kl(tmp_path, tokenizer):
    # float64 models: the references below are exact, so the bounds are those of hfkd's float32 arithmetic.
    teacher, student, _ = gpt2_pair(torch.float64)
    data, collator = ragged_dataset(n=8), DataCollatorForLanguageModeling(tokenizer, mlm=False)
    k, temperature = 5, 2.0
    cache = build_teacher_cache(teacher, data, collator, tmp_path / "cache", top_k=k, temperature=temperature)

    # Stored: the teacher's own top-k at T, and the log of the rest, for every position of a row.
    teacher.eval()
    row = cache[3]
    with torch.no_grad():
        z_t = teacher(input_ids=torch.tensor([row["input_ids"]])).logits[0] / temperature
    norm_t = z_t.logsumexp(-1, keepdim=True)
    log_p_t = z_t - norm_t
    indices = torch.tensor(row[TEACHER_TOPK_INDICES])
    assert indices.shape == (len(row["input_ids"]), k)
    # Integer result of a float64 ranking (the cache ranks float32 log-probs): exact unless two of
    # the top k + 1 are within float32 rounding, which these rows are not (gaps >= 1e-4 here).
    assert torch.equal(indices, log_p_t.topk(k, -1).indices)
    logprobs = torch.tensor(row[TEACHER_TOPK_LOGPROBS], dtype=torch.float64)
    top = log_p_t.gather(-1, indices)
    rest = log_p_t.scatter(-1, indices, -torch.inf).logsumexp(-1)
    # A float32 log-softmax entry is z_c/T - logsumexp(z/T): a few ulps of |z_c/T| + |normaliser|.
    assert_within(logprobs[:, :k], top, float32_bound(torch.stack(
        [z_t.gather(-1, indices).abs(), norm_t.abs().expand(-1, k)], -1), n=VOCAB, dim=-1), "top-k log-probs")
    assert_within(logprobs[:, k], rest, float32_bound(torch.stack(
        [z_t.abs().amax(-1), norm_t[:, 0].abs(), rest.abs()], -1), n=VOCAB, dim=-1), "rest log-prob")

    # The trainer's KD term on a batch equals the bucketed KL computed by hand (shifted, padding ignored).
    trainer = DistillationTrainer(model=student, args=config(tmp_path, "t", alpha_kd=1.0, alpha_ce=0.0),
                                  train_dataset=cache, data_collator=collator)
    batch = trainer.data_collator([cache[i] for i in range(6)])
    loss = trainer.compute_loss(student.train(), batch)
    with torch.no_grad():
        z_s = student(input_ids=batch["input_ids"]).logits / temperature
    log_p_s, norm_s = z_s.log_softmax(-1), z_s.logsumexp(-1)
    total, magnitudes = [], []
    for b in range(6):
        length = len(cache[b]["input_ids"])
        log_target = torch.tensor(cache[b][TEACHER_TOPK_LOGPROBS], dtype=torch.float64)
        ids = torch.tensor(cache[b][TEACHER_TOPK_INDICES])
        for pos in range(length - 1):  # position pos predicts token pos + 1
            student_top = log_p_s[b, pos, ids[pos]]
            student_rest = log_p_s[b, pos].scatter(0, ids[pos], -torch.inf).logsumexp(0)
            buckets_s = torch.cat([student_top, student_rest.reshape(1)])
            total.append(float((log_target[pos].exp() * (log_target[pos] - buckets_s)).sum()))
            magnitudes.append(kl_magnitudes(log_target[pos], buckets_s, norm_s[b, pos]))
    expected = sum(total) / len(total) * temperature**2
    # The KL is ~1e-3 of the terms it is the difference of: bound by those terms, not by the result.
    bound = float32_bound(torch.stack(magnitudes) * temperature**2 / len(total), n=VOCAB)
    assert loss.item() == pytest.approx(expected, abs=bound)
    assert bound < 0.02 * expected  # still tight enough to see a term missing or mis-scaled


def test_stale_top_k_cache_is_refused(tmp_path, tokenizer):
    teacher, student, _ = gpt2_pair()
    data, collator = ragged_dataset(n=8), DataCollatorForLanguageModeling(tokenizer, mlm=False)
    cache = build_teacher_cache(teacher, data, collator, tmp_path / "cache", top_k=5, temperature=2.0)
    load_teacher_cache(tmp_path / "cache", teacher_cache_fingerprint(teacher, data, top_k=5, temperature=2.0))
    with pytest.raises(ValueError, match=r"stale teacher cache .*temperature differs \(temperature: cache 2.0, "
                                         r"expected 4.0\); a top-k cache holds log-probabilities at the distillation temperature; rebuild"):
        load_teacher_cache(tmp_path / "cache", teacher_cache_fingerprint(teacher, data, top_k=5, temperature=4.0))
    with pytest.raises(ValueError, match=r"top_k differs \(top_k: cache 5, expected 10\)"):
        load_teacher_cache(tmp_path / "cache", teacher_cache_fingerprint(teacher, data, top_k=10, temperature=2.0))
    with pytest.raises(ValueError, match="temperature, top_k differ .*; teacher_cache_top_k must equal the cache's top_k; rebuild"):
        load_teacher_cache(tmp_path / "cache", teacher_cache_fingerprint(teacher, data))  # a full cache expected
    # Given to the trainer directly: another temperature, or a loss that needs every logit, is refused.
    with pytest.raises(ValueError, match=r"log-probabilities at temperature 2.0 but temperature is 4.0"):
        DistillationTrainer(model=student, args=config(tmp_path, "a", temperature=4.0), train_dataset=cache)
    with pytest.raises(ValueError, match=r"kd_loss='jsd' needs the teacher's full distribution"):
        DistillationTrainer(model=student, args=config(tmp_path, "b", kd_loss="jsd"), train_dataset=cache)
    with pytest.raises(ValueError, match=r"kd_loss='mse' needs the teacher's full distribution.*unset teacher_cache"):
        config(tmp_path, "c", kd_loss="mse", teacher_cache_top_k=5)
    with pytest.raises(ValueError, match="teacher_cache_top_k must be an int >= 1"):
        config(tmp_path, "d", teacher_cache_top_k=0)


def test_masked_lm_teacher_is_refused(tmp_path, tokenizer):
    from transformers import BertForMaskedLM

    teacher = BertForMaskedLM(bert_config(layers=1))
    with pytest.raises(ValueError, match="cannot cache a masked_lm teacher: its inputs are masked at random"):
        build_teacher_cache(teacher, ragged_dataset(n=4), DataCollatorForLanguageModeling(tokenizer),
                            tmp_path / "c", top_k=5, temperature=2.0)
