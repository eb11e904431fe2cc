"""Tests for smoothcert.core.radii: closed forms, Neyman–Pearson integration, inverses, soundness.

Reference values are computed independently here: scipy.stats quantiles, scipy.integrate
quadrature of the two shifted densities, a grid Neyman–Pearson computation in 2-d, and
simulated Clopper–Pearson certifications of a base classifier whose pA and true distance to
the decision boundary are known exactly.
"""

from __future__ import annotations

import math
import subprocess
import sys
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from scipy import integrate, optimize
from scipy import stats as st

from smoothcert.core import radii as R
from smoothcert.core.stats import clopper_pearson_lower

SIGMA = 0.7
B = SIGMA / math.sqrt(2)  # Laplace scale
LAM = SIGMA * math.sqrt(3)  # uniform half-width
CASES = [
    ("gaussian", "l2"),
    ("gaussian", "l1"),
    ("gaussian", "linf"),
    ("laplace", "l1"),
    ("uniform", "l1"),
    ("uniform", "linf"),
]


def dist1d(noise: str) -> st.rv_continuous:
    """The 1-d marginal with std SIGMA, built from scipy independently of smoothcert."""
    return {
        "gaussian": st.norm(scale=SIGMA),
        "laplace": st.laplace(scale=B),
        "uniform": st.uniform(loc=-LAM, scale=2 * LAM),
    }[noise]


def test_module_does_not_import_torch() -> None:
    code = "import sys, smoothcert.core.radii; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_marginals_have_std_sigma() -> None:
    for noise in R.NOISES:
        assert dist1d(noise).std() == pytest.approx(SIGMA, rel=1e-12)
    assert R.laplace_scale(SIGMA) == pytest.approx(B) and R.uniform_half_width(SIGMA) == pytest.approx(LAM)


# --------------------------------------------------------------------------- closed forms

P = np.array([0.500001, 0.51, 0.6, 0.75, 0.9, 0.99, 0.999999])


def test_gaussian_closed_forms() -> None:
    r2 = R.radius("gaussian", P, sigma=SIGMA, norm="l2")
    np.testing.assert_allclose(r2, SIGMA * st.norm.ppf(P), rtol=1e-12)
    np.testing.assert_allclose(R.radius("gaussian", P, sigma=SIGMA, norm="l1"), r2, rtol=1e-12)
    for d in (1, 7, 784):
        np.testing.assert_allclose(
            R.radius("gaussian", P, sigma=SIGMA, norm="linf", dim=d), r2 / math.sqrt(d), rtol=1e-12
        )
    pb = np.full_like(P, 0.05)
    np.testing.assert_allclose(
        R.radius("gaussian", P, sigma=SIGMA, norm="l2", p_upper_b=pb),
        SIGMA / 2 * (st.norm.ppf(P) - st.norm.ppf(pb)),
        rtol=1e-12,
    )


def test_gaussian_matches_cohen_radius() -> None:
    from smoothcert.core.stats import cohen_radius

    np.testing.assert_allclose(
        R.radius("gaussian", P, sigma=SIGMA, norm="l2"), cohen_radius(P, sigma=SIGMA), rtol=1e-14
    )


def test_laplace_l1_is_the_1d_quantile() -> None:
    # With pB = 1 - pA the l1 radius is the Laplace quantile F^-1(pA) = -b ln(2 (1 - pA)).
    r = R.radius("laplace", P, sigma=SIGMA, norm="l1")
    np.testing.assert_allclose(r, st.laplace.ppf(P, scale=B), rtol=1e-9)
    np.testing.assert_allclose(r, -B * np.log(2 * (1 - P)), rtol=1e-12)
    # (pA, pB) form: max of the two terms of Teng et al.
    pa, pb = 0.7, 0.1
    want = max(B / 2 * math.log(pa / pb), -B * math.log(1 - pa + pb))
    assert R.radius("laplace", pa, sigma=SIGMA, norm="l1", p_upper_b=pb) == pytest.approx(want, rel=1e-12)


def test_uniform_closed_forms_and_d1() -> None:
    r1 = R.radius("uniform", P, sigma=SIGMA, norm="l1")
    np.testing.assert_allclose(r1, st.uniform.ppf(P, loc=-LAM, scale=2 * LAM), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(r1, 2 * LAM * (P - 0.5), rtol=1e-12)
    # l1 radius does not depend on d; linf at d = 1 equals l1 (both balls are intervals).
    np.testing.assert_allclose(R.radius("uniform", P, sigma=SIGMA, norm="linf", dim=1), r1, rtol=1e-9, atol=1e-15)
    for d in (2, 10, 3072):
        np.testing.assert_allclose(
            R.radius("uniform", P, sigma=SIGMA, norm="linf", dim=d),
            2 * LAM * (1 - (1.5 - P) ** (1 / d)),
            rtol=1e-9,
            atol=1e-15,
        )


def test_edges_pa_half_and_one() -> None:
    for noise, norm in CASES:
        kw = {"sigma": SIGMA, "norm": norm, "dim": 5}
        # no certificate at or below 1/2 (and never negative)
        np.testing.assert_array_equal(R.radius(noise, np.array([0.0, 0.2, 0.5]), **kw), 0.0)
        # continuous at 1/2: tiny above 1/2 gives a tiny radius
        assert 0 < R.radius(noise, 0.5 + 1e-9, **kw) < 1e-7
        # increasing
        r = R.radius(noise, P, **kw)
        assert np.all(np.diff(r) > 0)
    # pA -> 1: unbounded for Gaussian and Laplace, bounded by the cube for uniform
    assert R.radius("gaussian", 1.0, sigma=SIGMA, norm="l2") == math.inf
    assert R.radius("laplace", 1.0, sigma=SIGMA, norm="l1") == math.inf
    assert R.radius("uniform", 1.0, sigma=SIGMA, norm="l1") == pytest.approx(LAM)
    for d in (1, 3, 1000):
        assert R.radius("uniform", 1.0, sigma=SIGMA, norm="linf", dim=d) == pytest.approx(
            2 * LAM * (1 - 0.5 ** (1 / d))
        )
    # runner-up bound: no certificate where pA <= pB
    assert R.radius("laplace", 0.4, sigma=SIGMA, norm="l1", p_upper_b=0.4) == 0.0
    assert R.radius("uniform", 0.4, sigma=SIGMA, norm="linf", dim=3, p_upper_b=0.3) > 0.0


def test_scalar_and_array_io() -> None:
    assert isinstance(R.radius("laplace", 0.8, sigma=SIGMA, norm="l1"), float)
    out = R.radius("uniform", [[0.6, 0.7]], sigma=SIGMA, norm="linf", dim=3)
    assert isinstance(out, np.ndarray) and out.shape == (1, 2)
    assert isinstance(R.threshold("gaussian", 0.3, sigma=SIGMA, norm="l2"), float)


# --------------------------------------------------------------------------- threshold


@pytest.mark.parametrize(("noise", "norm"), CASES)
@pytest.mark.parametrize("dim", [1, 4, 784])
def test_threshold_inverts_radius(noise: str, norm: str, dim: int) -> None:
    kw = {"sigma": SIGMA, "norm": norm, "dim": dim}
    p = np.linspace(0.5005, 0.9995, 200)
    r = R.radius(noise, p, **kw)
    np.testing.assert_allclose(R.threshold(noise, r, **kw), p, rtol=0, atol=1e-9)
    # monotone and the defining property: radius(threshold(r)) >= r (up to rounding)
    rs = np.linspace(0.0, float(r[-1]), 50)
    t = R.threshold(noise, rs, **kw)
    assert np.all(np.diff(t) > 0) and t[0] == 0.5
    np.testing.assert_array_less(rs - 1e-9, R.radius(noise, t, **kw) + 1e-12)
    # slightly below the threshold the radius is short of r
    assert np.all(R.radius(noise, t[1:] - 1e-6, **kw) < rs[1:])


def test_threshold_unreachable_is_inf() -> None:
    assert R.threshold("uniform", LAM * 1.0001, sigma=SIGMA, norm="l1") == math.inf
    rmax = 2 * LAM * (1 - 0.5 ** (1 / 3))
    assert R.threshold("uniform", rmax * 1.0001, sigma=SIGMA, norm="linf", dim=3) == math.inf
    assert R.threshold("uniform", 3 * LAM, sigma=SIGMA, norm="linf", dim=4) == math.inf
    assert R.threshold("uniform", LAM, sigma=SIGMA, norm="l1") == pytest.approx(1.0)
    assert R.threshold("gaussian", math.inf, sigma=SIGMA, norm="l2") == 1.0
    assert R.threshold("laplace", math.inf, sigma=SIGMA, norm="l1") == 1.0


# --------------------------------------------------------------------------- Neyman–Pearson by quadrature


def _pdf(noise: str) -> Callable[[float], float]:
    d = dist1d(noise)
    return lambda x: float(d.pdf(x))


def _support(noise: str) -> tuple[float, float]:
    return (-LAM, LAM) if noise == "uniform" else (-40 * SIGMA, 40 * SIGMA)


def _np_worst_1d(noise: str, pa: float, delta: float) -> float:
    """min P(X + delta in A) over sets A with P(X in A) = pA, by quadrature of the densities.

    The likelihood ratio p(x - delta) / p(x) of each family is non-decreasing in x for
    delta > 0 (checked in ``test_likelihood_ratio_monotone``), so by the Neyman–Pearson lemma
    the minimising set is a left half-line {x < t}; t solves int_{-inf}^t p = pA.
    """
    pdf = _pdf(noise)
    lo, hi = _support(noise)
    mass = lambda t: integrate.quad(pdf, lo, t, points=[0.0] if lo < 0 < t else None, limit=200)[0]  # noqa: E731
    t = optimize.brentq(lambda t: mass(t) - pa, lo, hi, xtol=1e-13)
    # P(X + delta < t) = int_{-inf}^{t} p(x - delta) dx
    shifted = lambda x: pdf(x - delta)  # noqa: E731
    pts = [p for p in (delta, -LAM + delta, LAM + delta) if lo + delta < p < t] if noise != "gaussian" else None
    return integrate.quad(shifted, lo + delta, t, points=pts or None, limit=200)[0]


@pytest.mark.parametrize("noise", R.NOISES)
def test_likelihood_ratio_monotone(noise: str) -> None:
    d = dist1d(noise)
    lo, hi = _support(noise)
    x = np.linspace(lo + 1e-9, hi - 1e-9, 20001)
    for delta in (0.1, 0.5, 1.0):
        log_ratio = d.logpdf(x - delta) - d.logpdf(x)  # -inf where the shifted density is 0
        assert np.all(np.diff(np.maximum(log_ratio, -1e300)) >= -1e-9)


@pytest.mark.parametrize(
    ("noise", "norm"), [("gaussian", "l2"), ("laplace", "l1"), ("uniform", "l1"), ("uniform", "linf")]
)
@pytest.mark.parametrize("pa", [0.55, 0.7, 0.9, 0.99])
def test_radius_is_where_worst_case_crosses_half_1d(noise: str, norm: str, pa: float) -> None:
    """In 1-d all three certificates are tight: the worst-case smoothed probability of the top
    class is 1/2 exactly at the radius, above 1/2 just inside and below just outside."""
    r = R.radius(noise, pa, sigma=SIGMA, norm=norm, dim=1)
    assert _np_worst_1d(noise, pa, r) == pytest.approx(0.5, abs=1e-7)
    assert _np_worst_1d(noise, pa, r * 0.99) > 0.5 + 1e-5
    assert _np_worst_1d(noise, pa, r * 1.01) < 0.5 - 1e-5


@pytest.mark.parametrize("noise", ["gaussian", "laplace", "uniform"])
@pytest.mark.parametrize(("pa", "pb"), [(0.6, 0.3), (0.5, 0.2), (0.4, 0.35), (0.9, 0.02)])
def test_runner_up_form_sound_1d(noise: str, pa: float, pb: float) -> None:
    """(pA, pB) form in 1-d: the worst A is a left half-line, the worst B a right half-line
    (monotone likelihood ratio); at the radius P'(A) >= P'(B), and the Gaussian is tight."""
    norm = "l2" if noise == "gaussian" else "l1"
    r = R.radius(noise, pa, sigma=SIGMA, norm=norm, p_upper_b=pb)
    assert r > 0
    a_worst = _np_worst_1d(noise, pa, r)
    b_worst = 1.0 - _np_worst_1d(noise, 1.0 - pb, r)  # P'(right half-line of mass pB)
    assert a_worst >= b_worst - 1e-8
    if noise == "gaussian":
        assert a_worst == pytest.approx(b_worst, abs=1e-7)


# --------------------------------------------------------------------------- 2-d Neyman–Pearson on a grid


def _np_worst_grid(m0: np.ndarray, m1: np.ndarray, pa: float) -> float:
    """Neyman–Pearson on cells: fill A with the cells of lowest ratio m1/m0 up to P0-mass pA."""
    m0, m1 = m0.ravel(), m1.ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(m0 > 0, m1 / m0, np.inf)
    order = np.argsort(ratio, kind="stable")
    c0, c1 = np.cumsum(m0[order]), np.cumsum(m1[order])
    i = int(np.searchsorted(c0, pa))
    prev0 = c0[i - 1] if i else 0.0
    prev1 = c1[i - 1] if i else 0.0
    return float(prev1 + (pa - prev0) / m0[order][i] * m1[order][i])


def _cell_masses(noise: str, delta: tuple[float, float], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cell masses (CDF differences) of the 2-d product noise and its shift by delta."""
    d = dist1d(noise)
    lo, hi = (-3 * LAM, 3 * LAM) if noise == "uniform" else (-30 * B, 30 * B)
    edges = np.linspace(lo, hi, n + 1)
    m0 = [np.diff(d.cdf(edges))] * 2
    m1 = [np.diff(d.cdf(edges - s)) for s in delta]
    return np.outer(m0[0], m0[1]), np.outer(m1[0], m1[1])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("noise", "norm", "split"),
    [
        ("laplace", "l1", 0.5),
        ("laplace", "l1", 0.2),
        ("uniform", "l1", 0.5),
        ("uniform", "linf", None),
        ("gaussian", "linf", None),
    ],
)
@pytest.mark.parametrize("pa", [0.6, 0.8, 0.95])
def test_sound_in_2d_grid(noise: str, norm: str, split: float | None, pa: float) -> None:
    """d = 2, shifts off the axes: the worst-case top-class probability at the certified radius
    stays >= 1/2 (l1: shift split between the coordinates; linf: the corner (r, r)).
    Tolerance 2e-3 covers the grid's discretisation, calibrated by the axis shift that must
    cross 1/2 at the 1-d radius. Positive control: 10% beyond the axis radius the same grid
    computation drops below 1/2 - tolerance."""
    n, tol = 1200, 2e-3
    r = R.radius(noise, pa, sigma=SIGMA, norm=norm, dim=2)
    delta = (r, r) if split is None else (r * split, r * (1 - split))
    assert _np_worst_grid(*_cell_masses(noise, delta, n), pa) >= 0.5 - tol
    r1 = R.radius(noise, pa, sigma=SIGMA, norm="l2" if noise == "gaussian" else "l1")
    assert _np_worst_grid(*_cell_masses(noise, (r1, 0.0), n), pa) == pytest.approx(0.5, abs=tol)
    assert _np_worst_grid(*_cell_masses(noise, (1.1 * r1, 0.0), n), pa) < 0.5 - tol


def test_uniform_linf_tight_at_corner_by_quadrature() -> None:
    """Uniform linf in d = 2: the P0-mass outside the shifted square (where the ratio is 0) at
    the corner shift (r, r), integrated numerically, equals pA - 1/2 at the radius: tight."""
    dens = 1 / (2 * LAM) ** 2
    for pa in (0.6, 0.8, 0.99):
        r = R.radius("uniform", pa, sigma=SIGMA, norm="linf", dim=2)
        inside = integrate.dblquad(lambda y, x: dens, -LAM + r, LAM, -LAM + r, LAM)[0]
        assert pa - (1 - inside) == pytest.approx(0.5, abs=1e-9)


def test_gaussian_norm_conversions_cover_the_balls() -> None:
    d, r2 = 10, R.radius("gaussian", 0.9, sigma=SIGMA, norm="l2")
    rinf = R.radius("gaussian", 0.9, sigma=SIGMA, norm="linf", dim=d)
    corner = np.full(d, rinf)  # the linf ball's farthest point in l2
    assert np.linalg.norm(corner) == pytest.approx(r2)
    vertex = np.zeros(d)
    vertex[0] = R.radius("gaussian", 0.9, sigma=SIGMA, norm="l1")  # the l1 ball's farthest point
    assert np.linalg.norm(vertex) == pytest.approx(r2)


# --------------------------------------------------------------------------- statistical soundness

ALPHA, N_SAMPLES, TRIALS = 0.05, 500, 4000
# If every trial independently over-certifies with probability <= ALPHA, the count of
# over-certified trials exceeds this only with probability 1e-6.
MAX_BAD = int(st.binom.ppf(1 - 1e-6, TRIALS, ALPHA))


def _bad_count(
    noise: str,
    norm: str,
    dim: int,
    pa_true: float,
    true_dist: float,
    seed: int,
    *,
    inflate: float = 1.0,
    point_estimate: bool = False,
) -> int:
    rng = np.random.default_rng(seed)
    k = rng.binomial(N_SAMPLES, pa_true, size=TRIALS)
    p = k / N_SAMPLES if point_estimate else clopper_pearson_lower(k, N_SAMPLES, ALPHA)
    r = inflate * np.asarray(R.radius(noise, p, sigma=SIGMA, norm=norm, dim=dim))
    return int(np.sum(r > true_dist))


@pytest.mark.parametrize(("noise", "norm"), CASES)
@pytest.mark.parametrize("dim", [1, 50])
@pytest.mark.parametrize("pa_true", [0.7, 0.95])
def test_certification_sound_one_coordinate_threshold(noise: str, norm: str, dim: int, pa_true: float) -> None:
    """Base classifier f(x) = A iff x_1 < c at x = 0. pA = F(c) with F the 1-d noise CDF, and the
    smoothed classifier predicts A iff x_1 < c, so the true l1, l2 and linf distance to its
    boundary is c. Over TRIALS seeded Clopper–Pearson certifications (counts ~ Binomial(n, pA))
    the number of radii > c is at most MAX_BAD (the 1 - 1e-6 quantile of Binomial(TRIALS, ALPHA))."""
    c = float(dist1d(noise).ppf(pa_true))
    bad = _bad_count(noise, norm, dim, pa_true, c, seed=zlib.crc32(f"{noise}-{norm}-{dim}-{pa_true}".encode()))
    assert bad <= MAX_BAD


@pytest.mark.parametrize(
    ("noise", "norm"), [("gaussian", "l2"), ("laplace", "l1"), ("uniform", "l1"), ("uniform", "linf")]
)
@pytest.mark.parametrize("pa_true", [0.7, 0.95])
def test_certification_positive_controls(noise: str, norm: str, pa_true: float) -> None:
    """The same test catches unsound radii: a radius inflated by 10%, or the point estimate k/n
    used in place of the lower bound, over-certifies far more often than MAX_BAD (tight cases:
    d = 1 for uniform linf, any d for the others)."""
    c = float(dist1d(noise).ppf(pa_true))
    assert _bad_count(noise, norm, 1, pa_true, c, seed=1, inflate=1.1) > MAX_BAD
    assert _bad_count(noise, norm, 1, pa_true, c, seed=2, point_estimate=True) > MAX_BAD


@pytest.mark.parametrize("dim", [4, 100])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_gaussian_linf_sound_and_tight_for_sum_classifier(dim: int, norm: str) -> None:
    """f(x) = A iff sum_i x_i < c: pA = Phi(c / (sigma sqrt d)); the smoothed boundary is the
    hyperplane sum x_i = c, at l2 distance c / sqrt(d) and linf distance c / d, which the
    Gaussian l2 and linf radii reach exactly. Sound within MAX_BAD; inflated by 10% it fails."""
    pa_true = 0.9
    c = SIGMA * math.sqrt(dim) * float(st.norm.ppf(pa_true))
    true = c / math.sqrt(dim) if norm == "l2" else c / dim
    assert R.radius("gaussian", pa_true, sigma=SIGMA, norm=norm, dim=dim) == pytest.approx(true)
    assert _bad_count("gaussian", norm, dim, pa_true, true, seed=dim) <= MAX_BAD
    assert _bad_count("gaussian", norm, dim, pa_true, true, seed=dim + 1, inflate=1.1) > MAX_BAD


# --------------------------------------------------------------------------- bad input


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"noise must be one of gaussian, laplace, uniform, got 'cauchy'"):
        R.radius("cauchy", 0.9, sigma=1.0, norm="l1")
    with pytest.raises(ValueError, match=r"noise must be one of .* got 'cauchy'"):
        R.threshold("cauchy", 0.1, sigma=1.0, norm="l1")
    with pytest.raises(ValueError, match=r"noise must be one of .* got 'cauchy'"):
        R.supported_norms("cauchy")
    with pytest.raises(ValueError, match=r"norm must be one of l1, l2, linf, got 'l3'"):
        R.radius("gaussian", 0.9, sigma=1.0, norm="l3")
    with pytest.raises(ValueError, match=r"norm 'l2' is not certified by laplace noise \(supported: l1\)"):
        R.radius("laplace", 0.9, sigma=1.0, norm="l2")
    with pytest.raises(ValueError, match=r"norm 'linf' is not certified by laplace"):
        R.threshold("laplace", 0.1, sigma=1.0, norm="linf", dim=3)
    with pytest.raises(ValueError, match=r"norm 'l2' is not certified by uniform"):
        R.radius("uniform", 0.9, sigma=1.0, norm="l2")
    for bad in (0.0, -0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"sigma must be > 0"):
            R.radius("uniform", 0.9, sigma=bad, norm="l1")
    with pytest.raises(ValueError, match=r"sigma must be > 0 and finite, got -0.5"):
        R.threshold("gaussian", 0.1, sigma=-0.5, norm="l2")
    with pytest.raises(ValueError, match=r"dim .* required for norm 'linf'"):
        R.radius("uniform", 0.9, sigma=1.0, norm="linf")
    with pytest.raises(ValueError, match=r"dim must be >= 1, got 0"):
        R.radius("gaussian", 0.9, sigma=1.0, norm="linf", dim=0)
    with pytest.raises(TypeError, match=r"dim must be an int"):
        R.radius("gaussian", 0.9, sigma=1.0, norm="linf", dim=2.5)
    with pytest.raises(ValueError, match=r"p_lower must be in \[0, 1\], got 1.5"):
        R.radius("laplace", 1.5, sigma=1.0, norm="l1")
    with pytest.raises(ValueError, match=r"p_lower must be in \[0, 1\], got nan"):
        R.radius("laplace", math.nan, sigma=1.0, norm="l1")
    with pytest.raises(ValueError, match=r"p_upper_b must be in \[0, 1\]"):
        R.radius("laplace", 0.9, sigma=1.0, norm="l1", p_upper_b=-0.1)
    with pytest.raises(ValueError, match=r"radius must be >= 0, got -1.0"):
        R.threshold("laplace", -1.0, sigma=1.0, norm="l1")
    with pytest.raises(TypeError, match=r"p_lower must be a number"):
        R.radius("laplace", "high", sigma=1.0, norm="l1")
