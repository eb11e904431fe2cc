"""Resolution lifting (paper App. G, Prop. 7): ``f' o AvgPool_s`` smoothed at ``s sigma'`` is ``g'`` at ``AvgPool_s(x)``.

Exact checks use float64 linear algebra (tolerance 1e-12: a few ulps of sums of 16 terms). Statistical
checks are seeded; each states its false-alarm rate under a correct implementation and has a
positive control (the wrong noise factor ``s + 1``) that it catches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from oracles import LinearBinary
from scipy import stats as st

from smoothcert.core import stats
from smoothcert.core.errors import ConfigError
from smoothcert.smoothing.classifier import SmoothedClassifier
from smoothcert.smoothing.lifting import AvgPoolThen, avg_pool, lift, render_resolution_figure, upsample

S = 2
K = 8  # low-resolution side
SIGMA_LOW = 0.5


def _pool_matrix(s: int, k: int) -> np.ndarray:
    """The (k^2, (sk)^2) matrix of AvgPool_s, column j = pooled j-th basis image (float64)."""
    eye = torch.eye((s * k) ** 2, dtype=torch.float64).reshape(-1, 1, s * k, s * k)
    return avg_pool(eye, s).reshape((s * k) ** 2, k * k).T.numpy()


# ---------------------------------------------------------------- the distributional identity, exactly


@pytest.mark.parametrize("s", [2, 3, 4])
def test_pooled_noise_moments_are_exact(s):
    """Cov(AvgPool_s eps) = (s sigma')^2 A A^T = sigma'^2 I and E = A 0 = 0: a Gaussian is fixed by these two moments."""
    a = _pool_matrix(s, 4)
    cov = (s * SIGMA_LOW) ** 2 * a @ a.T
    np.testing.assert_allclose(cov, SIGMA_LOW**2 * np.eye(16), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(a @ np.zeros(a.shape[1]), np.zeros(16))
    # each row averages s^2 pixels with weight 1/s^2, and no two rows share a pixel
    assert np.all((a > 0).sum(axis=1) == s * s) and np.all((a > 0).sum(axis=0) == 1)


def test_exact_moment_check_catches_the_wrong_factor():
    """Positive control: noise at (s + 1) sigma' pools to variance ((s+1)/s)^2 sigma'^2, not sigma'^2."""
    a = _pool_matrix(S, 4)
    cov = ((S + 1) * SIGMA_LOW) ** 2 * a @ a.T
    assert not np.allclose(cov, SIGMA_LOW**2 * np.eye(16), rtol=0, atol=1e-12)


def _pooled_draws(noise_sigma: float, draws: int, seed: int) -> np.ndarray:
    smoothed = lift(SmoothedClassifier(torch.nn.Identity(), 2, SIGMA_LOW, sound=False), factor=S)
    noise = smoothed.noise if noise_sigma == smoothed.sigma else type(smoothed.noise)(noise_sigma)
    buf = torch.empty(draws, 1, S * K, S * K, dtype=torch.float64)
    noise.sample_(buf, torch.Generator().manual_seed(seed))
    return avg_pool(buf, S).reshape(draws, K * K).numpy()


def _identity_pvalues(pooled: np.ndarray) -> tuple[float, float, float]:
    """KS against N(0, sigma'^2), two-sided chi-square on the sum of squares, and the largest neighbour correlation."""
    values = pooled.ravel()
    ks = float(st.kstest(values / SIGMA_LOW, "norm").pvalue)
    q = float((values**2).sum() / SIGMA_LOW**2)
    cdf = float(st.chi2.cdf(q, df=values.size))
    chi2 = 2 * min(cdf, 1 - cdf)
    corr = np.corrcoef(pooled[:, :-1].ravel(), pooled[:, 1:].ravel())[0, 1]
    return ks, chi2, abs(float(corr))


def test_pooled_lifted_noise_is_n0_sigma_low_statistically():
    """The lifted classifier's own noise, pooled: KS and chi-square p-values > 1e-3 (each fails w.p. 1e-3 for a
    random seed; this one is fixed) and neighbour correlation within 4 standard errors of 0 (2 draws/1e4)."""
    pooled = _pooled_draws(S * SIGMA_LOW, draws=3000, seed=11)
    ks, chi2, corr = _identity_pvalues(pooled)
    assert ks > 1e-3 and chi2 > 1e-3
    assert corr < 4 / math.sqrt(pooled.shape[0] * (K - 1) * K)


def test_statistical_identity_check_catches_the_wrong_factor():
    """Positive control: with noise (s + 1) sigma' both tests reject at 1e-6."""
    pooled = _pooled_draws((S + 1) * SIGMA_LOW, draws=3000, seed=11)
    ks, chi2, _ = _identity_pvalues(pooled)
    assert ks < 1e-6 and chi2 < 1e-6


# ---------------------------------------------------------------- the lifted classifier


def test_lift_builds_f_of_avgpool_at_s_sigma():
    base = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(K * K, 3))
    low = SmoothedClassifier(base, 3, SIGMA_LOW, input_shape=(1, K, K), sound=False)
    high = lift(low, factor=S)
    assert high.sigma == S * SIGMA_LOW and high.input_shape == (1, S * K, S * K) and high.norm == "l2"
    x = torch.rand(5, 1, S * K, S * K)
    torch.testing.assert_close(high.base_classifier(x), base(avg_pool(x, S)), rtol=0, atol=0)
    # pooling is linear: f(x + eps) = f'(AvgPool x + AvgPool eps)
    eps = torch.randn(5, 1, S * K, S * K, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xd = x.double()
    torch.testing.assert_close(avg_pool(xd + eps, S), avg_pool(xd, S) + avg_pool(eps, S), rtol=0, atol=1e-15)


def test_upsample_is_a_right_inverse_of_the_pool():
    x = torch.rand(3, 1, K, K)
    assert torch.equal(avg_pool(upsample(x, S), S), x)


def test_lift_refuses_non_gaussian_noise_and_bad_factors():
    smoothed = SmoothedClassifier(torch.nn.Identity(), 2, 0.5, noise="laplace", norm="l1", sound=False)
    with pytest.raises(ConfigError, match="Gaussian"):
        lift(smoothed, factor=2)
    with pytest.raises(ConfigError, match="factor"):
        lift(SmoothedClassifier(torch.nn.Identity(), 2, 0.5, sound=False), factor=0)
    with pytest.raises(ValueError, match="multiple of factor=3"):
        avg_pool(torch.zeros(1, 1, 8, 8), 3)


N, N0, ALPHA = 4000, 100, 0.001
TOL_SD = 4.5  # |count - n pA| > 4.5 sd has probability < 7e-6 per count: over the 24 counts below, < 2e-4


def _linear_setup() -> tuple[LinearBinary, list[torch.Tensor]]:
    """A linear base on 8x8 images, whose smoothed pA = Phi(|w.x + b| / (sigma ||w||)) is known exactly."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(K * K, generator=gen, dtype=torch.float64)
    base = LinearBinary(w, 0.0)
    xs = []
    for t in np.linspace(-1.2, 1.2, 12):  # signed distances t sigma' from the boundary
        x = torch.randn(K * K, generator=gen, dtype=torch.float64)
        x = x - (x @ w) / (w @ w) * w + t * SIGMA_LOW * w / w.norm()
        xs.append(x.reshape(1, K, K).float())
    return base, xs


def _certify(smoothed: SmoothedClassifier, x: torch.Tensor, seed: int):
    return smoothed.certify(x, n0=N0, n=N, alpha=ALPHA, batch_size=1000, generator=torch.Generator().manual_seed(seed))


def _lifted_matches(high: SmoothedClassifier, s: int) -> list[str]:
    base, xs = _linear_setup()
    low = SmoothedClassifier(base, 2, SIGMA_LOW, sound=False)
    problems = []
    for i, x in enumerate(xs):
        pa = float(st.norm.cdf(base.distance(x.double()) / SIGMA_LOW))
        sd = math.sqrt(N * pa * (1 - pa))
        c_low, c_high = _certify(low, x, seed=i), _certify(high, upsample(x, s), seed=1000 + i)
        for name, c in (("low", c_low), ("high", c_high)):
            # count = votes for the *selected* class: near the boundary the n0 selection may pick the other one
            p_sel = pa if c.selected == base.label(x.double()) else 1 - pa
            if abs(c.count - N * p_sel) > TOL_SD * sd + 1:
                problems.append(f"x{i} {name}: count {c.count} vs n p = {N * p_sel:.1f} (sd {sd:.1f})")
        if pa > 0.75:  # both certify w.p. > 1 - 1e-9 here: the labels must agree with the true one
            if not (c_low.label == c_high.label == base.label(x.double())):
                problems.append(f"x{i}: labels {c_low.label} (low) and {c_high.label} (high)")
            # radius: the lifted one is s sigma' Phi^-1(p_lower(count)); within sampling error of s * low radius
            lo, hi = (
                s
                * SIGMA_LOW
                * float(st.norm.ppf(stats.clopper_pearson_lower(int(min(N, max(0, c_low.count + d))), N, ALPHA)))
                for d in (-math.ceil(2 * TOL_SD * sd) - 1, math.ceil(2 * TOL_SD * sd) + 1)
            )
            if not lo <= c_high.radius <= hi:
                problems.append(
                    f"x{i}: radius {c_high.radius:.4f} outside [{lo:.4f}, {hi:.4f}] = s * low radius +- error"
                )
            exact = high.sigma * float(st.norm.ppf(c_high.p_lower))
            if not math.isclose(c_high.radius, exact, rel_tol=1e-9):
                problems.append(f"x{i}: radius {c_high.radius} is not sigma_lifted Phi^-1(p_lower) = {exact}")
    return problems


def test_lifted_certificate_is_the_low_resolution_one_with_s_times_the_radius():
    """On x = upsample(x_low) (so AvgPool(x) = x_low): both counts match n pA (pA exact, 4.5 sd), labels agree,
    the lifted certificate has sigma = s sigma' and a radius equal to s times the low one within sampling error
    (the interval maps count_low +- 9 sd through the radius formula: the difference of two independent
    counts has sd sqrt(2) sd, so 9 sd is more than 6 of its standard deviations)."""
    base, _ = _linear_setup()
    high = lift(SmoothedClassifier(base, 2, SIGMA_LOW, sound=False), factor=S)
    assert _lifted_matches(high, S) == []
    c = _certify(high, upsample(_linear_setup()[1][-1], S), seed=0)
    assert c.sigma == S * SIGMA_LOW


def test_lifted_certificate_check_catches_the_wrong_noise_factor():
    """Positive control: the pooled classifier smoothed at (s + 1) sigma' (a wrong lifting) has other pA's and is caught."""
    base, _ = _linear_setup()
    wrong = SmoothedClassifier(AvgPoolThen(base, S), 2, (S + 1) * SIGMA_LOW, sound=False)
    assert len(_lifted_matches(wrong, S)) >= 3


def test_render_resolution_figure_writes_a_png(tmp_path):
    image = torch.zeros(1, 28, 28)
    image[:, 8:20, 10:18] = 1.0
    out = render_resolution_figure(image, tmp_path / "fig12.png", sigma=0.5, factor=2, seed=0)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="image must be"):
        render_resolution_figure(torch.zeros(2, 1, 4, 4), tmp_path / "bad.png", sigma=0.5)
