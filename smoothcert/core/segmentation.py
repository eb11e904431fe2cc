"""Per-pixel certification statistics for segmentation (torch-free).

Fischer, Baader & Vechev (ICML 2021), "Scalable Certified Segmentation via Randomized Smoothing",
Sec. 4 (algorithm SegCertify): every output pixel ``i`` has its own smoothed classifier
``g_i(x) = argmax_c P(f_i(x + eps) = c)``. With the class ``c_i`` of pixel ``i`` guessed from
separate draws, pixel ``i`` is certified at the common radius ``R = sigma Phi^-1(tau)`` when the
test of ``H0_i: p_i <= tau`` (``p_i = P(f_i(x + eps) = c_i)``) rejects. Testing thousands of
pixels at once, the tests are corrected for multiplicity with Holm's step-down method, so the
probability that *any* certified pixel is wrong stays ``<= alpha`` (family-wise error).

Per-pixel PREDICT (:func:`predict_pixels`) uses Bonferroni's correction instead: its null
hypotheses ("pixel ``i``'s top class is not its smoothed class") depend on the data, which Holm's
theorem does not cover, while the union bound does.

Sound mode (the noise drawn on the 8-bit grid): :func:`smoothcert.core.sound_level.level_after_tv`
gives the level the procedure runs at under the ideal law, ``alpha - n * tv``.

Derivation and the reasons for each choice: ``docs/tasks.md`` §1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as _st

from smoothcert.core import radii, stats
from smoothcert.core.checks import check_alpha, check_int
from smoothcert.core.errors import ConfigError

__all__ = [
    "CORRECTIONS",
    "binomial_sf_pvalues",
    "bonferroni_reject",
    "certify_pixels",
    "check_tau",
    "holm_reject",
    "predict_pixels",
    "segmentation_radius",
]

CORRECTIONS: tuple[str, ...] = ("holm", "bonferroni")


def check_tau(tau: Any) -> float:
    """The per-pixel threshold ``tau``: a real in the open interval ``(1/2, 1)``."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating, np.integer)):
        raise ConfigError(f"tau must be a real number in (0.5, 1), got {type(tau).__name__} {tau!r}")
    t = float(tau)
    if not (0.5 < t < 1.0):
        raise ConfigError(f"tau must be in (0.5, 1), got {tau!r}")
    return t


def binomial_sf_pvalues(counts: ArrayLike, n: int, tau: float) -> NDArray[np.float64]:
    """Exact one-sided p-values of ``H0: p <= tau`` against ``p > tau`` from ``counts`` successes of ``n``.

    ``P(Binomial(n, tau) >= k)``: under any ``p <= tau`` the probability of a count at least as
    large is at most this (the binomial tail is increasing in ``p``), so the test that rejects
    when the p-value is ``<= a`` has size ``<= a``.
    """
    n = check_int("n", n)
    tau = check_tau(tau)
    k = np.asarray(counts, dtype=np.int64)
    if np.any((k < 0) | (k > n)):
        raise ValueError(f"counts must lie in [0, n={n}], got values in [{int(k.min())}, {int(k.max())}]")
    return np.asarray(_st.binom.sf(k - 1, n, tau), dtype=np.float64)


def holm_reject(pvalues: ArrayLike, alpha: float) -> NDArray[np.bool_]:
    """Holm's step-down procedure (Holm, 1979): which hypotheses to reject at family-wise level ``alpha``.

    Sort the ``m`` p-values ascending, ``p_(1) <= ... <= p_(m)``; reject ``H_(1), ..., H_(j-1)``
    where ``j`` is the first index with ``p_(j) > alpha / (m - j + 1)``. Whatever the dependence
    between the tests, the probability of rejecting any true null is ``<= alpha``. Ties are
    broken by position (stable sort), which does not change the set rejected.
    """
    alpha = check_alpha(alpha)
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.reshape(-1)
    m = flat.size
    reject = np.zeros(m, dtype=bool)
    if m == 0:
        return reject.reshape(p.shape)
    order = np.argsort(flat, kind="stable")
    levels = alpha / (m - np.arange(m))  # alpha/m, alpha/(m-1), ..., alpha/1
    passed = flat[order] <= levels
    stop = int(np.argmin(passed)) if not passed.all() else m  # first failure ends the step-down
    reject[order[:stop]] = True
    return reject.reshape(p.shape)


def bonferroni_reject(pvalues: ArrayLike, alpha: float) -> NDArray[np.bool_]:
    """Bonferroni's correction: reject where ``p <= alpha / m`` (``m`` the number of p-values).

    By the union bound, if each rejection of a wrong pixel has probability ``<= alpha / m`` on
    its own, some wrong pixel is rejected with probability ``<= alpha``, whatever the dependence
    and whichever pixels are wrong (a set that may depend on the data).
    """
    alpha = check_alpha(alpha)
    p = np.asarray(pvalues, dtype=np.float64)
    return np.asarray(p <= alpha / max(p.size, 1), dtype=bool)


def predict_pixels(counts: ArrayLike, alpha: float) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.float64]]:
    """Per-pixel PREDICT from votes ``counts`` of shape ``(..., m, K)`` (``m`` pixels, ``K`` classes).

    Returns ``(top, decided, pvalues)`` shaped ``(..., m)``: each pixel's most frequent class, whether
    it is returned (else the pixel abstains), and the two-sided binomial p-value of its top count
    against the runner-up's (Cohen et al. 2019, Sec. 3.2.1). Pixels are decided at
    ``p <= alpha / m`` (Bonferroni, per leading index): each pixel's PREDICT returns a class other
    than its smoothed class with probability at most its level (Cohen et al., Prop. 1), so by the
    union bound some returned pixel is wrong with probability ``<= alpha``. Holm's step-down is not
    used: the set of pixels whose top class is wrong depends on the data (``docs/tasks.md`` §1).
    """
    alpha = check_alpha(alpha)
    c = np.asarray(counts, dtype=np.int64)
    if c.ndim < 2 or c.shape[-1] < 2:
        raise ValueError(f"counts must have shape (..., pixels, classes >= 2), got {c.shape}")
    order = np.argsort(-c, axis=-1, kind="stable")
    top, second = order[..., 0], order[..., 1]
    n_top = np.take_along_axis(c, top[..., None], axis=-1)[..., 0]
    n_second = np.take_along_axis(c, second[..., None], axis=-1)[..., 0]
    flat = stats.predict_pvalue(n_top.reshape(-1), n_second.reshape(-1))
    pvalues = np.atleast_1d(np.asarray(flat, dtype=np.float64)).reshape(top.shape)
    decided = pvalues <= alpha / max(c.shape[-2], 1)
    return top.astype(np.int64), decided, pvalues


def certify_pixels(
    counts: ArrayLike, n: int, *, tau: float, alpha: float, correction: str = "holm"
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Which pixels are certified: ``(certified, pvalues)``, both shaped like ``counts``.

    ``counts[i]`` is the number of the ``n`` estimation draws in which pixel ``i`` took its
    guessed class. ``correction`` is ``"holm"`` (default) or ``"bonferroni"`` (reject where
    ``p <= alpha / m``; never more than Holm). Either way the probability that some certified
    pixel has ``p_i <= tau`` is ``<= alpha``.
    """
    if correction not in CORRECTIONS:
        raise ConfigError(f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    alpha = check_alpha(alpha)
    pvalues = binomial_sf_pvalues(counts, n, tau)
    if correction == "holm":
        return holm_reject(pvalues, alpha), pvalues
    return bonferroni_reject(pvalues, alpha), pvalues


def segmentation_radius(
    tau: float, *, sigma: float, noise: str = "gaussian", norm: str = "l2", dim: int | None = None
) -> float:
    """The common radius of every certified pixel: the noise's radius at ``pA = tau``.

    Gaussian L2: ``sigma Phi^-1(tau)`` (Cohen et al. 2019, Thm 1 with ``pB = 1 - pA``), applied to
    each pixel's own smoothed classifier; other noises and norms as in :mod:`smoothcert.core.radii`.
    """
    r = float(radii.radius(noise, check_tau(tau), sigma=sigma, norm=norm, dim=dim))
    if not math.isfinite(r):
        raise ConfigError(f"tau={tau!r} gives no finite radius for {noise} noise")
    return r
