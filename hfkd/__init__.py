"""hfkd: knowledge distillation for the Hugging Face stack.

Public names are imported lazily so that `import hfkd` stays cheap and a CLI call
only pays for what it uses.
"""

from importlib import import_module
from typing import Any

from hfkd import _moved

__version__ = "0.1.0"

_EXPORTS = {
    "DistillationConfig": "hfkd.config",
    "DistillationTrainer": "hfkd.trainers.distillation",
    "create_student": "hfkd.student",
    "resolve_layer_mapping": "hfkd.objective.layer_mapping",
    "distillation_metric": "hfkd.report",
    "build_teacher_cache": "hfkd.teacher.cache",
    "load_teacher_cache": "hfkd.teacher.cache",
    "MutualDistillationConfig": "hfkd.trainers.mutual",
    "MutualDistillationTrainer": "hfkd.trainers.mutual",
    "BornAgainConfig": "hfkd.app.born_again",
    "augment_dataset": "hfkd.transfer.augment",
    "register_term": "hfkd.objective.terms",
    "TermContext": "hfkd.objective.terms",
    "trim_vocabulary": "hfkd.deploy.vocabulary",
}

__all__ = sorted(_EXPORTS)
_moved.install()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hfkd' has no attribute {name!r}")
