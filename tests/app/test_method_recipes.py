"""The mutual-learning and born-again recipes end to end on tiny models with the real tokenizer."""

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from conftest import TOKENIZER_DIR, needs_example_checkpoint
from hfkd.app.born_again import BornAgainConfig, generation_dir, run_born_again
from hfkd.trainers.mutual import MutualDistillationConfig
from hfkd.app.recipes import main, run_mutual_learning
from hfkd.teacher.cache import state_dict_sha256
from hfkd.trainers.distillation import DistillationTrainer

pytestmark = needs_example_checkpoint  # every test here tokenizes with the real tokenizer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A 2-layer 2-class teacher with the real uncased tokenizer, and a sentiment-like TSV."""
    root = tmp_path_factory.mktemp("methods")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64))
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    words = [("a good fun film", 1), ("a dull bad plot", 0), ("great actors and story", 1), ("weak and long", 0)]
    for split, n in (("train", 24), ("dev", 8)):
        rows = ["sentence\tlabel"] + [f"{words[i % 4][0]} {i}\t{words[i % 4][1]}" for i in range(n)]
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


def common(root, output):
    return ["--train_file", str(root / "train.tsv"), "--validation_file", str(root / "dev.tsv"),
            "--output_dir", str(root / output), "--per_device_train_batch_size", "8", "--max_steps", "3",
            "--learning_rate", "1e-3", "--report_to", "none", "--use_cpu", "--save_strategy", "no",
            "--disable_tqdm", "true", "--max_seq_length", "32", "--debug"]


def test_mutual_recipe_trains_student_with_peer_and_teacher_alongside(workspace):
    teacher_before = BertForSequenceClassification.from_pretrained(workspace / "teacher")
    peer = BertForSequenceClassification.from_pretrained(workspace / "teacher")
    peer.save_pretrained(workspace / "peer")
    metrics = main(run_mutual_learning, [
        "--teacher_model_name_or_path", str(workspace / "teacher"), "--student_layer_indices", "1",
        "--peer_model_name_or_path", str(workspace / "peer"), "--train_teacher_alongside",
        "--peer_kd_weights", "1", "1", "0", *common(workspace, "mutual")], config_class=MutualDistillationConfig)
    out = workspace / "mutual"
    assert {"eval_accuracy", "eval_peer0_accuracy", "eval_peer1_accuracy", "eval_peer2_accuracy"} <= set(metrics)
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["eval_accuracy"] == saved["eval_peer0_accuracy"] == metrics["eval_accuracy"]
    student = BertForSequenceClassification.from_pretrained(out)
    assert student.config.num_hidden_layers == 1 and (out / "tokenizer.json").is_file()
    trained_teacher = BertForSequenceClassification.from_pretrained(out / "peer2")
    assert state_dict_sha256(trained_teacher) != state_dict_sha256(teacher_before)  # it was trained too


def test_mutual_recipe_needs_a_peer(workspace, capsys):
    with pytest.raises(SystemExit):
        main(run_mutual_learning, ["--teacher_model_name_or_path", str(workspace / "teacher"),
                                   "--student_num_layers", "1", *common(workspace, "lonely")[:-1]],
             config_class=MutualDistillationConfig)
    assert "at least one peer" in capsys.readouterr().err


def test_born_again_generation_k_is_distilled_from_generation_k_minus_1(workspace, monkeypatch):
    """Each generation's teacher has the weights (and so the KD targets) of the previous generation's
    saved student; generation 1's teacher is the given one. Students share one initialisation."""
    seen = []
    original_init = DistillationTrainer.__init__

    def recording_init(self, model=None, teacher_model=None, args=None, *a, **k):
        seen.append({"teacher": state_dict_sha256(teacher_model), "student": state_dict_sha256(model),
                     "teacher_model": teacher_model})
        original_init(self, model, teacher_model, args, *a, **k)

    monkeypatch.setattr(DistillationTrainer, "__init__", recording_init)
    summary = main(run_born_again, ["--teacher_model_name_or_path", str(workspace / "teacher"), "--generations", "2",
                                    "--alpha_kd", "1", "--alpha_ce", "0", *common(workspace, "ban")],
                   config_class=BornAgainConfig)
    out = str(workspace / "ban")
    assert [row["generation"] for row in summary["generations"]] == [0, 1, 2]
    gen0 = BertForSequenceClassification.from_pretrained(workspace / "teacher")
    gen1 = BertForSequenceClassification.from_pretrained(generation_dir(out, 1))
    assert seen[0]["teacher"] == state_dict_sha256(gen0)
    assert seen[1]["teacher"] == state_dict_sha256(gen1)  # the saved generation-1 student
    assert seen[0]["student"] == seen[1]["student"]  # same fresh initialisation in every generation
    # The KD targets of generation 2 are generation 1's logits.
    ids = torch.tensor([[101, 2204, 2143, 102]])
    gen1.eval()
    with torch.no_grad():
        # The same saved weights, inputs and kernels: exact by construction.
        torch.testing.assert_close(seen[1]["teacher_model"](input_ids=ids).logits, gen1(input_ids=ids).logits)
    assert gen1.config.num_hidden_layers == gen0.config.num_hidden_layers  # born again: same architecture
    table = json.loads(open(os.path.join(out, "born_again.json")).read())
    assert table["generations"][2]["teacher"] == generation_dir(out, 1)
    for generation in (1, 2):  # each row holds what that generation's evaluation wrote
        evaluated = json.loads((Path(generation_dir(out, generation)) / "eval_results.json").read_text())
        assert "eval_accuracy" in evaluated and {k: table["generations"][generation][k] for k in evaluated} == evaluated
    assert "| 2 | gen_1 |" in open(os.path.join(out, "born_again.md")).read()


def test_console_script_runs_mutual_and_born_again(workspace):
    """`hfkd mutual` saves the 1-layer student and the teacher trained alongside (changed weights);
    `hfkd born-again` writes a summary whose generation row holds that generation's eval results."""
    from hfkd.app.cli import main as cli_main

    cli_main(["mutual", "--teacher_model_name_or_path", str(workspace / "teacher"), "--student_num_layers", "1",
              "--train_teacher_alongside", *common(workspace, "cli_mutual")])
    student = BertForSequenceClassification.from_pretrained(workspace / "cli_mutual")
    trained_teacher = BertForSequenceClassification.from_pretrained(workspace / "cli_mutual" / "peer1")
    assert student.config.num_hidden_layers == 1 and trained_teacher.config.num_hidden_layers == 2
    teacher = BertForSequenceClassification.from_pretrained(workspace / "teacher")
    assert state_dict_sha256(trained_teacher) != state_dict_sha256(teacher)  # the teacher, trained too
    cli_main(["born-again", "--teacher_model_name_or_path", str(workspace / "teacher"), "--generations", "1",
              *common(workspace, "cli_ban")])
    summary = json.loads((workspace / "cli_ban" / "born_again.json").read_text())
    assert [row["generation"] for row in summary["generations"]] == [0, 1]
    evaluated = json.loads((Path(generation_dir(str(workspace / "cli_ban"), 1)) / "eval_results.json").read_text())
    assert {k: summary["generations"][1][k] for k in evaluated} == evaluated
