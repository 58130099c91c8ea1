"""Pins the transformers.Trainer behaviour that hfkd.trainers.internals and hfkd.trainers.base rely on.

If an upgrade of transformers renames a private method, changes its signature or stops calling it
where it did, these tests fail here, naming what changed, instead of a distillation run silently
losing its projections, its cached columns or its non-finite guard.
"""

from __future__ import annotations

import inspect

import torch
from transformers import Trainer, TrainerCallback

from conftest import seq_cls_dataset, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer


def test_the_private_methods_overridden_exist_with_the_signatures_used():
    expected = {
        "_set_signature_columns_if_needed": ["self"],
        "_save": ["self", "output_dir", "state_dict"],
        "_save_checkpoint": ["self", "model", "trial"],
        "_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"],
        "_get_output_dir": ["self", "trial"],
        "_push_from_checkpoint": ["self", "checkpoint_folder"],
        "_get_train_sampler": ["self", "train_dataset"],
    }
    for name, parameters in expected.items():
        assert list(inspect.signature(getattr(Trainer, name)).parameters) == parameters, name
    # compute_loss normalises itself: Trainer must honour this class attribute and pass the item count.
    assert "loss_is_scaled_for_ga" in vars(Trainer)
    assert "num_items_in_batch" in inspect.signature(Trainer.compute_loss).parameters
    # Hub uploads: both pushes call the module's hf_api() (wrapped so that training_args.bin stays home).
    import transformers.trainer

    for push in (Trainer.push_to_hub, Trainer._push_from_checkpoint):
        assert "hf_api().upload_folder(" in inspect.getsource(push)
    assert callable(transformers.trainer.hf_api)
    # train_sampler: the training DataLoader takes its sampler from _get_train_sampler, batches of
    # _train_batch_size, and every epoch (a resumed one included) calls the sampler's set_epoch.
    loader = inspect.getsource(Trainer.get_train_dataloader)
    assert "sampler_fn=self._get_train_sampler" in loader and "batch_size=self._train_batch_size" in loader
    assert "underlying_sampler.set_epoch(epoch)" in inspect.getsource(Trainer._run_epoch)


class Recording(DistillationTrainer):
    """Records when Trainer reaches each hook (through the private methods) and what it passes."""

    def __init__(self, *args, **kwargs):
        self.calls: list[tuple[str, object]] = []
        super().__init__(*args, **kwargs)

    def signature_columns(self, columns):
        self.calls.append(("signature_columns", tuple(columns)))
        return super().signature_columns(columns) + ["keep_me"]

    def save_weights(self, output_dir, state_dict):
        self.calls.append(("save_weights", output_dir))
        super().save_weights(output_dir, state_dict)

    def save_checkpoint_extras(self, folder):
        self.calls.append(("save_checkpoint_extras", folder))

    def load_checkpoint_weights(self, folder, model):
        self.calls.append(("load_checkpoint_weights", folder))
        super().load_checkpoint_weights(folder, model)

    def training_terms(self, model, inputs, num_items_in_batch):
        self.calls.append(("batch_columns", tuple(sorted(inputs)), num_items_in_batch))
        return super().training_terms(model, {k: v for k, v in inputs.items() if k != "keep_me"}, num_items_in_batch)


class OptimizerSeen(TrainerCallback):
    def __init__(self):
        self.seen = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.seen.append((state.global_step, optimizer))


def _trainer(tmp_path, **kw):
    teacher, student = seq_cls_pair()
    data = seq_cls_dataset(16).add_column("keep_me", [0] * 16)
    args = DistillationConfig(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, max_steps=2,
                              per_device_train_batch_size=8, save_strategy="steps", save_steps=1, disable_tqdm=True,
                              **kw)
    return Recording(model=student, teacher_model=teacher, args=args, train_dataset=data)


def test_trainer_calls_the_hooks_where_hfkd_expects(tmp_path):
    trainer = _trainer(tmp_path)
    seen = OptimizerSeen()
    trainer.add_callback(seen)
    trainer.train()
    names = [call[0] for call in trainer.calls]
    # _set_signature_columns_if_needed: our column list decides what remove_unused_columns keeps.
    assert names[0] == "signature_columns" and "input_ids" in trainer.calls[0][1]
    batches = [call for call in trainer.calls if call[0] == "batch_columns"]
    assert len(batches) == 2 and all("keep_me" in call[1] for call in batches)
    # num_items_in_batch reaches compute_loss (model_accepts_loss_kwargs): 8 sequence labels per step.
    assert [int(call[2]) for call in batches] == [8, 8]
    # _save_checkpoint: extras first, into the folder Trainer then completes; its weights through _save.
    checkpoint = str(tmp_path / "run" / "checkpoint-1")
    assert ("save_checkpoint_extras", checkpoint) in trainer.calls
    extras_at = trainer.calls.index(("save_checkpoint_extras", checkpoint))
    assert ("save_weights", checkpoint) in trainer.calls[extras_at:]
    # on_pre_optimizer_step: once per update, before it, with the optimizer that steps.
    assert [step for step, _ in seen.seen] == [0, 1] and all(opt is trainer.optimizer for _, opt in seen.seen)


def test_resume_reaches_load_checkpoint_weights_with_the_checkpoint_folder(tmp_path):
    _trainer(tmp_path).train()
    resumed = _trainer(tmp_path)
    resumed.args.max_steps = 3
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert ("load_checkpoint_weights", str(tmp_path / "run" / "checkpoint-2")) in resumed.calls
    assert resumed.state.global_step == 3


def test_dropping_every_gradient_before_the_step_leaves_weights_and_adam_state_untouched():
    """NonFiniteGuard's way of skipping an update: torch optimizers skip parameters whose grad is None."""
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    before = ({k: v.clone() for k, v in layer.state_dict().items()},
              {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()})
    layer(torch.ones(1, 3)).sum().backward()
    for p in layer.parameters():
        p.grad = None
    optimizer.step()
    assert all(torch.equal(before[0][k], v) for k, v in layer.state_dict().items())
    for p, state in optimizer.state.items():
        assert all(torch.equal(before[1][id(p)][k], v) for k, v in state.items())
