"""Paired comparison of two certify logs on the examples they share; no torch import.

At radius ``r`` each common example (same ``idx``) gives ``d_i = 1[A certified correct at r] -
1[B ...]`` in ``{-1, 0, 1}``. The difference of certified accuracies is ``mean(d)`` with standard
error ``s_d / sqrt(m)`` (``s_d`` the sample standard deviation, ddof 1, ``m`` examples) and the
*normal (Wald)* 95% interval ``mean(d) +- z_0.975 * SE``, approximate and of zero width when no
example disagrees; beside it the *exact* McNemar test: the two-sided binomial test that the
examples only A certifies are as likely as those only B certifies (``p = 1`` with none).

A log written with ``--eval-label`` bounded the true label's probability without selecting a
class: it makes no selection error and spends no n0 selection draws. Against a log that selected
its class (fixed-n CERTIFY, or sequential without ``--eval-label``) the comparison therefore
favours it; :attr:`Comparison.note` says so, and every output format shows the note.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from smoothcert.core.errors import ConfigError, ResultFileError
from smoothcert.evaluation.logs import CertifyLog, check_same_norm, radius_grid, subset
from smoothcert.evaluation.metrics import PassStats

__all__ = ["Comparison", "PairedDifference", "compare_logs", "eval_label_note", "paired_difference"]


@dataclass(frozen=True)
class PairedDifference:
    """``mean(d)`` of paired differences ``d_i`` with its standard error and normal 95% interval.

    ``a_only`` / ``b_only``: examples where only A / only B succeeds (the discordant pairs);
    ``mcnemar_p``: the exact two-sided McNemar p-value (binomial test of ``a_only`` among
    ``a_only + b_only`` at 1/2), ``None`` for non-binary differences.
    """

    a: float
    b: float
    difference: float
    se: float
    ci_low: float
    ci_high: float
    a_only: int | None = None
    b_only: int | None = None
    mcnemar_p: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "difference": self.difference,
            "se": self.se,
            "ci95": [self.ci_low, self.ci_high],
            "a_only": self.a_only,
            "b_only": self.b_only,
            "mcnemar_p": self.mcnemar_p,
        }


def paired_difference(
    a: NDArray[Any], b: NDArray[Any], *, confidence: float = 0.95, binary: bool = True
) -> PairedDifference:
    """Paired difference of per-example values ``a_i - b_i`` (normal interval; exact McNemar if binary).

    ``SE = s_d / sqrt(m)`` with ``s_d`` the sample standard deviation (ddof 1; 0 when ``m = 1``);
    interval ``mean(d) +- Phi^-1((1 + confidence) / 2) * SE``.
    """
    from scipy import stats as st

    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ConfigError(f"a and b must be equal-length non-empty 1-D arrays, got shapes {x.shape} and {y.shape}")
    d = x - y
    m = d.size
    se = float(np.std(d, ddof=1) / math.sqrt(m)) if m > 1 else 0.0
    z = float(st.norm.ppf((1 + confidence) / 2))
    mean = float(d.mean())
    a_only = b_only = None
    p = None
    if binary:
        a_only, b_only = int(np.sum(d > 0)), int(np.sum(d < 0))
        p = float(st.binomtest(a_only, a_only + b_only, 0.5).pvalue) if a_only + b_only else 1.0
    return PairedDifference(
        a=float(x.mean()),
        b=float(y.mean()),
        difference=mean,
        se=se,
        ci_low=mean - z * se,
        ci_high=mean + z * se,
        a_only=a_only,
        b_only=b_only,
        mcnemar_p=p,
    )


def eval_label_note(name_a: str, eval_a: bool, name_b: str, eval_b: bool) -> str | None:
    """The caveat of a comparison where exactly one side certified the true label (``--eval-label``)."""
    if eval_a == eval_b:
        return None
    fav, other = (name_a, name_b) if eval_a else (name_b, name_a)
    return (
        f"{fav} is an eval-label log and {other} is not: this comparison favours {fav}, which certified the "
        "true label without selecting a class (no selection error, no n0 selection draws)"
    )


@dataclass(frozen=True)
class Comparison:
    """Log A against log B on the examples both logged (same ``idx``).

    ``passes_ratio`` is mean passes of B over mean passes of A (how many times fewer A used;
    ``None`` when either log lacks counts), ``time_ratio`` the same for the logged time per
    example. ``accuracy[j]`` is the paired certified-accuracy difference A − B at ``radii[j]``
    (``None`` where either log is not meaningful at that radius); ``acr`` the paired ACR
    difference (radii capped at the smaller cap; ``None`` when either log is decision-mode).
    ``eval_label_a`` / ``eval_label_b`` mark eval-label logs; ``note`` is the caveat when one
    side is eval-label and the other is not.
    """

    name_a: str
    name_b: str
    path_a: str
    path_b: str
    norm: str
    examples: int
    passes_a: PassStats | None
    passes_b: PassStats | None
    passes_ratio: float | None
    time_ratio: float | None
    radii: list[float]
    accuracy: list[PairedDifference | None]
    acr: PairedDifference | None
    eval_label_a: bool = False
    eval_label_b: bool = False
    smoothing_a: str = "float"
    smoothing_b: str = "float"

    @property
    def note(self) -> str | None:
        return eval_label_note(self.name_a, self.eval_label_a, self.name_b, self.eval_label_b)

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.name_a,
            "b": self.name_b,
            "path_a": self.path_a,
            "path_b": self.path_b,
            "label_mode_a": "eval-label" if self.eval_label_a else "selected",
            "label_mode_b": "eval-label" if self.eval_label_b else "selected",
            "smoothing_a": self.smoothing_a,
            "smoothing_b": self.smoothing_b,
            "norm": self.norm,
            "examples": self.examples,
            "passes_a": None if self.passes_a is None else self.passes_a.to_json(),
            "passes_b": None if self.passes_b is None else self.passes_b.to_json(),
            "passes_ratio": self.passes_ratio,
            "time_ratio": self.time_ratio,
            "radii": self.radii,
            "certified_accuracy": [None if d is None else d.to_json() for d in self.accuracy],
            "acr": None if self.acr is None else self.acr.to_json(),
            "interval": "normal (Wald) on paired differences; McNemar p exact",
            "note": self.note,
        }


def compare_logs(
    a: CertifyLog, b: CertifyLog, radii: Sequence[float] | NDArray[np.float64], *, confidence: float = 0.95
) -> Comparison:
    """Compare log ``a`` (e.g. sequential) with log ``b`` (e.g. fixed-n) on their common examples.

    The grid is ``radii`` plus the decision radius of either log. Refuses logs of different
    norms, logs with no example in common, and logs that give a common ``idx`` different labels.
    """
    norm = check_same_norm([a, b])
    common, ia, ib = np.intersect1d(a.idx, b.idx, return_indices=True)
    if common.size == 0:
        raise ResultFileError(f"{a.path} and {b.path} have no example (idx) in common")
    sa, sb = subset(a, ia), subset(b, ib)
    if np.any(sa.label != sb.label):
        bad = int(common[np.argmax(sa.label != sb.label)])
        raise ResultFileError(f"{a.path} and {b.path} give example idx {bad} different labels: not the same data")
    grid = radius_grid([a, b], radii)
    acc: list[PairedDifference | None] = []
    for r in grid:
        ca, cb = sa.certified_at(r), sb.certified_at(r)
        acc.append(None if ca is None or cb is None else paired_difference(ca, cb, confidence=confidence))
    acr = None
    if sa.mode != "decision" and sb.mode != "decision":
        caps = [c for c in (sa.radius_cap, sb.radius_cap) if c is not None]
        cap = min(caps) if caps else math.inf
        va = np.where(sa.correct, np.minimum(sa.radius, cap), 0.0)
        vb = np.where(sb.correct, np.minimum(sb.radius, cap), 0.0)
        acr = paired_difference(va, vb, confidence=confidence, binary=False)
    stats_a, stats_b = (None if s.passes is None else PassStats.of(s.passes) for s in (sa, sb))
    ratio = stats_b.mean / stats_a.mean if stats_a is not None and stats_b is not None and stats_a.mean > 0 else None
    ta, tb = float(np.mean(sa.time)), float(np.mean(sb.time))
    return Comparison(
        name_a=a.name,
        name_b=b.name,
        path_a=a.path,
        path_b=b.path,
        norm=norm,
        examples=int(common.size),
        passes_a=stats_a,
        passes_b=stats_b,
        passes_ratio=ratio,
        time_ratio=tb / ta if ta > 0 else None,
        radii=grid,
        accuracy=acc,
        acr=acr,
        eval_label_a=a.eval_label,
        eval_label_b=b.eval_label,
        smoothing_a=a.smoothing,
        smoothing_b=b.smoothing,
    )
