"""Learned student→teacher width projections, as one object.

One `Linear(d_student, d_teacher)` per mapped student layer, registered on the student as
`hfkd_projections` so that DeepSpeed/FSDP, the optimizer and checkpoint resumption treat them like
any student weight, while `_keys_to_ignore_on_save` keeps them out of the saved student. Under DDP
they are excluded from DDP's reducer (they are used outside the wrapped forward): `broadcast` makes
them equal on every process and `average_gradients` replaces DDP's all-reduce for them. Outside
DeepSpeed/FSDP, checkpoints carry them in `hfkd_projections.safetensors`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

PROJECTIONS_NAME = "hfkd_projections.safetensors"
PROJECTIONS_ATTR = "hfkd_projections"
PROJECTION_INITS = {
    "xavier": nn.init.xavier_uniform_,
    "normal": lambda weight: nn.init.normal_(weight, std=0.02),
    "identity": nn.init.eye_,
}


class WidthProjections:
    """The projections of the student layers `layers` from width `d_student` to `d_teacher`."""

    def __init__(self, student: nn.Module, layers: Iterable[int], d_student: int, d_teacher: int, init: str) -> None:
        self.modules = nn.ModuleDict({str(s): nn.Linear(d_student, d_teacher) for s in layers})
        for layer in self.modules.values():
            PROJECTION_INITS[init](layer.weight)
            nn.init.zeros_(layer.bias)
        self.modules.to(device=student.device, dtype=next(student.parameters()).dtype)
        student.add_module(PROJECTIONS_ATTR, self.modules)
        self.parameter_names = sorted(f"{PROJECTIONS_ATTR}.{n}" for n, _ in self.modules.named_parameters())
        student._keys_to_ignore_on_save = set(student._keys_to_ignore_on_save or ()) | set(self.parameter_names)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(student, self.parameter_names)

    @classmethod
    def build(cls, student: nn.Module, teacher: nn.Module, layers: Iterable[int], init: str) -> WidthProjections | None:
        """Projections when the widths differ, else None (hidden states compare as they are)."""
        d_s, d_t = student.config.hidden_size, teacher.config.hidden_size
        return None if d_s == d_t else cls(student, sorted(set(layers)), d_s, d_t, init)

    def __call__(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.modules[str(layer)](hidden)

    def __getitem__(self, layer: str) -> nn.Linear:
        return self.modules[layer]

    def __iter__(self) -> Iterable[str]:
        return iter(self.modules)

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.modules.parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.modules.state_dict()

    def broadcast(self) -> None:
        """Same initial projections on every DDP process (rank 0's)."""
        for parameter in self.modules.parameters():
            torch.distributed.broadcast(parameter.data, src=0)

    def average_gradients(self, world_size: int) -> None:
        """All-reduce the projections' gradients in one flat tensor (DDP skips them).

        Called after backward, not from gradient hooks: collectives issued from hooks could
        interleave with DDP's own bucket all-reduces in a different order on each process.
        """
        grads = [p.grad for p in self.modules.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def move_to_own_groups(self, optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
        """Move the projections out of the optimizer's groups into copies of them at `learning_rate`."""
        ids = {id(p) for p in self.modules.parameters()}
        moved_groups = []
        for group in optimizer.param_groups:
            moved = [p for p in group["params"] if id(p) in ids]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in ids]
                settings = {k: v for k, v in group.items() if k != "params"}
                moved_groups.append({**settings, "params": moved, "lr": learning_rate})
        for group in moved_groups:
            optimizer.add_param_group(group)

    def save(self, folder: str) -> None:
        """Write them into a checkpoint folder, atomically."""
        os.makedirs(folder, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.modules.state_dict().items()}
        tmp = os.path.join(folder, PROJECTIONS_NAME + ".tmp")
        save_file(state, tmp, metadata={"format": "pt"})
        os.replace(tmp, os.path.join(folder, PROJECTIONS_NAME))

    def load(self, folder: str, device: str | torch.device) -> None:
        path = os.path.join(folder, PROJECTIONS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"checkpoint {folder} has no {PROJECTIONS_NAME}: it was not written by a DistillationTrainer "
                "with the same width projections; resume from a matching checkpoint."
            )
        self.modules.load_state_dict(load_file(path, device=str(device)))

    @staticmethod
    def strip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A gathered student state dict (DeepSpeed/FSDP) without the projections."""
        return {k: v for k, v in state_dict.items() if not k.startswith(PROJECTIONS_ATTR + ".")}
