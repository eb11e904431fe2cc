"""smoothcert.core.confseq: time-uniform bounds and the curve stopping rule on simulated counts (no torch).

Validity: 10^5 simulated examples run the full curve stopping rule (looks to n_max, grid
decisions, tolerance rules) with pA drawn from a realistic distribution, and separately at
the worst case pA exactly at a grid threshold. A reported radius above the true radius R(pA)
means the final lower bound exceeds pA; a valid sequence does that with probability at most
alpha for every example, so the count of such examples is stochastically below
Binomial(m, alpha) and the tests allow its (1 - 1e-4) quantile: a valid construction fails
with probability < 1e-4 (seeds fixed). alpha = 0.05 gives the test power: the positive control
(fixed-alpha Clopper–Pearson at every look, ignoring optional stopping) exceeds the same
allowance.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import special as sp
from scipy import stats as st

from smoothcert.core import confseq as cs
from smoothcert.core import stats as S

SIGMA = 0.5
GRID = np.arange(9) * 0.125
THR = st.norm.cdf(GRID / SIGMA)
M = 100_000


def radius_of(p):
    return SIGMA * st.norm.ppf(np.clip(np.asarray(p, dtype=np.float64), 0.5, 1.0))


def allowance(m: int, alpha: float) -> int:
    return int(st.binom.ppf(1 - 1e-4, m, alpha))


def realistic_pa(m: int, rng: np.random.Generator) -> np.ndarray:
    """Like the demo's sigma = 0.5 model: 20% wrong (pA < 1/2), 25% radius uniform on [0, 2 sigma],
    25% pA in (0.98, 1 - 1e-5), 30% pA = 1."""
    u = rng.random(m)
    pa = np.ones(m)
    low, mid, high = u < 0.2, (u >= 0.2) & (u < 0.45), (u >= 0.45) & (u < 0.7)
    pa[low] = 0.5 * rng.random(low.sum())
    pa[mid] = st.norm.cdf(2.0 * rng.random(mid.sum()))
    pa[high] = 1 - 10 ** rng.uniform(-5, -1.7, high.sum())
    return pa


def simulate(pa, seq, *, seed, naive_alpha=None, radius_tol=0.05, acr_tol=0.06):
    """Run the curve stopping rule on Binomial counts; return (final lower bounds, draws used)."""
    rng = np.random.default_rng(seed)
    m = len(pa)
    count = np.zeros(m)
    lower, upper = np.zeros(m), np.ones(m)
    used = np.zeros(m)
    active = np.arange(m)
    drawn = 0
    for look, size in enumerate(seq.sizes):
        count[active] += rng.binomial(size - drawn, pa[active])
        drawn = size
        if naive_alpha is None:
            lo, up = seq.bounds(count[active], look)
        else:  # the invalid control: fixed-alpha Clopper–Pearson at every look
            lo = np.asarray(S.clopper_pearson_lower(count[active], size, naive_alpha))
            up = np.asarray(S.clopper_pearson_upper(count[active], size, naive_alpha))
        lower[active] = np.maximum(lower[active], lo)
        upper[active] = np.minimum(upper[active], up)
        stop, _, _ = cs.curve_step(
            lower[active],
            upper[active],
            GRID,
            THR,
            radius_of=radius_of,
            radius_tol=radius_tol,
            acr_tol=acr_tol,
            last=look == len(seq.sizes) - 1,
        )
        used[active[stop]] = size
        active = active[~stop]
        if not len(active):
            break
    return lower, used


def false_radii(pa, lower) -> int:
    # reported radius R(lower) above the true radius R(pA); where pA <= 1/2 the true radius is 0
    # and any certificate (lower > 1/2) is false
    return int(np.sum((lower > pa) & (lower > 0.5)))


def test_look_sizes_and_validation():
    assert cs.look_sizes(n_max=1000, n_first=100, growth=2) == (100, 200, 400, 800, 1000)
    assert cs.look_sizes(n_max=50, n_first=64) == (50,)
    seq = cs.make_confseq(alpha=0.01, n_max=1000, method="union", n_first=100, growth=2)
    assert seq.n_max == 1000 and seq.beta == 0.01
    default = cs.make_confseq(alpha=0.001, n_max=100_000)
    assert default.method == "union" and len(default.sizes) == 38 and default.sizes[:3] == (32, 40, 50)
    for kwargs, fragment in [
        ({"alpha": 0.0, "n_max": 10}, "alpha must be in (0, 1), got 0.0"),
        ({"alpha": 0.1, "n_max": 0}, "n_max must be >= 1, got 0"),
        ({"alpha": 0.1, "n_max": 10, "method": "bogus"}, "method must be one of betabinomial, union, got 'bogus'"),
        ({"alpha": 0.1, "n_max": 10, "growth": 1.0}, "growth must be a finite number > 1, got 1.0"),
        ({"alpha": 0.1, "n_max": 10, "prior": (0.0, 1.0)}, "prior must be two finite numbers > 0, got (0.0, 1.0)"),
    ]:
        with pytest.raises(ValueError) as info:
            cs.make_confseq(**kwargs)
        assert fragment in str(info.value)
    with pytest.raises(ValueError, match=r"count must be in \[0, 100\], got 101"):
        seq.bounds([101], 0)
    with pytest.raises(ValueError, match=r"look must be in \[0, 5\), got 5"):
        seq.bounds([1], 5)


def test_union_bounds_are_clopper_pearson_at_the_split_level():
    seq = cs.make_confseq(alpha=0.01, beta=0.2, n_max=1000, method="union", n_first=100, growth=2)
    lo, up = seq.bounds([0, 57, 100, 200], 1)
    assert np.allclose(lo, S.clopper_pearson_lower(np.array([0, 57, 100, 200]), 200, 0.01 / 5), rtol=0, atol=1e-15)
    assert np.allclose(up, S.clopper_pearson_upper(np.array([0, 57, 100, 200]), 200, 0.2 / 5), rtol=0, atol=1e-15)


def test_betabinomial_bound_is_where_the_mixture_crosses_one_over_alpha():
    seq = cs.make_confseq(alpha=0.001, n_max=1000, method="betabinomial")
    n = 1000.0
    # all successes, uniform prior: M_n(p) = 1 / ((n + 1) p^n), so L = (alpha / (n + 1))^(1/n)
    assert seq.lower([n], n)[0] == pytest.approx((0.001 / (n + 1)) ** (1 / n), rel=1e-12)
    assert seq.upper([n], n)[0] == 1.0 and seq.lower([0], n)[0] == 0.0
    c = 700.0
    lo, up = seq.lower([c], n)[0], seq.upper([c], n)[0]
    for p in (lo, up):
        log_m = sp.betaln(1 + c, 1 + n - c) - sp.xlogy(c, p) - sp.xlog1py(n - c, -p)
        assert log_m == pytest.approx(np.log(1000.0), abs=1e-9)
    assert lo < c / n < up


def test_curve_step_decisions_and_reasons():
    lo = np.array([0.99, 0.70, 0.10, 0.70, 0.690])
    up = np.array([1.00, 0.72, 0.20, 0.99, 0.6925])
    stop, reason, dec = cs.curve_step(lo, up, GRID, THR, radius_of=radius_of, radius_tol=0.05, acr_tol=0.06, last=False)
    assert list(reason) == ["cap", "decided", "decided", "", "tolerance"]
    assert list(stop) == [True, True, True, False, True]
    assert list(dec[1]) == [1, 1, 1, -1, -1, -1, -1, -1, -1]  # R(0.70) = 0.262 .. R(0.72) = 0.291
    assert list(dec[4][:4]) == [1, 1, 0, -1]  # t(0.25) = 0.6915 lies inside: open, settled by tolerance
    # at the last look everything stops; an input straddling a grid radius has it open
    stop, reason, dec = cs.curve_step(
        [0.68], [0.70], GRID, THR, radius_of=radius_of, radius_tol=0.0, acr_tol=0.0, last=True
    )
    assert stop[0] and reason[0] == "n_max" and dec[0][2] == 0
    # an input straddling a grid radius whose upper radius is more than radius_tol above it is not settled
    stop, _, _ = cs.curve_step(
        [0.68], [0.72], GRID, THR, radius_of=radius_of, radius_tol=0.01, acr_tol=None, last=False
    )
    assert not stop[0]


# the beta-binomial bounds need a bisection per look: 10^4 examples keep that test at a few seconds
SIZES = [("union", M), ("betabinomial", M // 10)]


@pytest.mark.parametrize(("method", "m"), SIZES)
def test_reported_radius_above_true_radius_at_most_alpha(method, m):
    alpha = 0.05
    seq = cs.make_confseq(alpha=alpha, n_max=20_000, method=method)
    pa = realistic_pa(m, np.random.default_rng(11))
    lower, used = simulate(pa, seq, seed=12)
    assert false_radii(pa, lower) <= allowance(m, alpha)
    assert used.max() <= 20_000 and used.min() >= seq.sizes[0]


@pytest.mark.parametrize(("method", "m"), SIZES)
def test_worst_case_pa_at_a_threshold_at_most_alpha_and_naive_peeking_fails(method, m):
    alpha, m = 0.05, m // 2  # every example runs to n_max here
    seq = cs.make_confseq(alpha=alpha, n_max=5_000, method=method)
    pa = np.full(m, THR[3])  # pA exactly at the threshold of r = 0.375: any radius > 0.375 is false
    lower, _ = simulate(pa, seq, seed=13, radius_tol=0.0, acr_tol=0.0)
    assert false_radii(pa, lower) <= allowance(m, alpha)
    naive, _ = simulate(pa, seq, seed=13, naive_alpha=alpha, radius_tol=0.0, acr_tol=0.0)
    assert false_radii(pa, naive) > 2 * allowance(m, alpha)


def test_module_imports_no_torch():
    code = "import sys, smoothcert.core.confseq; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
