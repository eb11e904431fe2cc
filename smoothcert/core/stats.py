"""Exact statistics of randomized smoothing: numbers and numpy arrays in and out.

This module imports neither torch nor anything that does. Every function accepts Python
scalars or numpy arrays (broadcast together) and returns a Python ``float``/``int`` for
scalar input or a numpy array otherwise. Arguments are validated by :mod:`smoothcert.core.checks`:
a bad one raises a ``ValueError`` (:class:`~smoothcert.core.errors.ConfigError`) naming it and
its value. The Gaussian radius itself lives in :mod:`smoothcert.core.radii`; :func:`cohen_radius`
and :func:`max_radius` call it.

Formulas follow Cohen, Rosenfeld & Kolter (ICML 2019): Theorem 1, Propositions 1–2, App. C, D
and I; ``docs/statistics.md`` §2–§7 states and derives each one.
"""

from __future__ import annotations

import math
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as _st
from scipy.special import logsumexp

from smoothcert.core import radii
from smoothcert.core.checks import (
    counts_array,
    int_array,
    is_scalar,
    open_unit_array,
    positive_array,
    probability_array,
    scalar_or_array,
)
from smoothcert.core.errors import ConfigError

__all__ = [
    "certified_accuracy_lower_bound",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "cohen_radius",
    "lecuyer_radius",
    "li_radius",
    "max_radius",
    "min_certify_n",
    "min_predict_n",
    "predict_pvalue",
]

FloatArray = NDArray[np.float64]
# The functions below return a Python float when every argument is a scalar (a number or a 0-d
# array) and a float64 array otherwise; their overloads say so where the types can tell: all
# arguments Python numbers gives ``float``, anything else ``float | FloatArray``.


# --------------------------------------------------------------------------- confidence bounds


@overload
def clopper_pearson_lower(k: float, n: float, alpha: float) -> float: ...


@overload
def clopper_pearson_lower(k: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> float | FloatArray: ...


def clopper_pearson_lower(k: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> float | FloatArray:
    """One-sided Clopper–Pearson lower bound at level ``1 - alpha``.

    ``LB = BetaQuantile(alpha; k, n - k + 1)`` for ``k >= 1`` and ``0`` for ``k = 0``, so that
    ``P(LB <= p) >= 1 - alpha`` for ``k ~ Binomial(n, p)``. At ``k = n`` it equals
    ``alpha ** (1 / n)``. Equals statsmodels' ``proportion_confint(k, n, 2 * alpha,
    method="beta")[0]``.
    """
    scalar = is_scalar(k, n, alpha)
    k_arr, n_arr = counts_array(k, n)
    a = open_unit_array("alpha", alpha)
    k_arr, n_arr, a = np.broadcast_arrays(k_arr, n_arr, a)
    with np.errstate(invalid="ignore"):
        lb = _st.beta.ppf(a, np.maximum(k_arr, 1), n_arr - k_arr + 1)
    lb = np.where(k_arr == 0, 0.0, lb)
    return scalar_or_array(np.asarray(lb, dtype=np.float64), scalar)


@overload
def clopper_pearson_upper(k: float, n: float, alpha: float) -> float: ...


@overload
def clopper_pearson_upper(k: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> float | FloatArray: ...


def clopper_pearson_upper(k: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> float | FloatArray:
    """One-sided Clopper–Pearson upper bound at level ``1 - alpha``.

    ``UB = BetaQuantile(1 - alpha; k + 1, n - k)`` for ``k < n`` and ``1`` for ``k = n``, so
    that ``P(UB >= p) >= 1 - alpha``. Mirror image of :func:`clopper_pearson_lower`:
    ``UB(k, n) = 1 - LB(n - k, n)``.
    """
    scalar = is_scalar(k, n, alpha)
    k_arr, n_arr = counts_array(k, n)
    a = open_unit_array("alpha", alpha)
    k_arr, n_arr, a = np.broadcast_arrays(k_arr, n_arr, a)
    with np.errstate(invalid="ignore"):
        ub = _st.beta.ppf(1.0 - a, k_arr + 1, np.maximum(n_arr - k_arr, 1))
    ub = np.where(k_arr == n_arr, 1.0, ub)
    return scalar_or_array(np.asarray(ub, dtype=np.float64), scalar)


# --------------------------------------------------------------------------- radii


@overload
def cohen_radius(p_lower: float, p_upper_runner_up: float | None = ..., *, sigma: float = ...) -> float: ...


@overload
def cohen_radius(
    p_lower: ArrayLike, p_upper_runner_up: ArrayLike | None = ..., *, sigma: ArrayLike = ...
) -> float | FloatArray: ...


def cohen_radius(
    p_lower: ArrayLike,
    p_upper_runner_up: ArrayLike | None = None,
    *,
    sigma: ArrayLike = 1.0,
) -> float | FloatArray:
    """Certified L2 radius of Theorem 1 (Cohen et al. 2019): an alias of :func:`smoothcert.core.radii.gaussian_radius`.

    With the runner-up bound: ``R = sigma / 2 * (Phi^-1(pA_lower) - Phi^-1(pB_upper))``.
    Without it, ``pB_upper = 1 - pA_lower`` and ``R = sigma * Phi^-1(pA_lower)``.
    Where the theorem's condition ``pA_lower > pB_upper`` fails there is no certificate and
    the radius is ``0.0``. Kept under this name and signature for callers of the 2019 API;
    the formula lives in :mod:`smoothcert.core.radii` only. ``sigma`` may be an array here.
    """
    if p_upper_runner_up is not None:
        probability_array("p_upper_runner_up", p_upper_runner_up)  # named as the caller knows it
    r: float | FloatArray = radii.gaussian_radius(p_lower, sigma=sigma, p_upper_b=p_upper_runner_up)
    return r


def _pb_default(pa: NDArray[np.float64], p_runner_up: ArrayLike | None) -> NDArray[np.float64]:
    if p_runner_up is None:
        return 1.0 - pa
    pb = probability_array("p_runner_up", p_runner_up)
    return np.asarray(np.broadcast_to(pb, np.broadcast_shapes(pb.shape, pa.shape)), dtype=np.float64)


def _refine_sup(
    objective: Any, lo: NDArray[np.float64], hi: NDArray[np.float64], points: int = 257, rounds: int = 6
) -> NDArray[np.float64]:
    """Maximise ``objective(t)`` over ``t in [lo, hi]`` for each row by nested dense grids.

    Each round evaluates a uniform grid, then zooms onto the two cells beside the best point
    (the bracket shrinks 128-fold a round); the objectives here are smooth and unimodal on
    their domain, so six rounds pin the supremum far below the 1e-4 accuracy the comparisons
    need. NaN values are ignored.
    """
    lo = lo.copy()
    hi = hi.copy()
    best = np.full(lo.shape, -np.inf)
    frac = np.linspace(0.0, 1.0, points)
    for _ in range(rounds):
        grid = lo[:, None] + (hi - lo)[:, None] * frac[None, :]
        vals = objective(grid)
        vals = np.where(np.isfinite(vals), vals, -np.inf)
        idx = np.argmax(vals, axis=1)
        rows = np.arange(len(lo))
        best = np.maximum(best, vals[rows, idx])
        step = (hi - lo) / (points - 1)
        center = grid[rows, idx]
        lo, hi = np.maximum(lo, center - step), np.minimum(hi, center + step)
    return best


@overload
def lecuyer_radius(p_a: float, p_runner_up: float | None = ..., *, sigma: float = ...) -> float: ...


@overload
def lecuyer_radius(
    p_a: ArrayLike, p_runner_up: ArrayLike | None = ..., *, sigma: ArrayLike = ...
) -> float | FloatArray: ...


def lecuyer_radius(
    p_a: ArrayLike, p_runner_up: ArrayLike | None = None, *, sigma: ArrayLike = 1.0
) -> float | FloatArray:
    """Radius certified by the Gaussian-mechanism bound of Lecuyer et al. (2019), App. I.

    ``R = sup_{0 < b < min(1, ln(pA/pB)/2)} sigma * b / sqrt(2 ln(1.25 (1 + e^b) / (pA - e^(2b) pB)))``
    with ``pB = 1 - pA`` unless given. ``0.0`` where ``pA <= pB``.
    """
    return _sup_radius(p_a, p_runner_up, sigma, _lecuyer_objective, _lecuyer_bounds)


def _lecuyer_bounds(a: NDArray[np.float64], b: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The search interval ``0 < beta < min(1, ln(pA/pB)/2)``."""
    with np.errstate(divide="ignore"):
        upper = np.minimum(1.0, 0.5 * (np.log(a) - np.log(b)))
    return np.zeros_like(upper), upper


def _chunked_sup(
    factory: Any,
    lo: NDArray[np.float64],
    hi: NDArray[np.float64],
    a: NDArray[np.float64],
    b: NDArray[np.float64],
    chunk: int = 256,
) -> NDArray[np.float64]:
    """:func:`_refine_sup` of ``factory(a, b)`` in chunks of rows, so memory stays bounded."""
    out = np.empty(len(lo))
    for start in range(0, len(lo), chunk):
        sl = slice(start, start + chunk)
        out[sl] = _refine_sup(factory(a[sl], b[sl]), lo[sl], hi[sl])
    return out


def _lecuyer_objective(a: NDArray[np.float64], b: NDArray[np.float64]) -> Any:
    def objective(beta: NDArray[np.float64]) -> NDArray[np.float64]:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            denom = a[:, None] - np.exp(2 * beta) * b[:, None]
            val = beta / np.sqrt(2 * np.log(1.25 * (1 + np.exp(beta)) / denom))
        return np.where((beta > 0) & (denom > 0), val, np.nan)

    return objective


@overload
def li_radius(p_a: float, p_runner_up: float | None = ..., *, sigma: float = ...) -> float: ...


@overload
def li_radius(p_a: ArrayLike, p_runner_up: ArrayLike | None = ..., *, sigma: ArrayLike = ...) -> float | FloatArray: ...


def li_radius(p_a: ArrayLike, p_runner_up: ArrayLike | None = None, *, sigma: ArrayLike = 1.0) -> float | FloatArray:
    """Radius certified by the Renyi-divergence bound of Li et al. (2018), App. I.

    ``R = sup_{a > 1} sigma * sqrt(-(2/a) ln(1 - pA - pB + 2 ((pA^(1-a) + pB^(1-a)) / 2)^(1/(1-a))))``
    with ``pB = 1 - pA`` unless given. The power mean is evaluated in log space so large
    orders ``a`` do not overflow. ``0.0`` where ``pA <= pB``.
    """
    return _sup_radius(p_a, p_runner_up, sigma, _li_objective, _li_bounds)


def _li_bounds(a: NDArray[np.float64], b: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The search interval of ``t = log10(order - 1)``: orders from ``1 + 1e-6`` to ``1e6``."""
    return np.full(a.shape, -6.0), np.full(a.shape, 6.0)


def _sup_radius(p_a: ArrayLike, p_runner_up: ArrayLike | None, sigma: ArrayLike, factory: Any, bounds: Any) -> Any:
    """``sigma * sup_t objective(t)`` where ``pA > pB`` (``0.0`` elsewhere), for the App. I radii."""
    scalar = is_scalar(p_a, sigma, p_runner_up)
    pa = probability_array("p_a", p_a)
    pb = _pb_default(pa, p_runner_up)
    s = positive_array("sigma", sigma)
    pa, pb, s = np.broadcast_arrays(pa, pb, s)
    pa_f, pb_f = pa.ravel(), pb.ravel()
    out = np.zeros(pa_f.shape)
    ok = pa_f > pb_f
    if np.any(ok):
        a, b = pa_f[ok], pb_f[ok]
        lo, hi = bounds(a, b)
        out[ok] = _chunked_sup(factory, lo, hi, a, b)
    return scalar_or_array(s * out.reshape(pa.shape), scalar)


def _li_objective(a: NDArray[np.float64], b: NDArray[np.float64]) -> Any:
    def objective(t: NDArray[np.float64]) -> NDArray[np.float64]:
        order = 1.0 + 10.0**t
        q = 1.0 - order  # < 0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            la, lb = np.log(a)[:, None], np.log(b)[:, None]
            log_mean = (logsumexp(np.stack([q * la, q * lb]), axis=0) - math.log(2.0)) / q
            inner = (1.0 - a - b)[:, None] + 2.0 * np.exp(log_mean)
            val = np.sqrt(-(2.0 / order) * np.log(inner))
        return np.where(inner < 1.0, val, np.nan)

    return objective


@overload
def max_radius(n: float, alpha: float, *, sigma: float = ...) -> float: ...


@overload
def max_radius(n: ArrayLike, alpha: ArrayLike, *, sigma: ArrayLike = ...) -> float | FloatArray: ...


def max_radius(n: ArrayLike, alpha: ArrayLike, *, sigma: ArrayLike = 1.0) -> float | FloatArray:
    """Largest radius CERTIFY can return with ``n`` samples: ``sigma * Phi^-1(alpha^(1/n))``.

    This is the radius when all ``n`` estimation votes go to the top class. ``0.0`` when
    ``alpha^(1/n) <= 1/2``, i.e. when CERTIFY must abstain whatever the votes.
    """
    scalar = is_scalar(n, alpha, sigma)
    n_arr, a = np.broadcast_arrays(int_array("n", n, 1), open_unit_array("alpha", alpha))
    p = np.exp(np.log(a) / n_arr)  # the Clopper-Pearson lower bound of n votes of n
    return scalar_or_array(radii.gaussian_radius(p, sigma=sigma), scalar)


def min_predict_n(alpha: float) -> int:
    """Smallest ``n`` with which PREDICT can ever return a class at level ``alpha``.

    The smallest two-sided p-value ``n`` votes can give is ``2 * 0.5^n``, so this is the least
    ``n`` with ``2 * 0.5^n <= alpha`` (11 at ``alpha = 0.001``).
    """
    a = float(open_unit_array("alpha", alpha))
    n = max(1, math.ceil(math.log2(2.0 / a)))
    while n > 1 and 2.0 * 0.5 ** (n - 1) <= a:
        n -= 1
    while 2.0 * 0.5**n > a:
        n += 1
    return n


def min_certify_n(alpha: float) -> int:
    """Smallest ``n`` with which CERTIFY can ever certify at level ``alpha``.

    CERTIFY needs ``LB(n, n, alpha) = alpha^(1/n) > 1/2``, so this is the least ``n`` with
    ``alpha < 0.5^n`` (10 at ``alpha = 0.001``).
    """
    a = float(open_unit_array("alpha", alpha))
    n = max(1, math.floor(math.log2(1.0 / a)) + 1)
    while n > 1 and a ** (1.0 / (n - 1)) > 0.5:
        n -= 1
    while a ** (1.0 / n) <= 0.5:
        n += 1
    return n


# --------------------------------------------------------------------------- PREDICT


@overload
def predict_pvalue(count_a: float, count_b: float) -> float: ...


@overload
def predict_pvalue(count_a: ArrayLike, count_b: ArrayLike) -> float | FloatArray: ...


def predict_pvalue(count_a: ArrayLike, count_b: ArrayLike) -> float | FloatArray:
    """PREDICT's exact two-sided binomial p-value for ``count_a`` of ``count_a + count_b`` at 1/2.

    The null distribution is symmetric, so the two-sided p-value is
    ``min(1, 2 * P(X <= min(count_a, count_b)))`` with ``X ~ Binomial(count_a + count_b, 1/2)``;
    this equals ``scipy.stats.binomtest(count_a, count_a + count_b, 0.5).pvalue``. With no
    votes at all the p-value is ``1.0``.
    """
    scalar = is_scalar(count_a, count_b)
    ka = int_array("count_a", count_a, 0)
    kb = int_array("count_b", count_b, 0)
    ka, kb = np.broadcast_arrays(ka, kb)
    total = ka + kb
    p = np.minimum(1.0, 2.0 * _st.binom.cdf(np.minimum(ka, kb), total, 0.5))
    p = np.where(total == 0, 1.0, p)
    return scalar_or_array(np.asarray(p, dtype=np.float64), scalar)


# --------------------------------------------------------------------------- test-set bound


@overload
def certified_accuracy_lower_bound(accuracy: float, m: int, alpha: float, gamma: float) -> float: ...


@overload
def certified_accuracy_lower_bound(accuracy: ArrayLike, m: int, alpha: float, gamma: float) -> float | FloatArray: ...


def certified_accuracy_lower_bound(accuracy: ArrayLike, m: int, alpha: float, gamma: float) -> float | FloatArray:
    """Lower bound on the true certified accuracy, valid w.p. ``>= 1 - gamma`` (paper App. D, Thm 6).

    Derivation: ``docs/statistics.md`` §7.

    From Bernstein's inequality on the number of wrong certificates among ``m`` examples,
    each wrong with probability ``<= alpha``: with ``L = ln(1/gamma)``,
    ``acc >= acc_hat - alpha - (L/3 + sqrt(L^2/9 + 2 m alpha (1 - alpha) L)) / m``,
    clipped at 0.
    """
    scalar = is_scalar(accuracy)
    acc = probability_array("accuracy", accuracy)
    m_i = int(int_array("m", m, 1))
    a = float(open_unit_array("alpha", alpha))
    g = float(open_unit_array("gamma", gamma))
    if a > 0.5:
        raise ConfigError(f"alpha must be <= 0.5 for this bound, got {a!r}")
    L = math.log(1.0 / g)
    slack = a + (L / 3.0 + math.sqrt(L * L / 9.0 + 2.0 * m_i * a * (1.0 - a) * L)) / m_i
    return scalar_or_array(np.maximum(acc - slack, 0.0), scalar)
