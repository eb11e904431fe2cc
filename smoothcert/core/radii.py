"""Certified radii of randomized smoothing for several noise distributions and threat norms.

Pure functions of numbers (numpy/scipy only, no torch). Every noise is parameterized by
``sigma``, its per-coordinate standard deviation, so that noise levels compare across
families; each family's own scale parameter is derived from ``sigma``:

* ``"gaussian"``: N(0, sigma^2 I).
* ``"laplace"``: i.i.d. Laplace(0, b) coordinates with ``b = sigma / sqrt(2)`` (variance 2 b^2).
* ``"uniform"``: uniform on the cube [-lam, lam]^d with ``lam = sqrt(3) * sigma``
  (variance lam^2 / 3).

Radii (``pA`` = lower confidence bound on the top class's probability under noise, ``pB`` =
upper bound on the runner-up's, ``pB = 1 - pA`` when not given; ``0.0`` wherever
``pA <= pB``, i.e. ``pA <= 1/2`` without ``pB``):

=========  ======  ================================================================
noise      norm    radius
=========  ======  ================================================================
gaussian   l2      sigma/2 (Phi^-1(pA) - Phi^-1(pB))   Cohen et al. 2019, Thm 1
gaussian   l1      the l2 radius (||d||_2 <= ||d||_1)
gaussian   linf    the l2 radius / sqrt(d) (||d||_2 <= sqrt(d) ||d||_inf)
laplace    l1      max(b/2 ln(pA/pB), -b ln(1 - pA + pB))   Teng et al. 2020
                   (= -b ln(2 (1 - pA)) when pB = 1 - pA)
uniform    l1      lam (pA - pB)   (= 2 lam (pA - 1/2))   Yang et al. 2020
uniform    linf    2 lam (1 - (1 - (pA - pB)/2)^(1/d))
                   (= 2 lam (1 - (3/2 - pA)^(1/d)))    Yang et al. 2020
=========  ======  ================================================================

All are exact closed forms, sound for every ``d`` (derivations in ``docs/noises.md``).
Inputs are Python scalars or numpy arrays (broadcast together); scalar input returns a
Python ``float``, array input a numpy array. Bad input raises ``ValueError`` naming the
argument and its value (:mod:`smoothcert.core.checks`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as _st

from smoothcert.core.checks import (
    check_int,
    check_sigma,
    is_scalar,
    nonnegative_array,
    positive_array,
    probability_array,
    scalar_or_array,
)
from smoothcert.core.errors import ConfigError

__all__ = [
    "NOISES",
    "NORMS",
    "gaussian_radius",
    "gaussian_threshold",
    "laplace_radius",
    "laplace_scale",
    "laplace_threshold",
    "radius",
    "supported_norms",
    "threshold",
    "uniform_half_width",
    "uniform_radius",
    "uniform_threshold",
]

NOISES: tuple[str, ...] = ("gaussian", "laplace", "uniform")
NORMS: tuple[str, ...] = ("l1", "l2", "linf")
_SUPPORTED: dict[str, tuple[str, ...]] = {
    "gaussian": ("l2", "l1", "linf"),
    "laplace": ("l1",),
    "uniform": ("l1", "linf"),
}

Float = Any  # float for scalar input, NDArray[np.float64] for array input


# --------------------------------------------------------------------------- validation


def _check_noise(noise: Any) -> str:
    if not isinstance(noise, str) or noise not in _SUPPORTED:
        raise ConfigError(f"noise must be one of {', '.join(NOISES)}, got {noise!r}")
    return noise


def _check_norm(noise: str, norm: Any) -> str:
    if not isinstance(norm, str) or norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if norm not in _SUPPORTED[noise]:
        supported = ", ".join(_SUPPORTED[noise])
        raise ConfigError(f"norm {norm!r} is not certified by {noise} noise (supported: {supported})")
    return norm


def _dim_for(norm: str, dim: Any) -> int | None:
    """``dim`` is required (an int >= 1) for linf and checked if given otherwise."""
    if dim is None:
        if norm == "linf":
            raise ConfigError("dim (the input dimension d) is required for norm 'linf', got None")
        return None
    return check_int("dim", dim, 1)


def _pa_pb(p_lower: ArrayLike, p_upper_b: ArrayLike | None) -> tuple[NDArray[np.float64], NDArray[np.float64], bool]:
    scalar = is_scalar(p_lower, p_upper_b)
    pa = probability_array("p_lower", p_lower)
    if p_upper_b is None:
        pb = 1.0 - pa
    else:
        pb = probability_array("p_upper_b", p_upper_b)
        pa, pb = np.broadcast_arrays(pa, pb)
    return pa, pb, scalar


def supported_norms(noise: str) -> tuple[str, ...]:
    """The threat norms ``noise`` certifies, e.g. ``("l1", "linf")`` for ``"uniform"``."""
    return _SUPPORTED[_check_noise(noise)]


def laplace_scale(sigma: float) -> float:
    """Laplace scale ``b = sigma / sqrt(2)`` (a Laplace(0, b) coordinate has std ``sqrt(2) b``)."""
    return check_sigma(sigma) / math.sqrt(2.0)


def uniform_half_width(sigma: float) -> float:
    """Cube half-width ``lam = sqrt(3) sigma`` (a U[-lam, lam] coordinate has std ``lam / sqrt(3)``)."""
    return check_sigma(sigma) * math.sqrt(3.0)


# --------------------------------------------------------------------------- radii


def gaussian_radius(
    p_lower: ArrayLike,
    *,
    sigma: ArrayLike,
    norm: str = "l2",
    dim: int | None = None,
    p_upper_b: ArrayLike | None = None,
) -> Float:
    """Gaussian N(0, sigma^2 I): ``R2 = sigma/2 (Phi^-1(pA) - Phi^-1(pB))`` (Cohen et al. 2019, Thm 1).

    The package's one implementation of this formula (:func:`smoothcert.core.stats.cohen_radius`
    calls it). ``pB = 1 - pA`` by default, giving ``R2 = sigma Phi^-1(pA)``, evaluated in that
    form. ``l1`` returns ``R2`` (the l1 ball of radius R2 lies in the l2 ball) and ``linf`` returns
    ``R2 / sqrt(dim)`` (the linf ball of radius R2/sqrt(d) lies in the l2 ball). ``0.0`` where
    ``pA <= pB``. ``sigma`` may be an array, broadcast with the probabilities.
    """
    _check_norm("gaussian", norm)
    d = _dim_for(norm, dim)
    pa, pb, scalar = _pa_pb(p_lower, p_upper_b)
    s = positive_array("sigma", sigma)
    scalar = scalar and is_scalar(sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        if p_upper_b is None:
            r = s * _st.norm.ppf(pa)
        else:
            r = 0.5 * s * (_st.norm.ppf(pa) - _st.norm.ppf(pb))
    r = np.where(pa > pb, r, 0.0)
    if norm == "linf":
        assert d is not None
        r = r / math.sqrt(d)
    return scalar_or_array(r, scalar)


def laplace_radius(
    p_lower: ArrayLike, *, sigma: float, norm: str = "l1", dim: int | None = None, p_upper_b: ArrayLike | None = None
) -> Float:
    """Laplace, scale ``b = sigma/sqrt(2)``: l1 radius ``max(b/2 ln(pA/pB), -b ln(1 - pA + pB))``.

    Teng, Lee & Yuan (ICLR 2020), l1 certificate for isotropic Laplace smoothing. With
    ``pB = 1 - pA`` the second term dominates and ``R1 = -b ln(2 (1 - pA))``. Both terms follow
    from the density ratio bound ``p(x - delta) / p(x) <= exp(||delta||_1 / b)``
    (see docs/noises.md). ``0.0`` where ``pA <= pB``. Only ``norm="l1"``.
    """
    b = laplace_scale(sigma)
    _check_norm("laplace", norm)
    _dim_for(norm, dim)
    pa, pb, scalar = _pa_pb(p_lower, p_upper_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        r_ratio = 0.5 * b * (np.log(pa) - np.log(pb))
        r_comp = -b * np.log(1.0 - pa + pb)
    r = np.fmax(r_ratio, r_comp)
    r = np.where(pa > pb, r, 0.0)
    return scalar_or_array(r, scalar)


def uniform_radius(
    p_lower: ArrayLike, *, sigma: float, norm: str = "l1", dim: int | None = None, p_upper_b: ArrayLike | None = None
) -> Float:
    """Uniform on [-lam, lam]^d, ``lam = sqrt(3) sigma`` (Yang et al. 2020, uniform cube noise).

    ``l1``: ``lam (pA - pB)`` (``= 2 lam (pA - 1/2)`` with ``pB = 1 - pA``), no dependence on d.
    ``linf``: ``2 lam (1 - (1 - (pA - pB)/2)^(1/d))`` (``= 2 lam (1 - (3/2 - pA)^(1/d))``).
    Both certify that the noise mass outside the shifted cube, ``1 - prod(1 - |delta_i|/(2 lam))``,
    stays below ``(pA - pB)/2`` (docs/noises.md). ``0.0`` where ``pA <= pB``.
    """
    lam = uniform_half_width(sigma)
    _check_norm("uniform", norm)
    d = _dim_for(norm, dim)
    pa, pb, scalar = _pa_pb(p_lower, p_upper_b)
    gap = np.clip(pa - pb, 0.0, 1.0)
    if norm == "l1":
        r = lam * gap
    else:
        assert d is not None
        # 1 - (1 - g/2)^(1/d) computed as -expm1(log1p(-g/2)/d): accurate for large d.
        r = 2.0 * lam * -np.expm1(np.log1p(-0.5 * gap) / d)
    r = np.where(pa > pb, r, 0.0)
    return scalar_or_array(r, scalar)


_RADIUS = {"gaussian": gaussian_radius, "laplace": laplace_radius, "uniform": uniform_radius}


def radius(
    noise: str,
    p_lower: ArrayLike,
    *,
    sigma: float,
    norm: str,
    dim: int | None = None,
    p_upper_b: ArrayLike | None = None,
) -> Float:
    """Certified ``norm`` radius of ``noise`` smoothing at per-coordinate std ``sigma``.

    Dispatches to :func:`gaussian_radius`, :func:`laplace_radius` or :func:`uniform_radius`.
    ``dim`` (the input dimension) is required for ``linf``. ``0.0`` where ``p_lower <= 1/2``
    (or ``p_lower <= p_upper_b`` when the runner-up bound is given).
    """
    return _RADIUS[_check_noise(noise)](p_lower, sigma=sigma, norm=norm, dim=dim, p_upper_b=p_upper_b)


# --------------------------------------------------------------------------- thresholds


def gaussian_threshold(r: ArrayLike, *, sigma: float, norm: str = "l2", dim: int | None = None) -> Float:
    """Smallest pA with Gaussian radius >= r: ``Phi(r / sigma)`` (l2, l1), ``Phi(r sqrt(d) / sigma)`` (linf)."""
    s = check_sigma(sigma)
    _check_norm("gaussian", norm)
    d = _dim_for(norm, dim)
    scalar = is_scalar(r)
    rr = nonnegative_array("radius", r)
    scale = math.sqrt(d) if (norm == "linf" and d is not None) else 1.0
    return scalar_or_array(_st.norm.cdf(rr * scale / s), scalar)


def laplace_threshold(r: ArrayLike, *, sigma: float, norm: str = "l1", dim: int | None = None) -> Float:
    """Smallest pA with Laplace l1 radius >= r: ``1 - exp(-r / b) / 2``, ``b = sigma / sqrt(2)``."""
    b = laplace_scale(sigma)
    _check_norm("laplace", norm)
    _dim_for(norm, dim)
    scalar = is_scalar(r)
    rr = nonnegative_array("radius", r)
    return scalar_or_array(1.0 - 0.5 * np.exp(-rr / b), scalar)


def uniform_threshold(r: ArrayLike, *, sigma: float, norm: str = "l1", dim: int | None = None) -> Float:
    """Smallest pA with uniform radius >= r; ``inf`` where no pA <= 1 reaches r.

    ``l1``: ``1/2 + r / (2 lam)`` (reachable for ``r <= lam``). ``linf``: ``3/2 - (1 - r/(2 lam))^d``
    (reachable for ``r <= 2 lam (1 - 2^(-1/d))``). ``lam = sqrt(3) sigma``.
    """
    lam = uniform_half_width(sigma)
    _check_norm("uniform", norm)
    d = _dim_for(norm, dim)
    scalar = is_scalar(r)
    rr = nonnegative_array("radius", r)
    x = rr / (2.0 * lam)
    if norm == "l1":
        t = 0.5 + x
    else:
        assert d is not None
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(x < 1.0, 1.5 - np.exp(d * np.log1p(-np.minimum(x, 1.0))), np.inf)
    t = np.where(t <= 1.0, t, np.inf)
    return scalar_or_array(t, scalar)


_THRESHOLD = {"gaussian": gaussian_threshold, "laplace": laplace_threshold, "uniform": uniform_threshold}


def threshold(noise: str, radius: ArrayLike, *, sigma: float, norm: str, dim: int | None = None) -> Float:
    """Smallest pA whose certified radius (with ``pB = 1 - pA``) is >= ``radius``.

    The inverse of :func:`radius` for ``radius > 0`` (radius is continuous and increasing in
    pA above 1/2): ``radius(pA) >= r`` iff ``pA >= threshold(r)``; ``threshold(0) = 1/2``.
    ``inf`` where no pA <= 1 reaches ``radius`` (uniform noise has bounded radii). A
    sequential test of H0: ``pA <= threshold`` certifies ``radius`` when it rejects.
    """
    return _THRESHOLD[_check_noise(noise)](radius, sigma=sigma, norm=norm, dim=dim)
