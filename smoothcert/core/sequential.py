"""Sequential (early-stopping) certification: stage grids, error budgets and stopping rules on counts.

No torch import: numbers and numpy arrays in and out, usable on simulated counts. The
construction and its proof are written out in ``docs/sequential.md``.

**Construction (a union bound over a grid fixed before sampling).** A :class:`Schedule` fixes,
before any sample is drawn, cumulative sample sizes ``n_1 < n_2 < ... < n_K = n_max`` (doubling
from ``n_first``) and per-stage levels ``alpha_1 + ... + alpha_K = alpha``. At stage ``k`` the
``n_k`` estimation samples seen so far give the exact one-sided Clopper–Pearson lower bound
``L_k = CP_lower(c_k, n_k, alpha_k)`` on ``pA`` (Cohen et al. 2019, Sec. 3.2.2 use the same bound
at one fixed ``n``). For the *whole* sequence ``L_1, ..., L_K`` — also the stages a run never
reaches — ``P(exists k: L_k > pA) <= sum_k alpha_k = alpha`` by the union bound, since each
``L_k`` alone exceeds ``pA`` with probability at most ``alpha_k``. Every statement this module
makes about ``pA`` is of the form ``L_k > t`` for a stage that was reached, so it is wrong with
probability at most ``alpha`` *whatever rule decides when to stop*, data-dependent rules
included. Re-checking a fixed-``alpha`` bound after each batch would not be valid: each look
spends another ``alpha`` (the tests show the error rate growing several-fold).

**Futility.** A run also stops early, as *not certified*, when the one-sided upper bound
``U_k = CP_upper(c_k, n_k, beta_k)`` (``sum_k beta_k = beta``) shows that even ``n_max`` samples
would not certify. This rule can only turn a certificate into no certificate, so ``beta``
changes how often a certifiable input is given up on (power), never validity.

Two modes use this:

- **decision** (:func:`decision_step`): is ``pA > p*`` (e.g. ``p* = Phi(r / sigma)`` for the
  Gaussian L2 radius ``r``)? ``certified`` as soon as ``L_k > p*``; ``not_certified`` when
  ``U_k < p_reach``, the smallest ``pA`` whose expected count at ``n_max`` would certify;
  ``undecided`` at ``n_max`` otherwise.
- **max-radius** (:func:`max_radius_step`): the largest radius the samples support,
  ``max_k R(L_k)`` over the stages reached (all ``L_k`` hold together, so their maximum does).
  It stops when the radius reaches ``radius_cap``, or when the optimistic radius at ``n_max``
  (computed from ``U_k``) exceeds the current one by at most ``radius_tol``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as _st

from smoothcert.core import stats
from smoothcert.core.checks import check_alpha, check_int
from smoothcert.core.errors import ConfigError

__all__ = [
    "CERTIFIED",
    "CONTINUE",
    "NOT_CERTIFIED",
    "UNDECIDED",
    "Schedule",
    "decision_step",
    "make_schedule",
    "max_radius_step",
    "naive_peeking_step",
    "reach_probability",
]

CERTIFIED = "certified"
NOT_CERTIFIED = "not_certified"
UNDECIDED = "undecided"
CONTINUE = "continue"
Decision = Literal["certified", "not_certified", "undecided", "continue"]


@dataclass(frozen=True)
class Schedule:
    """A stage grid fixed before sampling: cumulative sizes and per-stage error budgets.

    Attributes:
        sizes: cumulative estimation-sample counts ``n_1 < ... < n_K = n_max``.
        alphas: per-stage levels of the lower bounds; they sum to ``alpha``.
        betas: per-stage levels of the futility upper bounds; they sum to ``beta``.
    """

    sizes: tuple[int, ...]
    alphas: tuple[float, ...]
    betas: tuple[float, ...]

    @property
    def n_max(self) -> int:
        return self.sizes[-1]

    @property
    def alpha(self) -> float:
        return math.fsum(self.alphas)

    @property
    def beta(self) -> float:
        return math.fsum(self.betas)

    @property
    def num_stages(self) -> int:
        return len(self.sizes)


def make_schedule(
    *, n_max: int, alpha: float, beta: float | None = None, n_first: int = 64, growth: float = 2.0
) -> Schedule:
    """Sizes ``n_first * growth**j`` below ``n_max``, then ``n_max``; ``alpha`` and ``beta`` split evenly.

    ``beta`` defaults to ``alpha``. The even split costs little: the final stage's bound is at
    level ``alpha / K`` instead of ``alpha`` (``K = 12`` stages from 64 to 100,000).
    """
    n_max = check_int("n_max", n_max)
    n_first = check_int("n_first", n_first)
    alpha = check_alpha(alpha)
    beta = alpha if beta is None else check_alpha(beta, "beta")
    if not (isinstance(growth, int | float) and growth > 1 and math.isfinite(growth)):
        raise ConfigError(f"growth must be a finite number > 1, got {growth!r}")
    sizes: list[int] = []
    size = float(min(n_first, n_max))
    while int(size) < n_max:
        if not sizes or int(size) > sizes[-1]:
            sizes.append(int(size))
        size *= growth
    sizes.append(n_max)
    k = len(sizes)
    return Schedule(tuple(sizes), (alpha / k,) * k, (beta / k,) * k)


def _lower_real(k: NDArray[np.float64], n: float, alpha: float) -> NDArray[np.float64]:
    """Clopper–Pearson lower bound for a real-valued count (for the futility rule's expected counts)."""
    out = np.zeros_like(k, dtype=np.float64)
    pos = k > 0
    out[pos] = _st.beta.ppf(alpha, k[pos], n - k[pos] + 1)
    return out


def reach_probability(p_star: float, schedule: Schedule) -> float:
    """``p_reach``: the smallest ``pA`` whose expected count at ``n_max`` gives a final bound ``> p_star``.

    An input whose ``pA`` is below ``p_reach`` is more likely than not to stay uncertified at
    ``n_max``; the futility rule gives up on it when ``U_k < p_reach``. Returns a value > 1
    when even ``pA = 1`` cannot reach ``p_star`` at ``n_max``.
    """
    n, a = schedule.n_max, schedule.alphas[-1]
    if float(_lower_real(np.array([float(n)]), n, a)[0]) <= p_star:
        return 1.0 + 1e-12
    lo, hi = 0.0, 1.0
    for _ in range(60):  # bisection on pA: the bound is increasing in the count
        mid = 0.5 * (lo + hi)
        if float(_lower_real(np.array([mid * n]), n, a)[0]) > p_star:
            hi = mid
        else:
            lo = mid
    return hi


def _bounds(
    count: ArrayLike, stage: int, schedule: Schedule
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    if not 0 <= stage < schedule.num_stages:
        raise ConfigError(f"stage must be in [0, {schedule.num_stages}), got {stage!r}")
    c = np.atleast_1d(np.asarray(count, dtype=np.int64))
    n = schedule.sizes[stage]
    lower = np.atleast_1d(stats.clopper_pearson_lower(c, n, schedule.alphas[stage]))
    upper = np.atleast_1d(stats.clopper_pearson_upper(c, n, schedule.betas[stage]))
    return c, lower, upper


def decision_step(
    count: ArrayLike, stage: int, schedule: Schedule, p_star: float
) -> tuple[NDArray[np.str_], NDArray[np.float64], NDArray[np.float64]]:
    """Decide ``H0: pA <= p_star`` after stage ``stage`` (0-based) with ``count`` votes of ``sizes[stage]``.

    Returns ``(decision, p_lower, p_upper)`` per input: ``certified`` when ``p_lower > p_star``;
    ``not_certified`` when ``p_upper < reach_probability(p_star)``; at the last stage
    ``undecided``; otherwise ``continue``. ``P(certified while pA <= p_star) <= alpha`` over the
    whole run, whatever the stopping rule (module docstring).
    """
    _, lower, upper = _bounds(count, stage, schedule)
    last = stage == schedule.num_stages - 1
    reach = reach_probability(p_star, schedule)
    out = np.full(lower.shape, UNDECIDED if last else CONTINUE, dtype="<U13")
    out[upper < reach] = NOT_CERTIFIED
    out[lower > p_star] = CERTIFIED
    return out, lower, upper


def max_radius_step(
    count: ArrayLike,
    stage: int,
    schedule: Schedule,
    best_p_lower: ArrayLike,
    *,
    radius_of: Callable[[NDArray[np.float64]], NDArray[np.float64]],
    radius_cap: float | None = None,
    radius_tol: float = 0.0,
) -> tuple[NDArray[np.bool_], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """One max-radius stage: returns ``(stop, radius, p_lower, p_upper)`` per input.

    ``p_lower = max(best_p_lower, L_k)``, the largest lower bound of the stages reached (all
    hold together), and ``radius = radius_of(p_lower)`` (``radius_of`` is increasing, 0 where
    ``p <= 1/2``). ``stop`` at the last stage, when ``radius >= radius_cap``, or when the
    optimistic radius at ``n_max`` — ``radius_of`` of the final-stage bound of the expected
    count under ``pA = p_upper`` — exceeds ``radius`` by at most ``radius_tol``.
    """
    _, lower, upper = _bounds(count, stage, schedule)
    best = np.maximum(np.atleast_1d(np.asarray(best_p_lower, dtype=np.float64)), lower)
    radius = radius_of(best)
    if stage == schedule.num_stages - 1:
        return np.ones(best.shape, dtype=bool), radius, best, upper
    n = schedule.n_max
    potential = radius_of(_lower_real(upper * n, n, schedule.alphas[-1]))
    stop = potential - radius <= radius_tol
    if radius_cap is not None:
        stop |= radius >= radius_cap
    return stop, radius, best, upper


def naive_peeking_step(
    count: ArrayLike, stage: int, schedule: Schedule, p_star: float, alpha: float
) -> NDArray[np.bool_]:
    """The *invalid* rule kept as a negative control: fixed-``alpha`` Clopper–Pearson at every stage.

    Certifies as soon as ``CP_lower(c_k, n_k, alpha) > p_star``; its error rate exceeds
    ``alpha`` (each look spends ``alpha`` again). Never use it to certify.
    """
    c = np.atleast_1d(np.asarray(count, dtype=np.int64))
    lower = np.atleast_1d(stats.clopper_pearson_lower(c, schedule.sizes[stage], alpha))
    return np.asarray(lower > p_star)
