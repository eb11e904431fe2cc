"""Evaluation: reading result logs, metrics, paired comparisons, reports, plots and attacks.

- :mod:`~smoothcert.evaluation.logs`: certify, predict and DeepFool logs as frozen objects;
- :mod:`~smoothcert.evaluation.metrics`: certified accuracy, ACR, passes, p_A quantiles, projections;
- :mod:`~smoothcert.evaluation.compare`: paired difference of two logs, exact McNemar;
- :mod:`~smoothcert.evaluation.reports`: Markdown, LaTeX, CSV and strict JSON;
- :mod:`~smoothcert.evaluation.plotting`: figures (needs the ``plot`` extra);
- :mod:`~smoothcert.evaluation.attacks`: PGD and DeepFool (imports torch);
- :mod:`~smoothcert.evaluation.analysis`: the 0.1 module name, re-exporting the names above.

The public analysis names are available here too (``smoothcert.evaluation.summarize``). They are
loaded on first use, so importing this package loads neither torch nor matplotlib, nor any
submodule you do not use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "ACR_CAVEAT",
    "NORM_LABELS",
    "QUANTILE_LEVELS",
    "CertifyLog",
    "Comparison",
    "DeepFoolLog",
    "PLowerQuantiles",
    "PairedDifference",
    "PassStats",
    "PredictLog",
    "Summary",
    "average_certified_radius",
    "certified_accuracy",
    "check_same_norm",
    "compare_logs",
    "empirical_curve",
    "empirical_robust_accuracy",
    "format_comparison",
    "format_csv",
    "format_json",
    "format_latex",
    "format_markdown",
    "format_predict_quality",
    "json_text",
    "norm_label",
    "p_lower_quantiles",
    "paired_difference",
    "parse_radii",
    "parse_time",
    "predict_quality",
    "project_certified_accuracy",
    "read_certify_log",
    "read_deepfool_log",
    "read_predict_log",
    "recompute_radii",
    "summarize",
]

_HOME = {
    "smoothcert.evaluation.logs": (
        "NORM_LABELS CertifyLog DeepFoolLog PredictLog check_same_norm norm_label parse_radii parse_time "
        "read_certify_log read_deepfool_log read_predict_log"
    ),
    "smoothcert.evaluation.metrics": (
        "QUANTILE_LEVELS PLowerQuantiles PassStats Summary average_certified_radius certified_accuracy "
        "empirical_curve empirical_robust_accuracy p_lower_quantiles predict_quality project_certified_accuracy "
        "recompute_radii summarize"
    ),
    "smoothcert.evaluation.compare": "Comparison PairedDifference compare_logs paired_difference",
    "smoothcert.evaluation.reports": (
        "ACR_CAVEAT format_comparison format_csv format_json format_latex format_markdown format_predict_quality "
        "json_text"
    ),
}
_LAZY = {name: module for module, names in _HOME.items() for name in names.split()}

if TYPE_CHECKING:
    from smoothcert.evaluation.compare import Comparison, PairedDifference, compare_logs, paired_difference
    from smoothcert.evaluation.logs import (
        NORM_LABELS,
        CertifyLog,
        DeepFoolLog,
        PredictLog,
        check_same_norm,
        norm_label,
        parse_radii,
        parse_time,
        read_certify_log,
        read_deepfool_log,
        read_predict_log,
    )
    from smoothcert.evaluation.metrics import (
        QUANTILE_LEVELS,
        PassStats,
        PLowerQuantiles,
        Summary,
        average_certified_radius,
        certified_accuracy,
        empirical_curve,
        empirical_robust_accuracy,
        p_lower_quantiles,
        predict_quality,
        project_certified_accuracy,
        recompute_radii,
        summarize,
    )
    from smoothcert.evaluation.reports import (
        ACR_CAVEAT,
        format_comparison,
        format_csv,
        format_json,
        format_latex,
        format_markdown,
        format_predict_quality,
        json_text,
    )


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'smoothcert.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
