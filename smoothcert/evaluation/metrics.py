"""Certified accuracy, ACR, abstention, forward passes and p_A quantiles of certify logs; no torch import.

Certified accuracy at ``r`` is the fraction of *all* logged examples whose prediction is
correct with radius ``>= r`` (abstentions count as failures), as in the 2019 reference
analysis (docs/statistics.md §7). For **sequential logs**:

- *decision mode* (``identity.radius = r``): each example was tested at ``r`` only and the run
  stopped as soon as ``r`` was decided, so certified accuracy is reported at ``r`` alone: the
  fraction of examples correct with decision ``certified``. At every other radius it is ``None``
  ("n/a"): above ``r`` the logged radii stop just past ``r`` (they understate what the samples
  could certify), below ``r`` an example given up on at ``r`` may still be certifiable. ACR and
  the p_A quantiles are ``None`` for the same reason.
- *max-radius mode* (``identity.radius`` null): the curve as for a fixed-n log. With a
  ``radius_cap`` the run stopped once the radius reached the cap, so radii above the cap are
  ``None`` and the ACR is of ``min(radius, cap)``.

**Forward passes** per example are ``n_used`` for sequential logs (selection included) and
``n0 + n`` for fixed-n logs; :class:`PassStats` gives their mean, median, 99th percentile
(numpy's linear interpolation) and maximum.

**Beyond ACR.** The ACR rewards examples whose ``p_A`` bound is close to 1 without limit and
depends on the sampling budget (the largest radius n samples can certify grows with n), so a
trivial classifier can inflate it (Sun et al., 2024, "ACR is a Poor Metric for Randomized
Smoothing"). :func:`p_lower_quantiles` therefore reports the empirical distribution of the
certified lower bounds ``p_lower``: quantiles at :data:`QUANTILE_LEVELS` with numpy's
``method="linear"`` (Hyndman & Fan's definition 7), over all examples and over those whose
selected class is the true label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from smoothcert.core import stats
from smoothcert.core.errors import ConfigError, ResultFileError
from smoothcert.evaluation.logs import (
    CertifyLog,
    PredictLog,
    check_same_norm,
    radius_grid,
    read_deepfool_log,
)

__all__ = [
    "PREDICT_QUALITY_KEYS",
    "QUANTILE_LEVELS",
    "QUANTILE_METHOD",
    "PLowerQuantiles",
    "PassStats",
    "Summary",
    "average_certified_radius",
    "certified_accuracy",
    "empirical_curve",
    "empirical_robust_accuracy",
    "p_lower_quantiles",
    "predict_quality",
    "project_certified_accuracy",
    "recompute_radii",
    "smoothing_caption",
    "summarize",
]

QUANTILE_LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)
QUANTILE_METHOD: Literal["linear"] = "linear"


def _nonempty(log: CertifyLog) -> None:
    if log.examples == 0:
        raise ResultFileError(f"log {log.path!r} has no examples: nothing to analyze")


@dataclass(frozen=True)
class PassStats:
    """Forward passes per example: mean, median, 99th percentile (linear interpolation), max."""

    mean: float
    median: float
    p99: float
    max: int
    total: int

    @classmethod
    def of(cls, passes: NDArray[np.int64]) -> PassStats:
        if passes.size == 0:
            raise ConfigError("passes: no examples")
        return cls(
            mean=float(np.mean(passes)),
            median=float(np.median(passes)),
            p99=float(np.percentile(passes, 99)),
            max=int(np.max(passes)),
            total=int(np.sum(passes)),
        )

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "median": self.median, "p99": self.p99, "max": self.max, "total": self.total}


def certified_accuracy(
    log: CertifyLog, radii: Sequence[float] | NDArray[np.float64], *, radius: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """Fraction of all logged examples that are correct with radius ``>= r``, for each ``r``.

    For a sequential log, ``nan`` at radii where it is not meaningful (module docstring); in
    decision mode the value at the decision radius is the fraction correct and ``certified``.
    """
    _nonempty(log)
    r = np.asarray(radii, dtype=np.float64)
    out = np.full(r.shape, np.nan)
    for j, rj in enumerate(r.tolist()):
        ok = log.certified_at(rj, radius=radius)
        if ok is not None:
            out[j] = ok.mean()
    return out


def average_certified_radius(log: CertifyLog, *, radius: NDArray[np.float64] | None = None) -> float | None:
    """ACR: mean over all examples of ``radius * 1[correct]`` (see the caveat in the module docstring).

    ``min(radius, cap)`` for a capped max-radius log; ``None`` for a decision-mode log.
    """
    _nonempty(log)
    if log.mode == "decision":
        return None
    rad = log.radius if radius is None else radius
    if log.radius_cap is not None:
        rad = np.minimum(rad, log.radius_cap)
    return float(np.mean(np.where(log.correct, rad, 0.0)))


@dataclass(frozen=True)
class PLowerQuantiles:
    """Quantiles of the certified lower bounds ``p_lower`` of one log.

    ``all[k]`` is the ``levels[k]`` quantile over every example, ``correct[k]`` over the
    ``correct_examples`` examples whose selected class is the true label (certified or not;
    every example of an eval-label log), ``None`` when there are none. ``method`` is numpy's
    quantile method.
    """

    levels: tuple[float, ...]
    all: tuple[float, ...]
    correct: tuple[float, ...] | None
    examples: int
    correct_examples: int
    method: str = QUANTILE_METHOD

    def to_json(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "all": list(self.all),
            "correct": None if self.correct is None else list(self.correct),
            "examples": self.examples,
            "correct_examples": self.correct_examples,
            "correct_means": "selected class = true label",
            "method": self.method,
        }


def p_lower_quantiles(log: CertifyLog, levels: Sequence[float] = QUANTILE_LEVELS) -> PLowerQuantiles | None:
    """The quantiles of ``p_lower`` (module docstring); ``None`` for logs without the column
    (the 2019 reference's) and for decision-mode logs (their bound stops as soon as it decides)."""
    _nonempty(log)
    q = np.asarray(levels, dtype=np.float64)
    if q.ndim != 1 or q.size == 0 or np.any((q < 0) | (q > 1)):
        raise ConfigError(f"levels must be probabilities in [0, 1], got {list(levels)!r}")
    if log.p_lower is None or log.mode == "decision":
        return None
    chosen = log.selected if log.selected is not None else log.predict
    mask = chosen == log.label
    right = log.p_lower[mask]
    return PLowerQuantiles(
        levels=tuple(q.tolist()),
        all=tuple(np.quantile(log.p_lower, q, method=QUANTILE_METHOD).tolist()),
        correct=tuple(np.quantile(right, q, method=QUANTILE_METHOD).tolist()) if right.size else None,
        examples=log.examples,
        correct_examples=int(mask.sum()),
    )


def _gaussian_l2(log: CertifyLog, what: str) -> None:
    if log.noise != "gaussian" or log.norm != "l2":
        raise ConfigError(f"{what} needs a Gaussian-noise L2 log, got {log.noise} noise, norm {log.norm} ({log.path})")
    if log.adaptive:
        raise ConfigError(f"{what} applies to fixed-n logs, got a sequential log ({log.path})")


def recompute_radii(log: CertifyLog, bound: str, *, sigma: float | None = None) -> NDArray[np.float64]:
    """Each example's radius under ``bound`` (cohen, lecuyer, li), from its ``p_lower``.

    Reference logs carry no ``p_lower``; it is recovered as ``Phi(radius / sigma)`` (up to the
    log's 3-digit rounding). Abstentions keep radius 0. Gaussian-noise L2 fixed-n logs only.
    """
    _gaussian_l2(log, f"--bound {bound}")
    s = sigma if sigma is not None else log.sigma
    if s is None:
        raise ConfigError(f"sigma is needed to recompute radii for {log.path} (no sidecar): pass --sigma")
    if log.p_lower is not None:
        p = log.p_lower
    else:
        from scipy.stats import norm

        p = norm.cdf(log.radius / s)
    funcs: dict[str, Any] = {"cohen": stats.cohen_radius, "lecuyer": stats.lecuyer_radius, "li": stats.li_radius}
    if bound not in funcs:
        raise ConfigError(f"bound must be one of {', '.join(funcs)}, got {bound!r}")
    r = np.asarray(funcs[bound](np.clip(p, 0.0, 1.0), sigma=s), dtype=np.float64)
    return np.where(log.predict >= 0, r, 0.0)


def project_certified_accuracy(
    log: CertifyLog,
    radii: Sequence[float] | NDArray[np.float64],
    *,
    n: int | None = None,
    alpha: float | None = None,
    sigma: float | None = None,
) -> NDArray[np.float64]:
    """Certified accuracy CERTIFY would have reported with ``n`` samples and/or level ``alpha``.

    Keeps each example's vote proportion ``count / n_logged`` (paper Fig. 8): the projected
    count is ``round(n * count / n_logged)``, bounded with Clopper–Pearson at ``alpha``.
    Needs the ``count``, ``n`` and ``selected`` columns of smoothcert's fixed-n Gaussian L2 logs.
    """
    if log.count is None or log.n is None or log.selected is None:
        raise ConfigError(f"{log.path} has no count/n/selected columns (a reference log?): projections need them")
    _gaussian_l2(log, "a projection")
    s = sigma if sigma is not None else log.sigma
    a = alpha if alpha is not None else log.alpha
    if s is None or a is None:
        raise ConfigError(f"sigma and alpha are needed for {log.path}: pass them or keep the sidecar")
    new_n = np.asarray(log.n if n is None else np.full(log.examples, n))
    k = np.rint(new_n * log.count / log.n).astype(np.int64)
    p = np.asarray(stats.clopper_pearson_lower(k, new_n, a))
    rad = np.asarray(stats.cohen_radius(p, sigma=s))
    correct = (log.selected == log.label) & (p > 0.5)
    r = np.asarray(radii, dtype=np.float64)
    return (correct[None, :] & (rad[None, :] >= r[:, None])).mean(axis=1)


def _optional(values: NDArray[np.float64]) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values.tolist()]


@dataclass(frozen=True)
class Summary:
    """Certified accuracy of one log over a radius grid, with optional extra series.

    ``certified_accuracy[j]`` (and ``acr``) is ``None`` where it is not meaningful for a
    sequential log; ``passes`` is ``None`` for logs without sample counts (the 2019 reference's);
    ``decisions`` counts the outcomes of a sequential log; ``eval_label`` marks a log that
    certified the true label without selection (``--eval-label``); ``p_lower_quantiles`` is
    ``None`` where the log has no ``p_lower`` or is decision-mode.
    """

    name: str
    path: str
    examples: int
    radii: list[float]
    certified_accuracy: list[float | None]
    acr: float | None
    abstain_rate: float
    extra: dict[str, Any] = field(default_factory=dict)
    norm: str = "l2"
    mode: str = "fixed"
    decision_radius: float | None = None
    radius_cap: float | None = None
    passes: PassStats | None = None
    time_mean: float | None = None
    decisions: dict[str, int] | None = None
    eval_label: bool = False
    p_lower_quantiles: PLowerQuantiles | None = None
    smoothing: str = "float"
    front_end: str | None = None

    @property
    def label_mode(self) -> str:
        return "eval-label" if self.eval_label else "selected"

    def to_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "path": self.path,
            "examples": self.examples,
            "norm": self.norm,
            "mode": self.mode,
            "label_mode": self.label_mode,
            "smoothing": self.smoothing,
            "front_end": self.front_end,
            "decision_radius": self.decision_radius,
            "radius_cap": self.radius_cap,
            "radii": self.radii,
            "certified_accuracy": self.certified_accuracy,
            "acr": self.acr,
            "abstain_rate": self.abstain_rate,
            "passes": None if self.passes is None else self.passes.to_json(),
            "time_mean": self.time_mean,
            "decisions": self.decisions,
            "p_lower_quantiles": None if self.p_lower_quantiles is None else self.p_lower_quantiles.to_json(),
        }
        out.update(self.extra)
        return out


def summarize(
    logs: Sequence[CertifyLog],
    radii: Sequence[float] | NDArray[np.float64],
    *,
    high_prob: float | None = None,
    bound: str = "cohen",
    sigma: float | None = None,
) -> list[Summary]:
    """Certified accuracy, ACR, abstention rate, forward passes and p_A quantiles of each log over ``radii``.

    The grid is ``radii`` plus the radius of every decision-mode log. ``high_prob=gamma`` adds
    ``certified_accuracy_lower``, the bound of paper App. D, Thm 6 that holds with probability
    ``>= 1 - gamma``; ``bound`` recomputes radii with another guarantee (fixed-n Gaussian L2
    logs only). Refuses logs of different norms and logs without examples.
    """
    check_same_norm(logs)
    grid = radius_grid(logs, radii)
    out = []
    for log in logs:
        rad = None if bound == "cohen" else recompute_radii(log, bound, sigma=sigma)
        acc = certified_accuracy(log, grid, radius=rad)
        passes = log.passes
        decisions = None
        stops = log.decision if log.decision is not None else log.reason  # curve logs: why each one stopped
        if stops is not None:
            names, counts = np.unique(stops, return_counts=True)
            decisions = {str(k): int(v) for k, v in zip(names.tolist(), counts.tolist(), strict=True)}
        extra: dict[str, Any] = {}
        if bound != "cohen":
            extra["bound"] = bound
        if high_prob is not None:
            alpha = log.alpha if log.alpha is not None else 0.001
            lower = stats.certified_accuracy_lower_bound(np.nan_to_num(acc), log.examples, alpha, high_prob)
            extra["certified_accuracy_lower"] = _optional(np.where(np.isnan(acc), np.nan, np.atleast_1d(lower)))
            extra["gamma"] = high_prob
        out.append(
            Summary(
                name=log.name,
                path=log.path,
                examples=log.examples,
                radii=grid,
                certified_accuracy=_optional(acc),
                acr=average_certified_radius(log, radius=rad),
                abstain_rate=float(np.mean(log.predict < 0)),
                extra=extra,
                norm=log.norm,
                mode=log.mode,
                decision_radius=log.decision_radius,
                radius_cap=log.radius_cap,
                passes=PassStats.of(passes) if passes is not None else None,
                time_mean=float(np.mean(log.time)),
                decisions=decisions,
                eval_label=log.eval_label,
                p_lower_quantiles=p_lower_quantiles(log),
                smoothing=log.smoothing,
                front_end=log.front_end,
            )
        )
    return out


def smoothing_caption(items: Sequence[tuple[str, str]]) -> str:
    """Which noise ran, for a table or plot of logs given as ``(name, smoothing)`` pairs.

    ``'smoothing: sound (grid 255)'`` when every log shares one mode, else each log's:
    ``'smoothing: A sound (grid 255); B float'``.
    """
    modes = {mode for _, mode in items}
    if len(modes) <= 1:
        return f"smoothing: {modes.pop() if modes else 'float'}"
    return "smoothing: " + "; ".join(f"{name} {mode}" for name, mode in items)


# ----------------------------------------------------------------------------- empirical (attack) curves


def empirical_robust_accuracy(norms: NDArray[np.float64], radii: Any) -> NDArray[np.float64]:
    """Fraction of examples whose minimal adversarial norm exceeds ``r`` (0 for misclassified ones).

    An empirical *upper* bound on robust accuracy at each radius ``r``.
    """
    n = np.asarray(norms, dtype=np.float64)
    r = np.asarray(radii, dtype=np.float64)
    return (n[None, :] > r[:, None]).mean(axis=1) if n.size else np.zeros(r.shape)


def empirical_curve(
    path: str | Path, radii: NDArray[np.float64] | None = None
) -> tuple[str, NDArray[np.float64], NDArray[np.float64]]:
    """``(label, radii, robust accuracy)`` from a DeepFool log, for a dashed line beside certified curves."""
    log = read_deepfool_log(path)
    grid = np.linspace(0.0, 2.5, 501) if radii is None else radii
    return log.label, grid, empirical_robust_accuracy(log.norms, grid)


# ----------------------------------------------------------------------------- PREDICT quality (Table 4)

PREDICT_QUALITY_KEYS = (
    *("correct_accurate", "correct_inaccurate", "incorrect_accurate", "incorrect_inaccurate", "abstain"),
)


def predict_quality(logs: Sequence[PredictLog], reference: PredictLog) -> list[dict[str, Any]]:
    """Paper Table 4: for each log, the fractions correct/incorrect x accurate/inaccurate, and abstain.

    "correct" means the returned class equals the label; "accurate" that it equals ``g(x)`` as
    estimated by the ``reference`` log (a much larger n). Examples missing from the reference
    are left out; a log with no example in the reference is refused.
    """
    ref = dict(zip(reference.idx.tolist(), reference.predict.tolist(), strict=True))
    out = []
    for log in logs:
        keep = np.array([i in ref for i in log.idx.tolist()], dtype=bool)
        m = int(keep.sum())
        if m == 0:
            raise ResultFileError(f"{log.path} has no example (idx) in common with the reference {reference.path}")
        pred, label = log.predict[keep], log.label[keep]
        g = np.array([ref[i] for i in log.idx[keep].tolist()])
        answered = pred >= 0
        correct, accurate = pred == label, pred == g
        cells = [answered & correct & accurate, answered & correct & ~accurate]
        cells += [answered & ~correct & accurate, answered & ~correct & ~accurate, ~answered]
        row: dict[str, Any] = {"name": log.name, "n": log.n, "examples": m, "smoothing": log.smoothing}
        row.update({k: float(np.sum(c) / m) for k, c in zip(PREDICT_QUALITY_KEYS, cells, strict=True)})
        out.append(row)
    return out
