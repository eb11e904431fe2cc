"""The analysis API of smoothcert 0.1 under its old module name; no torch import.

The code now lives in one module per concept: :mod:`~smoothcert.evaluation.logs` (reading logs),
:mod:`~smoothcert.evaluation.metrics` (certified accuracy, ACR, passes, p_A quantiles, projections),
:mod:`~smoothcert.evaluation.compare` (paired differences, McNemar) and
:mod:`~smoothcert.evaluation.reports` (Markdown, LaTeX, CSV, JSON). This module re-exports every
public name it had, so ``smoothcert.analysis.read_certify_log`` and
``from smoothcert.evaluation import analysis`` keep working; new code can import from the
modules above or from :mod:`smoothcert.evaluation` itself.
"""

from __future__ import annotations

from smoothcert.evaluation.compare import Comparison, PairedDifference, compare_logs, paired_difference
from smoothcert.evaluation.logs import (
    NORM_LABELS,
    CertifyLog,
    PredictLog,
    check_same_norm,
    norm_label,
    parse_radii,
    parse_time,
    read_certify_log,
    read_predict_log,
)
from smoothcert.evaluation.metrics import (
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
    format_comparison,
    format_csv,
    format_json,
    format_latex,
    format_markdown,
    format_predict_quality,
    json_text,
)

__all__ = [
    "NORM_LABELS",
    "CertifyLog",
    "Comparison",
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
    "read_predict_log",
    "recompute_radii",
    "summarize",
]
