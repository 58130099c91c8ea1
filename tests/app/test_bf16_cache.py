"""`hfkd cache-teacher --teacher_dtype bfloat16`: the cache is built by the bf16 teacher, after its fidelity check."""

from __future__ import annotations

import pytest
from transformers import BertTokenizerFast

from conftest import VOCAB, seq_cls_pair
from hfkd.teacher.cache.read import load_teacher_cache
from hfkd.teacher.cache.shards import read_manifest


def _workspace(tmp_path, teacher_dtype: str) -> list[str]:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, VOCAB)]))
    teacher = seq_cls_pair()[0]
    teacher.save_pretrained(tmp_path / "teacher")
    BertTokenizerFast(vocab=str(vocab)).save_pretrained(tmp_path / "teacher")
    rows = ["text,label"] + [f"w{5 + i % 90} w{7 + i % 50} w{9 + i % 30},{i % 3}" for i in range(24)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "c.yaml").write_text(
        f"teacher_model_name_or_path: {tmp_path / 'teacher'}\nstudent_num_layers: 1\n"
        f"train_file: {tmp_path / 'train.csv'}\nvalidation_file: {tmp_path / 'train.csv'}\nmax_seq_length: 16\n"
        f"teacher_cache_dir: {tmp_path / 'cache'}\nmax_steps: 2\nper_device_train_batch_size: 8\nuse_cpu: true\n"
        "report_to: none\nsave_strategy: 'no'\ndisable_tqdm: true\nalpha_kd: 0.8\nalpha_ce: 0.2\n"
        f"teacher_dtype: {teacher_dtype}\nteacher_min_agreement: 0.0\n")
    return ["--config", str(tmp_path / "c.yaml")]


def test_a_bf16_cache_build_checks_the_bound_and_distill_finds_the_bf16_cache(tmp_path, capsys):
    from hfkd.app.cli import main as cli
    from hfkd.app.recipes import main as recipe
    from hfkd.app.recipes import run_distillation

    config = _workspace(tmp_path, "bfloat16")
    cli(["cache-teacher", *config])
    cache = str(tmp_path / "cache")
    assert len(load_teacher_cache(cache, read_manifest(cache))) == 24
    # distill with the same teacher_dtype trains from that cache (a float32 run would find it stale)
    recipe(run_distillation, [*config, "--output_dir", str(tmp_path / "student")])
    with pytest.raises(SystemExit):
        recipe(run_distillation, [*config, "--teacher_dtype", "float32", "--output_dir", str(tmp_path / "other")])
    assert "stale teacher cache" in capsys.readouterr().err


@pytest.mark.parametrize("native, same_as", [(True, "bfloat16"), (False, "float32")])
def test_auto_builds_in_bf16_only_where_the_cpu_has_bf16_instructions(tmp_path, capsys, monkeypatch, native, same_as):
    """teacher_dtype 'auto' is bf16 on a CPU with AVX512-BF16/AMX and fp32 elsewhere (emulated bf16 is slower);
    the cache it builds is the one that dtype named explicitly finds fresh, and the other finds stale."""
    from hfkd.app.cli import main as cli
    from hfkd.app.recipes import main as recipe
    from hfkd.app.recipes import run_distillation

    monkeypatch.setattr("hfkd.teacher.loading.native_bf16", lambda device: native)
    config = _workspace(tmp_path, "auto")
    cli(["cache-teacher", *config])
    other = "float32" if same_as == "bfloat16" else "bfloat16"
    recipe(run_distillation, [*config, "--teacher_dtype", same_as, "--output_dir", str(tmp_path / "student")])
    with pytest.raises(SystemExit):
        recipe(run_distillation, [*config, "--teacher_dtype", other, "--output_dir", str(tmp_path / "other")])
    assert "stale teacher cache" in capsys.readouterr().err
