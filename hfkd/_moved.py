"""Import paths of modules that moved when hfkd was split into subpackages keep working.

`import hfkd.trainer` (and `from hfkd.trainer import X`) gives a module whose attributes are looked
up in the new home(s), with a FutureWarning naming the new path, so user code written against the
flat layout runs unchanged while it migrates. `hfkd.student` and `hfkd.report` became packages that
re-export their public names, so they need no alias.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Any

MOVED_MODULES: dict[str, tuple[str, ...]] = {
    "hfkd.trainer": ("hfkd.trainers.distillation", "hfkd.trainers.base", "hfkd.objective.projections"),
    "hfkd.mutual": ("hfkd.trainers.mutual",),
    "hfkd.checkpoints": ("hfkd.trainers.checkpoints",),
    "hfkd.losses": ("hfkd.objective.losses",),
    "hfkd.layer_mapping": ("hfkd.objective.layer_mapping",),
    "hfkd.relations": ("hfkd.objective.relations",),
    "hfkd.stages": ("hfkd.objective.stages",),
    "hfkd.schedules": ("hfkd.objective.schedules",),
    "hfkd.presets": ("hfkd.objective.presets",),
    "hfkd.placement": ("hfkd.teacher.placement",),
    "hfkd.fast_teacher": ("hfkd.teacher.fast",),
    "hfkd.multi_teacher": ("hfkd.teacher.ensemble",),
    "hfkd.teacher_cache": ("hfkd.teacher.cache",),
    "hfkd.validation": ("hfkd.models", "hfkd.teacher.loading"),
    "hfkd.augment": ("hfkd.transfer.augment",),
    "hfkd.model_card": ("hfkd.report.model_card",),
    "hfkd.arguments": ("hfkd.app.arguments",),
    "hfkd.data": ("hfkd.app.task_data",),
    "hfkd.recipes": ("hfkd.app.recipes",),
    "hfkd.born_again": ("hfkd.app.born_again",),
    "hfkd.cli": ("hfkd.app.cli",),
    "hfkd.report_cli": ("hfkd.app.report_cli",),
}


class _MovedModule(types.ModuleType):
    """Stands at an old path; every attribute comes from the first new module that has it."""

    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        super().__init__(name, f"Moved: use {' / '.join(targets)}.")
        self._targets = targets

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):  # import machinery probing (__path__, ...): not a moved name
            raise AttributeError(attribute)
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"{self.__name__}.{attribute} no longer exists; look in {' or '.join(self._targets)}.")


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name in MOVED_MODULES:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        targets = MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} moved to {targets[0]}; import it from there.", FutureWarning, stacklevel=2)
        return _MovedModule(spec.name, targets)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: attributes resolve lazily."""


def install() -> None:
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
