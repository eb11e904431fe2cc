"""Old flat module paths (``smoothcert.analysis``, ``smoothcert.noises``, ...) of versions before 0.2.

Version 0.2 moved every module into a sub-package. So that code written against 0.1 keeps
running, importing an old path gives the new module itself (the same object, so monkeypatching
either name patches both). ``smoothcert.stats`` and ``smoothcert.compat`` are permanent names;
the others emit a :class:`DeprecationWarning` that names the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

OLD_PATHS = {
    "stats": "smoothcert.core.stats",
    "radii": "smoothcert.core.radii",
    "sequential": "smoothcert.core.sequential",
    "_checks": "smoothcert.core.checks",
    "devices": "smoothcert.runtime.devices",
    "perf": "smoothcert.runtime.perf",
    "distributed": "smoothcert.runtime.distributed",
    "noises": "smoothcert.smoothing.noises",
    "sampling": "smoothcert.smoothing.engine",
    "classifier": "smoothcert.smoothing.classifier",
    "compat": "smoothcert.smoothing.compat",
    "importing": "smoothcert.io.importing",
    "data": "smoothcert.io.data",
    "results": "smoothcert.io.logs",
    "train": "smoothcert.training.loop",
    "objectives": "smoothcert.training.objectives",
    "denoise": "smoothcert.training.denoiser",
    "analysis": "smoothcert.evaluation.analysis",
    "plotting": "smoothcert.evaluation.plotting",
    "attacks": "smoothcert.evaluation.attacks",
    "attack_runs": "smoothcert.runs.attack",
    "demo": "smoothcert.runs.demo",
}
PERMANENT = frozenset({"stats", "compat"})


def module_for(name: str) -> ModuleType:
    """The module that the old path ``smoothcert.<name>`` now names; AttributeError for any other name."""
    if name not in OLD_PATHS:
        raise AttributeError(f"module 'smoothcert' has no attribute {name!r}")
    if name not in PERMANENT:
        warnings.warn(
            f"smoothcert.{name} moved to {OLD_PATHS[name]} in smoothcert 0.2; import it from there",
            DeprecationWarning,
            stacklevel=3,
        )
    return importlib.import_module(OLD_PATHS[name])


class _OldPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        prefix, _, name = fullname.partition(".")
        if prefix == "smoothcert" and name in OLD_PATHS:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return module_for(spec.name.partition(".")[2])

    def exec_module(self, module: ModuleType) -> None:
        """The new module has run already."""


def install() -> None:
    if not any(isinstance(f, _OldPathFinder) for f in sys.meta_path):
        sys.meta_path.append(_OldPathFinder())
