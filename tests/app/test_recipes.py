"""Recipes end to end on tiny models: a 6-class CSV never shown before, errors as one line."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
)

from conftest import (
    LABELS, REPO_ROOT, SHARED_DIR, TOKENIZER_DIR, make_text_classification_workspace, needs_example_checkpoint)
from hfkd.app.cli import main as cli_main
from hfkd.app.recipes import main, run_distillation, run_finetune
from hfkd.report.metric import distillation_metric

pytestmark = needs_example_checkpoint  # every test here tokenizes with the real tokenizer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_text_classification_workspace(tmp_path_factory.mktemp("recipes"))


def common(root, output):
    return ["--train_file", str(root / "train.csv"), "--validation_file", str(root / "dev.csv"),
            "--output_dir", str(root / output), "--per_device_train_batch_size", "8", "--num_train_epochs", "2",
            "--learning_rate", "1e-3", "--report_to", "none", "--use_cpu", "--save_strategy", "no",
            "--disable_tqdm", "true", "--max_seq_length", "32"]


def test_finetune_then_distill_a_new_six_class_csv(workspace):
    from transformers import TrainingArguments

    main(run_finetune, ["--model_name_or_path", str(workspace / "base"), "--ignore_mismatched_sizes",
                        *common(workspace, "teacher")],
         config_class=TrainingArguments)
    teacher_dir = workspace / "teacher"
    teacher_cfg = json.loads((teacher_dir / "config.json").read_text())
    assert [teacher_cfg["id2label"][str(i)] for i in range(6)] == LABELS

    main(run_distillation, ["--teacher_model_name_or_path", str(teacher_dir), "--student_num_layers", "1",
                            "--alpha_kd", "0.5", "--alpha_ce", "0.5", "--alpha_hidden", "1",
                            "--layer_mapping", "skip", "--report_at_end", *common(workspace, "student")])
    student_dir = workspace / "student"
    results = json.loads((student_dir / "eval_results.json").read_text())
    assert {"eval_accuracy", "eval_f1", "eval_loss"} <= set(results)
    student = AutoModelForSequenceClassification.from_pretrained(student_dir)
    assert student.config.num_hidden_layers == 1 and student.config.id2label[0] == "abbr"
    assert AutoTokenizer.from_pretrained(student_dir).vocab_size == AutoTokenizer.from_pretrained(teacher_dir).vocab_size

    # report_at_end: report files, and the model card carries the DM table
    report = json.loads((student_dir / "report" / "report.json").read_text())
    assert {p.name for p in (student_dir / "report").iterdir()} == {"report.json", "report.md", "report.png"}
    (entry,) = report["students"]
    assert entry["distillation_metric"] == pytest.approx(
        distillation_metric(entry["params"], report["teacher"]["params"], entry["score"], report["teacher"]["score"]))
    card = (student_dir / "README.md").read_text()
    assert "base_model:" in card and "DM" in card and "layer_map" in card

    # the console script's report on the saved folders
    cli_main(["report", "--teacher", str(teacher_dir), "--student", str(student_dir),
              "--validation_file", str(workspace / "dev.csv"), "--max_seq_length", "32", "--repeats", "3",
              "--output_dir", str(workspace / "report")])
    cli_report = json.loads((workspace / "report" / "report.json").read_text())
    assert cli_report["metric_name"] == "accuracy" and cli_report["students"][0]["name"] == "student"
    assert cli_report["teacher"]["params"] > cli_report["students"][0]["params"]


def test_yaml_config_with_command_line_override(workspace, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"model_name_or_path: {workspace / 'base'}\nignore_mismatched_sizes: true\ntrain_file: {workspace / 'train.csv'}\n"
                      f"validation_file: {workspace / 'dev.csv'}\noutput_dir: {tmp_path / 'out'}\n"
                      "max_train_samples: 16\nnum_train_epochs: 1\nreport_to: none\nuse_cpu: true\n"
                      "learning_rate: 0.5\nsave_strategy: 'no'\n")
    from transformers import TrainingArguments

    main(run_finetune, ["--config", str(config), "--max_train_samples", "8", "--learning_rate", "1e-4"],
         config_class=TrainingArguments)
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 1  # 8 samples, batch 8: the override beat the file's 16


def run_recipe(*args):
    return subprocess.run([sys.executable, str(REPO_ROOT / "recipes" / "distill_text_classification.py"), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def bad_inputs(workspace):
    """Artifacts that are each wrong in one way, built once for the bad-input cases below."""
    root = workspace / "bad_inputs"
    root.mkdir(exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(workspace / "teacher6")
    config = BertForSequenceClassification.from_pretrained(workspace / "teacher6").config.to_dict()
    variants = {
        "student_vocab": BertForSequenceClassification(BertConfig(**{**config, "vocab_size": tokenizer.vocab_size + 8})),
        "student_permuted": BertForSequenceClassification(BertConfig(**{
            **config, "id2label": dict(enumerate(reversed(LABELS))),
            "label2id": {label: i for i, label in enumerate(reversed(LABELS))}})),
    }
    for name, model in variants.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    # Same size, other vocabulary: two tokens swap ids.
    words = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)
    words[1000], words[1001] = words[1001], words[1000]
    BertForSequenceClassification(BertConfig(**config)).save_pretrained(root / "student_swapped")
    (root / "swapped_vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(root / "swapped_vocab.txt")).save_pretrained(root / "student_swapped")
    BertModel(BertConfig(**config)).save_pretrained(root / "bare")  # an encoder without a classifier
    tokenizer.save_pretrained(root / "bare")
    (root / "empty.csv").write_text("text,label\n")
    (root / "outside.csv").write_text("text,label\nwhat is it,abbr\nwhere is it,planet\n")
    (root / "spam.csv").write_text("text,label\nbuy now,spam\nwhere is it,loc\n")  # a transfer set of another task
    (root / "pile.csv").write_text("text\nwhere is it\nwhat is it\n")
    (root / "previous" / "checkpoint-3").mkdir(parents=True, exist_ok=True)
    cli_main(["cache-teacher", "--teacher_model_name_or_path", str(workspace / "teacher6"),
              "--teacher_cache_dir", str(root / "cache"), *common(workspace, "cache_run")])
    return root


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--text_column", "question"], "column 'question' is not in the train split (columns: text, label)"),
        (["--train_file", "/nonexistent/train.csv"], "train file not found: /nonexistent/train.csv"),
        (["--temperature", "0"], "temperature must be > 0"),
        (["--student_layer_indices", "0", "7"], "layer_indices=[0, 7] has [7] out of range for a teacher with 2 layers"),
        (["--unknown_flag", "1"], "unrecognised arguments ['--unknown_flag', '1']"),
        (["--teacher_model_name_or_path", "BASE"], "the data has 6 labels"),
        (["--max_seq_length", "512"], "exceeds BertForSequenceClassification's max_position_embeddings=128"),
        (["--output_dir", "BAD/previous"], "already holds a run"),
        (["--student_model_name_or_path", "BAD/student_vocab"], "vocabularies differ"),
        (["--student_model_name_or_path", "BAD/student_permuted"], "label orders differ"),
        (["--alpha_hidden", "1", "--layer_mapping", "[[0, 9]]"], "layer_mapping pair [0, 9] is out of range"),
        (["--alpha_hidden", "1", "--layer_mapping", "[[0, 1, 2]]"],
         "layer_mapping entry [0, 1, 2] is not a [student_layer, teacher_layer] pair of ints"),
        (["--alpha_kd", "0", "--alpha_ce", "0"], "are 0: nothing would be trained"),
        (["--alpha_kd", "-1"], "alpha_kd must be a finite number >= 0, got -1"),
        (["--validation_file", "BAD/empty.csv"], "empty.csv has no rows: point it at a file with examples"),
        (["--validation_file", "BAD/outside.csv"], "data labels ['planet'] are not in the model's label2id"),
        (["--unlabeled_file", "BAD/spam.csv"], "has labels ['spam'] that are not among the labelled set's classes"),
        (["--unlabeled_file", "BAD/spam.csv", "--unlabeled_ratio", "0"], "unlabeled_ratio=0.0 must be a finite number > 0"),
        (["--unlabeled_file", "BAD/pile.csv", "--unlabeled_min_confidence", "0.5"],
         "unlabeled_min_confidence needs the teacher's cached full logits"),
        (["--teacher_cache_dir", "BAD/cache", "--max_seq_length", "24"], "stale teacher cache in"),
        (["--use_peft"], "use_peft with a student built from the teacher"),
        (["--student_model_name_or_path", "BAD/student_swapped"], "tokenizers differ in"),
        (["--teacher_model_name_or_path", "BAD/bare"], "no trained BertForSequenceClassification head"),
        (["--teacher_dtype", "bf16"], "teacher_dtype='bf16' is not a torch floating dtype"),
        (["--teacher_model_init_kwargs", '{"trust_remote_code": true}'], "--trust_remote_code"),
    ],
)
def test_recipe_bad_input_is_one_line_exit_2(workspace, bad_inputs, tmp_path, extra, message):
    """Each bad input ends the recipe with exit status 2 and one line naming what is wrong (a phrase of
    that very message, so another error, or a traceback, does not pass for it)."""
    base = ["--teacher_model_name_or_path", str(workspace / "teacher6"), "--student_num_layers", "1",
            *common(workspace, "bad"), "--output_dir", str(tmp_path / "out")]
    names = {"BASE": str(workspace / "base")}
    result = run_recipe(*base, *[names.get(a, a.replace("BAD", str(bad_inputs))) for a in extra])
    assert result.returncode == 2, result.stderr[-1500:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hfkd: error:") and message in last and "Traceback" not in result.stderr, last


def test_every_hfkd_setup_error_is_one_line_and_debug_keeps_the_traceback(workspace, tmp_path, capsys):
    from hfkd.models import HfkdError

    class Refused(HfkdError):  # not a ValueError: still a setup error hfkd raised
        pass

    def run(*_):
        raise Refused("this setup is refused: fix it")

    argv = ["--train_file", str(workspace / "train.csv"), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exited:
        main(run, argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("hfkd: error: this setup is refused: fix it (rerun with --debug")
    with pytest.raises(Refused):
        main(run, [*argv, "--debug"])


def test_whole_float_labels_with_a_default_named_teacher_train_as_classes(workspace, tmp_path):
    # 0.0/1.0 labels and a two-class teacher with LABEL_0/LABEL_1: classification, not a CE crash.
    rows = ["text,label"] + [f"{'good' if i % 2 else 'bad'} movie {i},{float(i % 2)}" for i in range(16)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    main(run_distillation, ["--teacher_model_name_or_path", str(workspace / "base"), "--student_num_layers", "1",
                            *common(workspace, "unused"), "--train_file", str(tmp_path / "train.csv"),
                            "--validation_file", str(tmp_path / "train.csv"), "--output_dir", str(tmp_path / "out"),
                            "--max_steps", "1"])
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert student.config.num_labels == 2 and student.config.id2label == {0: "0", 1: "1"}


def test_tokenizer_without_pad_token_pads_with_eos(workspace, tmp_path, caplog):
    """GPT-2 style: no pad token. The recipe pads with eos and tells the model, logged once."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast, TrainingArguments

    words = sorted({w for line in (workspace / "train.csv").read_text().splitlines()[1:] for w in line.replace(",", " ").split()})
    vocab = {token: i for i, token in enumerate(["<|endoftext|>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>")
    assert tokenizer.pad_token is None
    GPT2ForSequenceClassification(GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                             bos_token_id=0, eos_token_id=0)).save_pretrained(tmp_path / "gpt")
    tokenizer.save_pretrained(tmp_path / "gpt")
    with caplog.at_level("INFO", logger="hfkd"):
        main(run_finetune, ["--model_name_or_path", str(tmp_path / "gpt"), "--ignore_mismatched_sizes",
                            *common(workspace, "unused"), "--output_dir", str(tmp_path / "out"), "--max_steps", "1"],
             config_class=TrainingArguments)
    assert sum("no pad token" in r.getMessage() for r in caplog.records) == 1
    assert AutoTokenizer.from_pretrained(tmp_path / "out").pad_token == "<|endoftext|>"
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").config.pad_token_id == 0


def test_a_student_checkpoint_beside_shape_settings_is_used_as_it_is_and_the_settings_named(workspace, caplog):
    """A recipe's student shape and a checkpoint added on the command line: the checkpoint wins, and the
    ignored settings are named rather than dropped in silence."""
    from hfkd.app.arguments import ModelArguments
    from hfkd.app.recipes import build_student

    teacher = AutoModelForSequenceClassification.from_pretrained(workspace / "teacher6")
    args = ModelArguments(student_model_name_or_path=str(workspace / "teacher6"), student_num_layers=1,
                          student_hidden_size=16)
    with caplog.at_level("WARNING", logger="hfkd"):
        student = build_student(args, teacher, "sequence_classification")
    assert student.config.num_hidden_layers == AutoConfig.from_pretrained(workspace / "teacher6").num_hidden_layers != 1
    warned = [r.getMessage() for r in caplog.records if "is used as it is" in r.getMessage()]
    assert len(warned) == 1 and "student_num_layers=1, student_hidden_size=16" in warned[0], warned
    caplog.clear()
    with caplog.at_level("WARNING", logger="hfkd"):
        build_student(ModelArguments(student_model_name_or_path=str(workspace / "teacher6")), teacher,
                      "sequence_classification")
    assert not [r for r in caplog.records if "is used as it is" in r.getMessage()]


WIKITEXT = SHARED_DIR / "data" / "wikitext2" / "valid.txt"


def _lm_model_dir(root, kind):
    from transformers import BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(0)
    if kind == "mlm":
        model = BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, intermediate_size=64, max_position_embeddings=128))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=4,
                                           n_positions=128, bos_token_id=0, eos_token_id=0))
    model.save_pretrained(root / kind)
    tokenizer.save_pretrained(root / kind)
    return root / kind


@pytest.mark.skipif(not WIKITEXT.is_file(), reason=f"WikiText-2 not at {WIKITEXT}: set HFKD_SHARED_DIR to the shared folder")
@pytest.mark.parametrize("kind,script", [("mlm", "distill_masked_lm.py"), ("clm", "distill_causal_lm.py")])
def test_language_model_recipes_on_wikitext(tmp_path, kind, script):
    """The masked- and causal-LM recipes train on WikiText-2 and report perplexity = exp(eval_loss),
    the loss of a near-uniform guess over the vocabulary after 3 steps from random weights."""
    teacher = _lm_model_dir(tmp_path, kind)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "recipes" / script), "--teacher_model_name_or_path", str(teacher),
         "--student_num_layers", "1", "--train_file", str(WIKITEXT), "--validation_file", str(WIKITEXT),
         "--block_size", "32", "--max_train_samples", "32", "--max_eval_samples", "16",
         "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "8", "--max_steps", "3",
         "--alpha_kd", "1", "--alpha_ce", "1", "--alpha_hidden", "1", "--hidden_loss", "cosine",
         "--report_to", "none", "--use_cpu", "--save_strategy", "no", "--disable_tqdm", "true"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["eval_perplexity"] == pytest.approx(math.exp(results["eval_loss"]), rel=1e-9)
    # Random init (std 0.02) gives logits ~0.1 apart: the token loss is ln(vocab) = 10.2 within ~0.5.
    vocab = AutoTokenizer.from_pretrained(teacher).vocab_size
    assert abs(results["eval_loss"] - math.log(vocab)) < 0.5, results
    assert 0 <= results["eval_accuracy"] <= 1


def test_token_classification_recipe(tmp_path):
    """The token-classification recipe reads a JSONL of word tags, distils a 1-layer student with the
    teacher's tags, and reports entity precision/recall/F1 (seqeval) that are consistent."""
    from transformers import BertForTokenClassification

    tags = ["O", "B-LOC", "I-LOC"]
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, id2label=dict(enumerate(tags)),
                        label2id={t: i for i, t in enumerate(tags)})
    BertForTokenClassification(config).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    rows = [{"tokens": ["we", "flew", "to", "new", "york"], "ner_tags": ["O", "O", "O", "B-LOC", "I-LOC"]},
            {"tokens": ["paris", "is", "big"], "ner_tags": ["B-LOC", "O", "O"]}] * 8
    data = tmp_path / "ner.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    main(run_distillation, ["--task", "token_classification", "--teacher_model_name_or_path", str(tmp_path / "teacher"),
                            "--student_num_layers", "1", "--train_file", str(data), "--validation_file", str(data),
                            "--label_column", "ner_tags", "--output_dir", str(tmp_path / "out"), "--max_steps", "3",
                            "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu",
                            "--save_strategy", "no", "--disable_tqdm", "true", "--alpha_kd", "1", "--alpha_ce", "1"])
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    p, r, f1 = results["eval_precision"], results["eval_recall"], results["eval_f1"]
    assert 0 <= p <= 1 and 0 <= r <= 1 and f1 == pytest.approx(2 * p * r / (p + r) if p + r else 0.0, abs=1e-12)
    student = BertForTokenClassification.from_pretrained(tmp_path / "out")
    assert student.config.num_hidden_layers == 1 and list(student.config.id2label.values()) == tags


def test_accelerate_launch_two_processes_runs_the_recipe(workspace, tmp_path):
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    result = subprocess.run(
        [launcher, "launch", "--config_file", str(REPO_ROOT / "recipes" / "accelerate" / "ddp.yaml"),
         str(REPO_ROOT / "recipes" / "distill_text_classification.py"),
         "--teacher_model_name_or_path", str(workspace / "teacher6"), "--student_num_layers", "1",
         *[a for a in common(workspace, "ddp_student") if a != "--use_cpu"], "--output_dir", str(tmp_path / "ddp")],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "ddp" / "trainer_state.json").read_text())
    # 60 examples, 2 processes x 8 per device -> 4 steps per epoch, 2 epochs
    assert state["global_step"] == 8
    assert (tmp_path / "ddp" / "eval_results.json").is_file()


def test_recipe_lora_student_two_teachers_and_schedules(workspace, tmp_path):
    """use_peft + lora flags, a plain and an adapter teacher with weights, a temperature schedule."""
    from peft import LoraConfig, get_peft_model

    base = BertForSequenceClassification.from_pretrained(workspace / "teacher6")
    adapter = get_peft_model(base, LoraConfig(r=2, target_modules=["query"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "teacher_adapter")  # no tokenizer: the base's is used
    main(run_distillation, [
        "--teacher_model_name_or_path", str(workspace / "teacher6"), str(tmp_path / "teacher_adapter"),
        "--teacher_weights", "0.6", "0.4", "--teacher_combination", "logit_mean",
        "--student_model_name_or_path", str(workspace / "teacher6"), "--use_peft", "--lora_r", "4",
        "--lora_target_modules", "query", "value",
        "--temperature_schedule", "linear", "--temperature", "3", "--temperature_end", "1",
        "--loss_weight_schedule", "cosine", "--loss_weights_end", '{"alpha_kd": 0.1}',
        "--alpha_kd", "1", "--alpha_ce", "0.5", "--report_at_end", "--logging_steps", "1",
        *common(workspace, "unused"), "--output_dir", str(tmp_path / "out")])
    out = tmp_path / "out"
    assert {"adapter_config.json", "adapter_model.safetensors", "eval_results.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert logged[0]["temperature"] == 3.0 and logged[-1]["temperature"] < 1.3 and "alpha_kd" in logged[0]
    card = (out / "README.md").read_text()
    assert "(0.6)" in card and "logit_mean" in card and "LORA r=4" in card and "temperature linear 3→1" in card
    assert (out / "report" / "report.json").is_file()
    from peft import AutoPeftModelForSequenceClassification

    reloaded = AutoPeftModelForSequenceClassification.from_pretrained(out)  # base found via adapter_config
    assert reloaded.get_base_model().config.num_hidden_layers == 2


def test_distill_with_a_transfer_set_from_the_teacher_cache(workspace, tmp_path):
    """cache-teacher caches the unlabeled rows too; distill trains from the cache, CE on the 60 labelled
    rows, KD on all 84, and the confidence filter (0: keep all) runs on the cached logits."""
    (tmp_path / "pile.csv").write_text("text\n" + "".join(f"where is the place {i}\n" for i in range(24)))
    flags = ["--teacher_model_name_or_path", str(workspace / "teacher6"), *common(workspace, "unused"),
             "--output_dir", str(tmp_path / "out"), "--unlabeled_file", str(tmp_path / "pile.csv"),
             "--teacher_cache_dir", str(tmp_path / "cache"), "--logging_steps", "1", "--unlabeled_min_confidence", "0.0"]
    cli_main(["cache-teacher", *flags])  # the same data flags as distill's: its cache is of the same rows
    # An evaluation setting changes nothing the cache holds: the cache is found fresh (a stale one exits 2).
    main(run_distillation, [*flags, "--student_num_layers", "1", "--max_eval_samples", "5"])
    logs = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    counted = [h for h in logs if "all_items" in h]
    assert sum(h["all_items"] for h in counted) == 2 * 84 and sum(h["labelled_items"] for h in counted) == 2 * 60
