"""Time-uniform confidence sequences for ``pA`` and the certified-accuracy-curve stopping rule.

No torch import: counts in, bounds and decisions out, usable on simulated counts. The
construction, its validity argument and the measurements behind the defaults are in
``docs/curve.md``.

**Confidence sequences.** A :class:`ConfidenceSequence` gives, after ``n`` Bernoulli(``pA``) draws
with ``c`` successes, bounds ``L_n <= pA <= U_n`` that hold *for all n at once*:
``P(exists n: L_n > pA) <= alpha``. Two constructions, both fixed before any sample is drawn:

- ``"betabinomial"``: Robbins' beta-binomial mixture. For a Beta(a, b) prior on
  ``p``, ``M_n(p) = B(a + c, b + n - c) / (B(a, b) p^c (1 - p)^(n - c))`` is a nonnegative
  martingale with ``M_0 = 1`` under ``pA = p`` (the ratio of the prior's predictive likelihood to
  the true one), so by Ville's inequality ``P(exists n: M_n(pA) >= 1/alpha) <= alpha``. The set
  ``{p : M_n(p) < 1/alpha}`` is an interval containing ``c / n``; ``L_n`` and ``U_n`` are its
  ends (Robbins 1970; Howard, Ramdas, McAuliffe & Sekhon 2021 on time-uniform bounds; used for
  randomized smoothing by Voráček, NeurIPS 2024). Looking after every draw costs nothing.
- ``"union"`` (the default; fewest passes in ``docs/curve.md`` §6): Clopper–Pearson at each of
  ``K`` looks fixed in advance, at level ``alpha / K`` (the union bound;
  :mod:`smoothcert.core.sequential` uses it on a doubling grid).

Both hold for the unstopped sequence, so any data-dependent stopping rule — the one below
included — keeps ``P(reported L > pA) <= alpha``.

**Curve rule** (:func:`curve_step`). On the reporting grid ``r_1 < ... < r_J`` (radius
``r_j`` certified iff ``pA > t_j``, ``t_j`` the noise's threshold) a radius is *settled* when it
is decided (``L > t_j``: certified; ``U <= t_j``: not) or when only inputs within
``radius_tol`` of it could still be certified there (``R(U) <= r_j + radius_tol``). A run stops
at the cap (``L > t_J``), or when every grid radius is settled and more samples could not
raise the capped radius by more than ``acr_tol``, or at ``n_max``. The upper bound ``U`` is the
futility side: it only ever stops a run, never certifies, so its level ``beta`` sets cost and
power, never validity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special as _sp

from smoothcert.core import stats
from smoothcert.core.checks import check_alpha, check_int
from smoothcert.core.errors import ConfigError

__all__ = [
    "CAP",
    "DECIDED",
    "METHODS",
    "N_MAX",
    "TOLERANCE",
    "ConfidenceSequence",
    "curve_decisions",
    "curve_step",
    "look_sizes",
    "make_confseq",
]

METHODS: tuple[str, ...] = ("betabinomial", "union")
DECIDED = "decided"
TOLERANCE = "tolerance"
CAP = "cap"
N_MAX = "n_max"

_BISECT = 48  # bisection steps: 2^-48 (< 4e-15) of the search interval


def look_sizes(*, n_max: int, n_first: int = 32, growth: float = 1.25) -> tuple[int, ...]:
    """Cumulative sample sizes at which a run looks: ``n_first * growth**j`` (rounded, strictly
    increasing) below ``n_max``, then ``n_max``. Fixed before any sample is drawn."""
    n_max = check_int("n_max", n_max)
    n_first = check_int("n_first", n_first)
    if not (isinstance(growth, int | float) and growth > 1 and math.isfinite(growth)):
        raise ConfigError(f"growth must be a finite number > 1, got {growth!r}")
    sizes: list[int] = []
    size = float(n_first)
    while round(size) < n_max:
        if not sizes or round(size) > sizes[-1]:
            sizes.append(round(size))
        size *= growth
    sizes.append(n_max)
    return tuple(sizes)


def _log_mixture(
    c: NDArray[np.float64], n: NDArray[np.float64], p: NDArray[np.float64], a: float, b: float
) -> NDArray[np.float64]:
    """``log M_n(p)`` of the Beta(a, b) mixture (``0 < p < 1``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = _sp.xlogy(c, p) + _sp.xlog1py(n - c, -p)
    out: NDArray[np.float64] = _sp.betaln(a + c, b + n - c) - _sp.betaln(a, b) - ll
    return out


def _mixture_bound(
    c: NDArray[np.float64], n: NDArray[np.float64], level: float, a: float, b: float, side: str
) -> NDArray[np.float64]:
    """An end of ``{p : log M_n(p) < log(1/level)}`` by bisection (``log M`` is convex in ``p`` and
    ``<= 0`` at ``c / n``, so each side has one crossing)."""
    target = math.log(1.0 / level)
    phat = np.where(n > 0, c / np.maximum(n, 1), 0.5)
    if side == "lower":
        lo, hi = np.zeros_like(phat), phat.copy()  # M(lo) >= target (or lo = 0), M(hi) < target
    else:
        lo, hi = phat.copy(), np.ones_like(phat)
    for _ in range(_BISECT):
        mid = 0.5 * (lo + hi)
        inside = _log_mixture(c, n, mid, a, b) < target
        if side == "lower":
            hi, lo = np.where(inside, mid, hi), np.where(inside, lo, mid)
        else:
            lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
    bound = lo if side == "lower" else hi  # the end outside the set: conservative by < 2^-48
    # the set reaches the end of [0, 1] when M stays below the target there (c = 0 or c = n)
    if side == "lower":
        bound = np.where(c <= 0, 0.0, bound)
    else:
        bound = np.where(c >= n, 1.0, bound)
    return bound


@dataclass(frozen=True)
class ConfidenceSequence:
    """A time-uniform confidence sequence for a Bernoulli mean, fixed before sampling.

    Attributes:
        method: ``"betabinomial"`` (Robbins' mixture, valid at every ``n``) or ``"union"``
            (Clopper–Pearson at the looks ``sizes``, each at level ``/ len(sizes)``).
        sizes: cumulative sample sizes at which a run looks (the last is ``n_max``).
        alpha: level of the lower bounds (the certificates).
        beta: level of the upper bounds (futility only).
        prior: ``(a, b)`` of the Beta prior (``"betabinomial"`` only).
    """

    method: str
    sizes: tuple[int, ...]
    alpha: float
    beta: float
    prior: tuple[float, float] = (1.0, 1.0)

    @property
    def n_max(self) -> int:
        return self.sizes[-1]

    def _level(self, level: float) -> float:
        return level / len(self.sizes) if self.method == "union" else level

    def bounds(self, count: ArrayLike, look: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(L, U)`` after look ``look`` (0-based; ``sizes[look]`` draws, ``count`` successes)."""
        if not 0 <= look < len(self.sizes):
            raise ConfigError(f"look must be in [0, {len(self.sizes)}), got {look!r}")
        c = np.atleast_1d(np.asarray(count, dtype=np.float64))
        n = float(self.sizes[look])
        if np.any((c < 0) | (c > n)):
            raise ConfigError(f"count must be in [0, {int(n)}], got {float(c[(c < 0) | (c > n)][0]):g}")
        return self.lower(c, n), self.upper(c, n)

    def lower(self, count: ArrayLike, n: float) -> NDArray[np.float64]:
        """``L_n``: below ``pA`` at every look with probability ``>= 1 - alpha``."""
        c = np.atleast_1d(np.asarray(count, dtype=np.float64))
        if self.method == "union":
            return np.atleast_1d(
                np.asarray(stats.clopper_pearson_lower(c, n, self._level(self.alpha)), dtype=np.float64)
            )
        a, b = self.prior
        return _mixture_bound(c, np.full_like(c, float(n)), self.alpha, a, b, "lower")

    def upper(self, count: ArrayLike, n: float) -> NDArray[np.float64]:
        """``U_n`` at level ``beta`` (futility only)."""
        c = np.atleast_1d(np.asarray(count, dtype=np.float64))
        if self.method == "union":
            return np.atleast_1d(
                np.asarray(stats.clopper_pearson_upper(c, n, self._level(self.beta)), dtype=np.float64)
            )
        a, b = self.prior
        return _mixture_bound(c, np.full_like(c, float(n)), self.beta, a, b, "upper")


def make_confseq(
    *,
    alpha: float,
    n_max: int,
    beta: float | None = None,
    method: str = "union",
    n_first: int = 32,
    growth: float = 1.25,
    prior: tuple[float, float] = (1.0, 1.0),
) -> ConfidenceSequence:
    """A :class:`ConfidenceSequence` with looks from :func:`look_sizes`; ``beta`` defaults to ``alpha``."""
    alpha = check_alpha(alpha)
    beta = alpha if beta is None else check_alpha(beta, "beta")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    a, b = (float(v) for v in prior)
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise ConfigError(f"prior must be two finite numbers > 0, got {prior!r}")
    return ConfidenceSequence(method, look_sizes(n_max=n_max, n_first=n_first, growth=growth), alpha, beta, (a, b))


def curve_decisions(lower: ArrayLike, upper: ArrayLike, thresholds: ArrayLike) -> NDArray[np.int8]:
    """Per input and grid radius: ``1`` certified (``L > t_j``), ``-1`` not (``U <= t_j``), ``0`` open.

    ``lower``/``upper`` are bounds on the smoothing law's ``pA``; ``t_j = inf`` (unreachable) is ``-1``.
    """
    lo = np.atleast_1d(np.asarray(lower, dtype=np.float64))[:, None]
    up = np.atleast_1d(np.asarray(upper, dtype=np.float64))[:, None]
    t = np.asarray(thresholds, dtype=np.float64)[None, :]
    out = np.zeros((lo.shape[0], t.shape[1]), dtype=np.int8)
    out[np.broadcast_to(up <= t, out.shape)] = -1
    out[np.broadcast_to(lo > t, out.shape)] = 1
    return out


def curve_step(
    lower: ArrayLike,
    upper: ArrayLike,
    radii: ArrayLike,
    thresholds: ArrayLike,
    *,
    radius_of: Callable[[NDArray[np.float64]], NDArray[np.float64]],
    radius_tol: float,
    acr_tol: float | None,
    last: bool,
) -> tuple[NDArray[np.bool_], NDArray[np.str_], NDArray[np.int8]]:
    """The curve stopping rule after one look: ``(stop, reason, decisions)`` per input.

    ``radii`` ``r_1 < ... < r_J`` is the reporting grid (the last is the cap) and ``thresholds``
    their ``t_j``; ``lower``/``upper`` bound the smoothing law's ``pA``; ``radius_of`` maps a bound
    to its radius (increasing, 0 at or below 1/2). A grid radius is *settled* when decided
    (:func:`curve_decisions`) or when ``R(U) <= r_j + radius_tol``: then only inputs whose radius
    is within ``radius_tol`` of ``r_j`` could still be certified there. Stops with reason
    ``"cap"`` when ``L > t_J``; otherwise only when every grid radius is settled and (if
    ``acr_tol`` is given) more samples could not raise the capped radius by more than
    ``acr_tol``, ``R(min(U, t_J)) - R(L) <= acr_tol`` (reason ``"decided"`` if every grid radius
    is decided, else ``"tolerance"``); ``"n_max"`` at the last look. Only ``L`` ever certifies.
    """
    lo = np.atleast_1d(np.asarray(lower, dtype=np.float64))
    up = np.atleast_1d(np.asarray(upper, dtype=np.float64))
    r = np.asarray(radii, dtype=np.float64)
    dec = curve_decisions(lo, up, thresholds)
    settled = (dec != 0) | (radius_of(up)[:, None] <= r[None, :] + radius_tol)
    ok = np.all(settled, axis=1)
    if acr_tol is not None:
        t = np.asarray(thresholds, dtype=np.float64)
        reach = t[np.isfinite(t)]
        t_cap = float(reach[-1]) if len(reach) else 1.0
        ok &= radius_of(np.minimum(up, t_cap)) - radius_of(np.minimum(lo, t_cap)) <= acr_tol
    reason = np.full(lo.shape, N_MAX if last else "", dtype="<U9")
    reason[ok] = TOLERANCE
    reason[ok & np.all(dec != 0, axis=1)] = DECIDED
    reason[dec[:, -1] == 1] = CAP
    return reason != "", reason, dec
