"""Model card on save, and what push_to_hub would upload (stubbed at the huggingface_hub client)."""


import yaml
from huggingface_hub import HfApi
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS

from hfkd import DistillationConfig, DistillationTrainer
from hfkd.metrics import build_compute_metrics
from conftest import seq_cls_pair


def front_matter(text):
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


TEACHER_ID = "me/tiny-teacher"


def make_trainer(tmp_path, dataset, **kw):
    teacher, student = seq_cls_pair(student_hidden=16)
    teacher.config.name_or_path = TEACHER_ID  # as from_pretrained("me/tiny-teacher") would set it
    args = DistillationConfig(
        output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=4, per_device_train_batch_size=8,
        save_strategy="steps", save_steps=2, alpha_kd=1.0, alpha_ce=0.5, alpha_hidden=1.0, disable_tqdm=True,
        eval_strategy="steps", eval_steps=4, **kw,
    )
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                               eval_dataset=dataset, dataset_names=["sst2"],
                               compute_metrics=build_compute_metrics("sequence_classification"))


def test_save_model_writes_a_model_card_with_settings(tmp_path, tiny_dataset):
    """The card names the teacher as base model, the datasets, the loss and layer map, and the scores."""
    trainer = make_trainer(tmp_path, tiny_dataset)
    trainer.train()
    trainer.save_model()
    text = (tmp_path / "out" / "README.md").read_text()
    meta = front_matter(text)
    assert {"hfkd", "distillation"} <= set(meta["tags"]) and meta["datasets"] == ["sst2"]
    assert meta["base_model"] == TEACHER_ID
    assert "0.5·CE + 1.0·KD + 1.0·HIDDEN" in text and "1→2, 2→4" in text and "T=2.0" in text
    results = meta["model-index"][0]["results"][0]
    assert {m["type"] for m in results["metrics"]} >= {"accuracy"}


def test_push_to_hub_uploads_clean_student_and_card(tmp_path, tiny_dataset, monkeypatch):
    """push_to_hub uploads exactly the clean student, its config and card: the files huggingface_hub's
    own listing and pattern filtering (with the patterns hfkd and Trainer pass, and upload_folder's
    defaults) keep from the output folder, which also holds checkpoints with the projections and
    Trainer's pickled training_args.bin. Only the network is stubbed."""
    uploads = []

    def fake_upload_folder(self, *, repo_id, folder_path, path_in_repo=None, allow_patterns=None,
                           ignore_patterns=None, **kwargs):
        # huggingface_hub's own listing and filtering, as upload_folder does it; only the commit is left out.
        ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
        operations = self._prepare_upload_folder_additions(
            folder_path, path_in_repo or "", allow_patterns=allow_patterns,
            ignore_patterns=ignore + DEFAULT_IGNORE_PATTERNS)
        uploads.append((repo_id, sorted(op.path_in_repo for op in operations)))

    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, content, **kw: None)  # a Hub call
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: type("R", (), {"repo_id": repo_id})())
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    trainer = make_trainer(tmp_path, tiny_dataset, hub_model_id="me/tiny-student")
    trainer.train()
    trainer.push_to_hub(blocking=True)
    repo_id, files = uploads[-1]
    assert repo_id == "me/tiny-student"
    # The folder does hold what must not go up (else the filter proves nothing) ...
    present = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").glob("**/*") if p.is_file())
    assert any(f.startswith("checkpoint-4/") and f.endswith("hfkd_projections.safetensors") for f in present)
    assert "training_args.bin" in present  # Trainer's pickle, kept locally ...
    # ... and exactly the clean student goes up.
    assert files == ["README.md", "config.json", "model.safetensors"], files
    trainer._push_from_checkpoint(str(tmp_path / "out" / "checkpoint-4"))  # the pushes during training
    assert "config.json" in uploads[-1][1] and "training_args.bin" not in uploads[-1][1]
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "out" / "model.safetensors")
    assert not any("projection" in k for k in keys)
    assert "distill" in (tmp_path / "out" / "README.md").read_text()
