"""The private `transformers.Trainer` methods hfkd overrides, and nothing else, in one place.

transformers offers no public hook for these needs, so each override only forwards to a
public hook of hfkd's trainers. `tests/trainers/test_trainer_internals.py` pins the transformers behaviour
each one relies on (the method exists with this signature and is called where we expect), so an
upgrade that changes it fails there first, loudly:

- `_set_signature_columns_if_needed`: which dataset columns `remove_unused_columns` keeps
  (cached teacher outputs are no forward argument, a peer ensemble's forward takes `**inputs`).
- `_save`: the weights `save_model` writes, for checkpoints too (each peer in its own folder; a
  gathered DeepSpeed/FSDP state dict without the width projections).
- `_save_checkpoint`: extra files inside each checkpoint folder (the width projections).
- `_load_from_checkpoint`: restoring them on resume (and the peers from their folders).
- `_get_train_sampler`: the training sampler (length-bucketed batches, `hfkd.trainers.sampling`);
  `get_train_dataloader` passes it to `_get_dataloader`, which offers no public sampler hook.
- `push_to_hub` / `_push_from_checkpoint`: every Hub upload leaves out `HUB_IGNORE_PATTERNS` (the
  pickled `training_args.bin`, which runs code when unpickled), by wrapping the `hf_api()` that
  `transformers.trainer` calls for `upload_folder`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import transformers.trainer as transformers_trainer
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


# Files never uploaded to the Hub: Trainer's pickled arguments, at the top or in a checkpoint folder.
HUB_IGNORE_PATTERNS = ("training_args.bin", "*/training_args.bin")


class _UploadsWithout:
    """An `HfApi` whose `upload_folder` also ignores `HUB_IGNORE_PATTERNS`; everything else is the api's."""

    def __init__(self, api: Any) -> None:
        self._api = api

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def upload_folder(self, *args: Any, ignore_patterns: Any = None, **kwargs: Any) -> Any:
        given = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
        return self._api.upload_folder(*args, ignore_patterns=[*given, *HUB_IGNORE_PATTERNS], **kwargs)


@contextmanager
def _hub_uploads_without_pickles() -> Iterator[None]:
    original = transformers_trainer.hf_api
    transformers_trainer.hf_api = lambda *args, **kwargs: _UploadsWithout(original(*args, **kwargs))
    try:
        yield
    finally:
        transformers_trainer.hf_api = original


class TrainerInternals(Trainer):
    """Routes the private methods to the hooks below; subclasses override the hooks, not the privates."""

    # ------------------------------------------------------------------ hooks (public)

    def signature_columns(self, columns: list[str]) -> list[str]:
        """The dataset columns to keep, given the ones Trainer derived from the model's forward."""
        return columns

    def save_weights(self, output_dir: str | None, state_dict: dict | None) -> None:
        """Write the model's weights (Trainer's `_save`: `save_pretrained`, tokenizer, training args)."""
        super()._save(output_dir, state_dict=state_dict)

    def save_checkpoint_extras(self, folder: str) -> None:
        """Add files to a checkpoint folder before Trainer writes the rest of it."""

    def load_checkpoint_weights(self, folder: str, model: nn.Module | None) -> None:
        """Restore the model (Trainer's `_load_from_checkpoint`)."""
        super()._load_from_checkpoint(folder, model)

    def train_sampler(self, dataset: Any) -> Any:
        """The sampler of the training DataLoader (Trainer's `_get_train_sampler`: per `train_sampling_strategy`)."""
        return super()._get_train_sampler(dataset)

    # ------------------------------------------------------------------ the private overrides

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        return self.train_sampler(train_dataset if train_dataset is not None else self.train_dataset)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns = self.signature_columns(list(self._signature_columns))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        self.save_weights(output_dir, state_dict)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            self.save_checkpoint_extras(folder)
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        self.load_checkpoint_weights(resume_from_checkpoint, model)

    def push_to_hub(self, *args: Any, **kwargs: Any) -> Any:
        with _hub_uploads_without_pickles():
            return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        with _hub_uploads_without_pickles():
            super()._push_from_checkpoint(checkpoint_folder)
