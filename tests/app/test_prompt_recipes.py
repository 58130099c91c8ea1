"""`hfkd distill --task causal_lm` on prompts (on-policy, seq_kd), and `hfkd convert-gguf`'s refusals."""

from __future__ import annotations

import json

import datasets
import pytest
from conftest import causal_lm_pair, tiny_lm_tokenizer
from transformers import AutoModelForCausalLM

from hfkd.app.cli import main as cli_main
from hfkd.app.prompt_data import prepare_prompt_datasets
from hfkd.app.recipes import main, run_distillation
from hfkd.app.task_data import DataArguments, DataError
from hfkd.models import DistillationSetupError
from hfkd.trainers.on_policy import COMPLETION_IDS, PROMPT_IDS

pytestmark = pytest.mark.usefixtures("datasets_cache")


@pytest.fixture
def teacher_dir(tmp_path):
    teacher, _ = causal_lm_pair()
    teacher.save_pretrained(tmp_path / "teacher")
    tiny_lm_tokenizer().save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


def flags(tmp_path, teacher_dir, train_file, *extra):
    return ["--teacher_model_name_or_path", str(teacher_dir), "--student_num_layers", "2", "--train_file",
            str(train_file), "--output_dir", str(tmp_path / "student"), "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--report_to", "none", "--use_cpu", "--save_strategy", "no",
            "--disable_tqdm", "true", "--alpha_kd", "1", "--alpha_ce", "0", "--temperature", "1",
            "--max_new_tokens", "4", "--task", "causal_lm", "--max_seq_length", "8", *extra]


def test_text_file_prompts_train_on_policy_and_the_student_generates(tmp_path, teacher_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("t5 t6 t7 t8 t9\n\nt10 t11\nt12 t13 t14\n")
    main(run_distillation, flags(tmp_path, teacher_dir, prompts, "--prompt_column", "text", "--lmbda", "1",
                                 "--kd_loss", "reverse_kl", "--max_seq_length", "3", "--max_train_samples", "2"))
    state = json.loads((tmp_path / "student" / "trainer_state.json").read_text())
    assert state["num_train_epochs"] == 2  # 2 prompts (of 3 non-blank lines), batch 2, 2 steps: 2 epochs
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert student.config.num_hidden_layers == 2
    out = student.generate(tiny_lm_tokenizer()("t5 t6", return_tensors="pt")["input_ids"], max_new_tokens=3,
                           do_sample=False, pad_token_id=0)
    assert out.shape[1] >= 3


def test_jsonl_prompts_with_completions_mix_and_evaluate(tmp_path, teacher_dir):
    rows = [{"prompt": f"t{5 + i} t{6 + i}", "completion": f"t{20 + i} t{21 + i}"} for i in range(6)]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(run_distillation, flags(tmp_path, teacher_dir, tmp_path / "train.jsonl", "--validation_file",
                                 str(tmp_path / "dev.jsonl"), "--lmbda", "0.5", "--kd_loss", "jsd"))
    results = json.loads((tmp_path / "student" / "all_results.json").read_text())
    assert results["eval_loss"] > 0


def test_text_prompts_cut_their_reference_completions(tmp_path):
    tokenizer = tiny_lm_tokenizer()
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"text": ["t5 t6 t7 t8 t9 t10", "t11 t12", "t13 t14 t15"]})})
    args = DataArguments(train_file="unused.txt", prompt_column="text", max_seq_length=2, completion_length=3)
    train = prepare_prompt_datasets(raw, tokenizer, args)["train"]
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    # "t11 t12" has no token after its prompt: dropped. No EOS: the text goes on after the cut.
    assert train[PROMPT_IDS] == [ids("t5 t6"), ids("t13 t14")]
    assert train[COMPLETION_IDS] == [ids("t7 t8 t9"), ids("t15")]
    with pytest.raises(DataError, match="no train text is longer than max_seq_length=6"):
        prepare_prompt_datasets(raw, tokenizer, DataArguments(train_file="unused.txt", prompt_column="text",
                                                              max_seq_length=6, completion_length=3))
    with_completions = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["t5"], "completion": ["t6"]})})
    with pytest.raises(DataError, match="unset completion_length, or give prompts only"):
        prepare_prompt_datasets(with_completions, tokenizer, DataArguments(train_file="unused.jsonl", completion_length=3))


def test_text_prompts_train_on_policy_with_the_lm_loss_on_their_continuations(tmp_path, teacher_dir):
    text = tmp_path / "text.txt"
    text.write_text("t5 t6 t7 t8 t9 t10\nt11 t12 t13 t14\nt15 t16\n")
    main(run_distillation, flags(tmp_path, teacher_dir, text, "--prompt_column", "text", "--max_seq_length", "2",
                                 "--completion_length", "3", "--lmbda", "1", "--reference_ce", "--alpha_ce", "0.5",
                                 "--alpha_kd", "0.5", "--kd_loss", "reverse_kl", "--logging_steps", "1"))
    state = json.loads((tmp_path / "student" / "trainer_state.json").read_text())
    logs = [h for h in state["log_history"] if "kd_loss" in h]
    assert len(logs) == 2 and all(h["ce_loss"] > 0 and h["on_policy_fraction"] == 1 for h in logs)


def test_completion_length_on_data_that_are_not_prompts_is_one_line(tmp_path, teacher_dir, capsys):
    text = tmp_path / "text.txt"
    text.write_text("t5 t6 t7 t8 t9 t10\n")
    with pytest.raises(SystemExit):
        main(run_distillation, flags(tmp_path, teacher_dir, text, "--completion_length", "3"))
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("hfkd: error:") and "set prompt_column (e.g. 'text' for a .txt file)" in error


def test_a_missing_prompt_column_is_one_line(tmp_path, teacher_dir, capsys):
    (tmp_path / "train.jsonl").write_text('{"question": "t5 t6"}\n')
    with pytest.raises(SystemExit):
        main(run_distillation, flags(tmp_path, teacher_dir, tmp_path / "train.jsonl", "--lmbda", "1"))
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("hfkd: error:") and "a 'prompt' (text) or 'messages' (chat) column" in error


def test_convert_gguf_refuses_a_missing_file_and_a_foreign_folder(tmp_path):
    with pytest.raises(DistillationSetupError, match="does not exist"):
        cli_main(["convert-gguf", "--gguf_file", str(tmp_path / "none.gguf"), "--output_dir", str(tmp_path / "o")])
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DistillationSetupError, match="not written by hfkd convert-gguf"):
        cli_main(["convert-gguf", "--gguf_file", str(tmp_path / "model.gguf"), "--output_dir", str(tmp_path / "mine")])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
