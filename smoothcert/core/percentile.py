"""Percentile (median) smoothing bounds of Chiang et al. (NeurIPS 2020), torch-free.

Chiang, Curry, Abdelkader, Kumar, Dickerson & Goldstein, "Detection as Regression: Certified
Object Detection by Median Smoothing", Sec. 3, Thm. 1. For a real-valued base function ``f``
and ``eps ~ N(0, sigma^2 I)``, let ``q_p(x)`` be the p-th percentile of ``f(x + eps)`` (the
smallest ``y`` with ``P(f(x + eps) <= y) >= p``). Then for every ``||delta||_2 <= r``::

    q_{p_low}(x) <= q_p(x + delta) <= q_{p_high}(x),
    p_low = Phi(Phi^-1(p) - r / sigma),  p_high = Phi(Phi^-1(p) + r / sigma).

From ``n`` draws ``Y_(1) <= ... <= Y_(n)`` at ``x`` the two outer percentiles are bounded by
order statistics chosen with exact binomial quantiles: ``Y_(l) <= q_{p_low}(x)`` with
probability ``>= 1 - a_low`` and ``Y_(u) >= q_{p_high}(x)`` with probability ``>= 1 - a_high``.
This module splits ``alpha`` equally, ``a_low = a_high = alpha / 2``, so that both bounds hold
together with probability ``>= 1 - alpha`` (union bound). Where no order statistic is far
enough out, the bound is infinite. Derivations: ``docs/tasks.md`` §2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as _st

from smoothcert.core.checks import check_alpha, check_int, check_sigma
from smoothcert.core.errors import ConfigError

__all__ = [
    "PercentileBounds",
    "check_percentile",
    "check_radius",
    "lower_order_index",
    "percentile_bounds",
    "shifted_percentiles",
    "upper_order_index",
]


def check_percentile(p: float) -> float:
    """The smoothed percentile: a real in the open interval ``(0, 1)`` (``0.5`` is the median)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)):
        raise ConfigError(f"percentile must be a real number in (0, 1), got {type(p).__name__} {p!r}")
    if not (0.0 < float(p) < 1.0):
        raise ConfigError(f"percentile must be in (0, 1), got {p!r}")
    return float(p)


def check_radius(radius: float) -> float:
    """A certified radius: a finite real ``>= 0``."""
    if isinstance(radius, bool) or not isinstance(radius, (int, float, np.floating, np.integer)):
        raise ConfigError(f"radius must be a real number >= 0, got {type(radius).__name__} {radius!r}")
    r = float(radius)
    if not (r >= 0 and math.isfinite(r)):
        raise ConfigError(f"radius must be >= 0 and finite, got {radius!r}")
    return r


def shifted_percentiles(percentile: float, radius: float, *, sigma: float) -> tuple[float, float]:
    """``(p_low, p_high) = Phi(Phi^-1(p) -/+ radius / sigma)``: Chiang et al. (2020), Thm. 1."""
    p = check_percentile(percentile)
    shift = check_radius(radius) / check_sigma(sigma)
    z = float(_st.norm.ppf(p))
    return float(_st.norm.cdf(z - shift)), float(_st.norm.cdf(z + shift))


def lower_order_index(n: int, p_low: float, a: float) -> int:
    """The largest 1-based ``l`` with ``P(Binomial(n, p_low) <= l - 1) <= a``; ``0`` if none.

    Then ``P(Y_(l) > q_{p_low}) <= a``: ``Y_(l) > q`` needs fewer than ``l`` draws ``<= q``, and
    each draw is ``<= q_{p_low}`` with probability ``>= p_low``.
    """
    n = check_int("n", n)
    # the largest k with cdf(k) <= a is ppf(a) - 1 unless cdf(ppf(a)) == a exactly
    k = int(_st.binom.ppf(a, n, p_low))
    while k >= 0 and _st.binom.cdf(k, n, p_low) > a:
        k -= 1
    while k + 1 <= n and _st.binom.cdf(k + 1, n, p_low) <= a:
        k += 1
    return k + 1 if k >= 0 else 0


def upper_order_index(n: int, p_high: float, a: float) -> int:
    """The smallest 1-based ``u`` with ``P(Binomial(n, p_high) <= u - 1) >= 1 - a``; ``n + 1`` if none.

    Then ``P(Y_(u) < q_{p_high}) <= a``: ``Y_(u) < q`` needs at least ``u`` draws ``< q``, and each
    draw is ``< q_{p_high}`` with probability ``<= p_high``.
    """
    n = check_int("n", n)
    k = int(_st.binom.ppf(1.0 - a, n, p_high))
    while k - 1 >= 0 and _st.binom.cdf(k - 1, n, p_high) >= 1.0 - a:
        k -= 1
    while k <= n and _st.binom.cdf(k, n, p_high) < 1.0 - a:
        k += 1
    return min(k + 1, n + 1)


@dataclass(frozen=True)
class PercentileBounds:
    """Percentile estimate and certified bounds, per output dimension (arrays of shape ``(D,)``).

    Attributes:
        estimate: the sample ``p``-th percentile ``Y_(ceil(n p))`` at ``x``.
        lower, upper: bounds on ``q_p(x + delta)`` for every ``||delta||_2 <= radius``;
            ``-inf`` / ``inf`` when ``n`` is too small for a finite bound.
        lower_index, upper_index: the 1-based order statistics used (0 and ``n + 1`` for infinite).
        p_low, p_high: the shifted percentiles of Thm. 1.
    """

    estimate: NDArray[np.float64]
    lower: NDArray[np.float64]
    upper: NDArray[np.float64]
    lower_index: int
    upper_index: int
    p_low: float
    p_high: float


def percentile_bounds(
    samples: ArrayLike,
    *,
    radius: float,
    sigma: float,
    alpha: float,
    percentile: float = 0.5,
    widen: int = 0,
) -> PercentileBounds:
    """Certified bounds on the smoothed ``percentile`` of each column of ``samples`` ``(n, D)``.

    Each column's ``[lower, upper]`` contains ``q_p(x + delta)`` for every ``||delta||_2 <= radius``
    with probability ``>= 1 - alpha`` (``alpha / 2`` per side). For ``D`` columns to hold
    *jointly*, pass ``alpha / D`` (as :class:`smoothcert.smoothing.regression.SmoothedRegressor`
    does). ``widen`` moves each bound that many order statistics further out (``-1`` narrows it:
    only for tests of the statistic).
    """
    y = np.asarray(samples, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] == 0:
        raise ValueError(f"samples must have shape (n, D) with n >= 1, got {tuple(np.shape(samples))}")
    alpha = check_alpha(alpha)
    p = check_percentile(percentile)
    n = y.shape[0]
    p_low, p_high = shifted_percentiles(p, radius, sigma=sigma)
    lo = lower_order_index(n, p_low, alpha / 2) - widen
    hi = upper_order_index(n, p_high, alpha / 2) + widen
    ordered = np.sort(y, axis=0)
    est = ordered[min(max(math.ceil(n * p), 1), n) - 1]
    lower = ordered[lo - 1] if 1 <= lo <= n else np.full(y.shape[1], -np.inf if lo < 1 else np.inf)
    upper = ordered[hi - 1] if 1 <= hi <= n else np.full(y.shape[1], np.inf if hi > n else -np.inf)
    return PercentileBounds(
        estimate=np.asarray(est, dtype=np.float64),
        lower=np.asarray(lower, dtype=np.float64),
        upper=np.asarray(upper, dtype=np.float64),
        lower_index=lo,
        upper_index=hi,
        p_low=p_low,
        p_high=p_high,
    )
