"""Noise on a grid: exact integer thresholds for sound smoothing of quantized inputs (torch-free).

Sound mode (``docs/sound.md``; the construction follows Voráček & Hein, ICLR 2023, "Sound
Randomized Smoothing in Floating-Point Arithmetic", Sec. 4, in our own words) smooths an input
``x = i / q`` on the grid of spacing ``1 / q`` with *integer* noise ``j`` whose law is the
continuous noise rounded to the grid:

    P(j) = F((j + 1/2) / q) - F((j - 1/2) / q),

``F`` the noise's CDF. Then ``i + j`` is exactly ``q * round_q(x + eps)`` for continuous ``eps``,
so the procedure *is* the smoothing of the deterministic classifier ``f o round_q`` and the
continuous radius formulas hold for every grid point.

**Sampler.** Inverse CDF on a uniform integer ``u`` in ``[0, 2^62)``: ``j = low + #{k : T_k <= u}``
with thresholds ``T_k = round(2^62 * F((low + k + 1/2) / q))``, ``k = 0 .. len(T) - 1``, computed
here with mpmath at :data:`PRECISION` bits (far beyond the 62 bits kept), so each ``T_k`` is the
correctly rounded value. The support ``[low, -low]`` is cut where each tail holds less than
``2^-61`` (uniform noise: at its support's edge, nothing is cut).

**Residual.** The sampler's law ``Q`` differs from the discretized law ``P`` only through the
rounding of the thresholds (each cumulative probability moves by at most ``2^-63``) and the
cut tails (their mass moves onto the end points). Hence, per coordinate,

    TV(Q, P) <= len(T) * 2^-63 + tail <= (len(T) + 4) * 2^-62 =: tv,

(:attr:`LatticeTable.tv`; the ``2^-60`` bounds both tails), and ``d * tv`` for ``d`` i.i.d.
coordinates. :func:`exact_tv` computes the true value for the tests.

**Bucket table.** For speed the sampler first draws the top :data:`BUCKET_BITS` bits of ``u``: a
bucket holding no threshold determines ``j`` at once (:attr:`LatticeTable.buckets`); only draws
landing in one of the few buckets that hold a threshold need the remaining bits and a search.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import mpmath
import numpy as np
from numpy.typing import ArrayLike, NDArray

from smoothcert.core.checks import check_int, check_sigma
from smoothcert.core.errors import ConfigError

__all__ = [
    "AMBIGUOUS",
    "BUCKET_BITS",
    "GRID_TOLERANCE",
    "LATTICE_NOISES",
    "PRECISION",
    "U_BITS",
    "LatticeTable",
    "cdf",
    "check_grid",
    "exact_tv",
    "lattice_table",
    "pmf",
    "require_on_grid",
]

U_BITS = 62
"""Bits of the uniform integer behind one integer noise draw."""
BUCKET_BITS = 16
"""Bits of the first-level bucket table."""
PRECISION = 128
"""mpmath working precision (bits) for the CDF values behind the thresholds."""
GRID_TOLERANCE = 1e-4
"""An input coordinate ``x`` is on the grid when ``|q x - round(q x)| <= GRID_TOLERANCE``."""
AMBIGUOUS = -(2**31)
"""Marks a bucket holding a threshold in :attr:`LatticeTable.buckets`."""
LATTICE_NOISES = ("gaussian", "laplace", "uniform")
_TAIL = mpmath.mpf(2) ** -61  # per side
_MAX_GRID_INDEX = 2**23  # |round(q x)| bound for sound-mode inputs
_MAX_HALF_WIDTH = 2**22  # |low| bound: keeps |i + j| exactly representable in float32 for 8-bit grids


def _mp(noise: str, sigma: float) -> tuple[str, Any]:
    if noise not in LATTICE_NOISES:
        raise ValueError(f"noise must be one of {', '.join(LATTICE_NOISES)}, got {noise!r}")
    return noise, mpmath.mpf(check_sigma(sigma))


def cdf(noise: str, sigma: float, t: Any) -> Any:
    """The noise's CDF at ``t`` as an mpmath number (call inside ``mpmath.workprec``).

    ``sigma`` is the per-coordinate standard deviation, as in :mod:`smoothcert.smoothing.noises`:
    Laplace scale ``sigma / sqrt(2)``, uniform half-width ``sqrt(3) sigma``.
    """
    noise, s = _mp(noise, sigma)
    t = mpmath.mpf(t)
    if noise == "gaussian":
        return mpmath.erfc(-t / (s * mpmath.sqrt(2))) / 2
    if noise == "laplace":
        b = s / mpmath.sqrt(2)
        return mpmath.exp(t / b) / 2 if t < 0 else 1 - mpmath.exp(-t / b) / 2
    lam = mpmath.sqrt(3) * s
    return min(max((t + lam) / (2 * lam), mpmath.mpf(0)), mpmath.mpf(1))


def pmf(noise: str, sigma: float, q: int, j: int) -> Any:
    """``P(j) = F((j + 1/2) / q) - F((j - 1/2) / q)`` at :data:`PRECISION` bits (an mpmath number)."""
    with mpmath.workprec(PRECISION):
        return cdf(noise, sigma, mpmath.mpf(2 * j + 1) / (2 * q)) - cdf(noise, sigma, mpmath.mpf(2 * j - 1) / (2 * q))


def _half_width(noise: str, sigma: float, q: int) -> int:
    """The smallest ``J`` with lower tail ``F((-J - 1/2) / q) < 2^-61`` (uniform: the support's edge)."""
    s = mpmath.mpf(sigma)
    if noise == "uniform":
        edge = mpmath.sqrt(3) * s * q + mpmath.mpf(1) / 2  # j is in the support iff j < edge
        return int(mpmath.ceil(edge)) - 1
    # a closed-form start, then exact checks
    guess = 9.5 * sigma if noise == "gaussian" else 42.0 * sigma / math.sqrt(2)
    j = max(0, int(guess * q))
    while cdf(noise, sigma, mpmath.mpf(-2 * j - 1) / (2 * q)) >= _TAIL:
        j += 1
    while j > 0 and cdf(noise, sigma, mpmath.mpf(-2 * j + 1) / (2 * q)) < _TAIL:
        j -= 1
    return j


@dataclass(frozen=True)
class LatticeTable:
    """Integer thresholds of one (noise, sigma, q), as :func:`lattice_table` builds them.

    Attributes:
        noise, sigma, q: the noise family, its per-coordinate std and the grid (``1 / q`` spacing).
        low: the smallest integer noise value ``-J``; the support is ``[low, -low]``.
        thresholds: ``T_k`` (int64, nondecreasing, in ``[0, 2^62]``), ``2 J`` of them.
        buckets: ``j`` for each of the ``2^BUCKET_BITS`` top-bit buckets of ``u`` without a
            threshold inside, :data:`AMBIGUOUS` for the others (int32).
        tv: per-coordinate bound on the total variation between the sampler's law and the
            discretized law, ``(len(thresholds) + 4) * 2^-62`` (exact in float64).
    """

    noise: str
    sigma: float
    q: int
    low: int
    thresholds: NDArray[np.int64] = field(repr=False, compare=False)
    buckets: NDArray[np.int32] = field(repr=False, compare=False)
    tv: float

    def tv_bound(self, dim: int) -> float:
        """``dim * tv``: the bound for ``dim`` i.i.d. coordinates (subadditivity of TV over products)."""
        return float(check_int("dim", dim)) * self.tv

    def sampler_pmf(self) -> list[Any]:
        """The sampler's exact law on ``low .. -low``: threshold differences over ``2^62`` (mpmath)."""
        edges = [0, *(int(t) for t in self.thresholds), 2**U_BITS]
        with mpmath.workprec(PRECISION):  # exact: integers below 2^63 over a power of two
            return [mpmath.mpf(b - a) / 2**U_BITS for a, b in itertools.pairwise(edges)]


@functools.lru_cache(maxsize=32)
def lattice_table(noise: str, sigma: float, q: int) -> LatticeTable:
    """The thresholds and bucket table for ``noise`` with std ``sigma`` on the grid ``1/q`` (cached)."""
    noise, _ = _mp(noise, sigma)
    q = check_int("grid", q)
    with mpmath.workprec(PRECISION):
        big = mpmath.mpf(2) ** U_BITS
        half = _half_width(noise, sigma, q)
        if half > _MAX_HALF_WIDTH:
            raise ValueError(
                f"sigma * grid is too large for the integer sampler: sigma={sigma!r}, grid={q!r} "
                f"needs {2 * half + 1} noise values (at most {2 * _MAX_HALF_WIDTH + 1})"
            )
        low = -half
        thr = [
            int(mpmath.floor(big * cdf(noise, sigma, mpmath.mpf(2 * (low + k) + 1) / (2 * q)) + mpmath.mpf(1) / 2))
            for k in range(2 * half)
        ]
    thresholds = np.asarray(thr, dtype=np.int64)
    width = 2 ** (U_BITS - BUCKET_BITS)
    starts = np.arange(2**BUCKET_BITS, dtype=np.int64) * width
    first = np.searchsorted(thresholds, starts, side="right")
    last = np.searchsorted(thresholds, starts + (width - 1), side="right")
    buckets = np.where(first == last, low + first, AMBIGUOUS).astype(np.int32)
    tv = float(len(thr) + 4) * 2.0**-U_BITS
    return LatticeTable(noise, float(sigma), q, low, thresholds, buckets, tv)


def exact_tv(table: LatticeTable) -> Any:
    """The exact TV distance between the sampler's law and the discretized law (mpmath; for tests).

    Sums ``|Q(j) - P(j)|`` over the support and adds the mass of ``P`` outside it.
    """
    with mpmath.workprec(PRECISION):
        q_law = table.sampler_pmf()
        total = mpmath.mpf(0)
        for k, qj in enumerate(q_law):
            total += abs(qj - pmf(table.noise, table.sigma, table.q, table.low + k))
        outside = 2 * cdf(table.noise, table.sigma, mpmath.mpf(2 * table.low - 1) / (2 * table.q))
        return (total + outside) / 2


def require_on_grid(
    worst: float,
    *,
    q: int,
    index: int,
    value: float,
    magnitude: float = 0.0,
    name: str = "x",
    tol: float = GRID_TOLERANCE,
) -> None:
    """The sound-mode grid rule, in one place: raise :class:`ConfigError` unless ``worst <= tol`` and
    ``magnitude <= 2^23``.

    ``worst`` is the largest offset ``|q x - round(q x)|`` over the input's coordinates (NaN counts
    as off the grid), ``index`` and ``value`` name the coordinate where it occurs and ``magnitude`` is
    the largest ``|round(q x)|``. Callers compute these with numpy (:func:`check_grid`) or on the
    input's device (:meth:`smoothcert.smoothing.sound.GridNoise.perturb_`); only this function decides.
    """
    if not worst <= tol:
        raise ConfigError(
            f"{name} is not on the grid 1/{q} required by sound mode: coordinate {index} is {value!r}, "
            f"|{q} * x - round({q} * x)| = {worst:.3g} > {tol:g} (quantize the input or use float mode)"
        )
    if not magnitude <= _MAX_GRID_INDEX:
        raise ConfigError(f"{name} is too large for sound mode on the grid 1/{q}: |{q} * x| must be <= 2^23")


def check_grid(values: ArrayLike, q: int, *, name: str = "x", tol: float = GRID_TOLERANCE) -> NDArray[np.int64]:
    """``round(q * values)`` as int64, or a ConfigError naming the worst coordinate if off the grid
    (the rule: :func:`require_on_grid`)."""
    q = check_int("grid", q)
    v = np.asarray(values, dtype=np.float64)
    scaled = v * q
    ints = np.rint(scaled)
    if v.size:
        dev = np.nan_to_num(np.abs(scaled - ints), nan=np.inf)
        k = int(np.argmax(dev))
        require_on_grid(
            float(dev.flat[k]),
            q=q,
            index=k,
            value=float(v.flat[k]),
            magnitude=float(np.abs(ints).max()),
            name=name,
            tol=tol,
        )
    return ints.astype(np.int64)
