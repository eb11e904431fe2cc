"""Evaluation: reading result logs, metrics, paired comparisons, reports, plots and attacks.

- :mod:`~smoothcert.evaluation.logs`: certify, predict and DeepFool logs as frozen objects;
- :mod:`~smoothcert.evaluation.metrics`: certified accuracy, ACR, passes, p_A quantiles, projections;
- :mod:`~smoothcert.evaluation.compare`: paired difference of two logs, exact McNemar;
- :mod:`~smoothcert.evaluation.reports`: Markdown, LaTeX, CSV and strict JSON;
- :mod:`~smoothcert.evaluation.plotting`: figures (needs the ``plot`` extra);
- :mod:`~smoothcert.evaluation.attacks`: PGD and DeepFool (imports torch);
- :mod:`~smoothcert.evaluation.analysis`: the 0.1 module name, re-exporting the analysis API.

Every public name of the first four modules is available here too (``smoothcert.evaluation.summarize``,
``smoothcert.evaluation.format_markdown``, ...). They are loaded on first use, so importing this
package loads neither torch nor matplotlib, nor any module you do not use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["analysis", "compare", "logs", "metrics", "plotting", "reports"]

_API = ("logs", "metrics", "compare", "reports")  # the torch-free modules whose names this package offers


def __getattr__(name: str) -> Any:
    if not name.startswith("_") and name not in (*__all__, "attacks"):  # a submodule is imported, not searched
        for sub in _API:
            module = importlib.import_module(f"{__name__}.{sub}")
            if name in module.__all__:
                value = getattr(module, name)
                globals()[name] = value
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    names = {n for sub in _API for n in importlib.import_module(f"{__name__}.{sub}").__all__}
    return sorted(set(globals()) | set(__all__) | names)
