"""smoothcert.core.sequential: stage grids and stopping rules on simulated binomial counts (no torch).

Validity is tested at the hardest null, pA equal to the threshold p*, where a valid rule
certifies with probability at most alpha. Each simulation draws R runs; the number of false
certifications is Binomial(R, q) with q <= alpha for a valid rule, so the tests allow up to
the binomial (1 - 1e-4) quantile at q = alpha: a valid rule fails a test with probability
< 1e-4, and the seeds are fixed.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as st

from smoothcert.core import sequential as sq
from smoothcert.core import stats as S

RUNS = 20_000


def allowance(runs: int, alpha: float) -> int:
    return int(st.binom.ppf(1 - 1e-4, runs, alpha))


def simulate(rule: str, p_true: float, p_star: float, schedule: sq.Schedule, seed: int, alpha: float) -> int:
    """Number of runs (of RUNS) certified, drawing each stage's new votes as Binomial(new, p_true)."""
    rng = np.random.default_rng(seed)
    count = np.zeros(RUNS, dtype=np.int64)
    active = np.ones(RUNS, dtype=bool)
    certified = np.zeros(RUNS, dtype=bool)
    drawn = 0
    for stage, size in enumerate(schedule.sizes):
        count[active] += rng.binomial(size - drawn, p_true, size=int(active.sum()))
        drawn = size
        idx = np.flatnonzero(active)
        if rule == "valid":
            decision, _, _ = sq.decision_step(count[idx], stage, schedule, p_star)
            certified[idx[decision == sq.CERTIFIED]] = True
            active[idx[decision != sq.CONTINUE]] = False
        else:
            hit = sq.naive_peeking_step(count[idx], stage, schedule, p_star, alpha)
            certified[idx[hit]] = True
            active[idx[hit]] = False
        if not active.any():
            break
    return int(certified.sum())


def test_schedule_grid_and_budgets():
    s = sq.make_schedule(n_max=100_000, alpha=0.001)
    assert s.sizes == (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 100_000)
    assert s.alpha == pytest.approx(0.001, rel=1e-12) and s.beta == pytest.approx(0.001, rel=1e-12)
    assert len(set(s.alphas)) == 1
    small = sq.make_schedule(n_max=50, alpha=0.01, beta=0.2)
    assert small.sizes == (50,) and small.alphas == (0.01,) and small.betas == (0.2,)
    odd = sq.make_schedule(n_max=1000, alpha=0.01, n_first=100, growth=3)
    assert odd.sizes == (100, 300, 900, 1000)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"n_max": 0, "alpha": 0.01}, "n_max must be >= 1, got 0"),
        ({"n_max": 100, "alpha": 1.5}, "alpha must be in (0, 1), got 1.5"),
        ({"n_max": 100, "alpha": 0.01, "beta": 0.0}, "beta must be in (0, 1), got 0.0"),
        ({"n_max": 100, "alpha": 0.01, "growth": 1.0}, "growth must be a finite number > 1, got 1.0"),
    ],
)
def test_schedule_validates(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        sq.make_schedule(**kwargs)
    assert fragment in str(info.value)


def test_stage_bounds_are_exact_clopper_pearson_at_the_stage_level():
    s = sq.make_schedule(n_max=1000, alpha=0.01, beta=0.05)
    decision, lower, upper = sq.decision_step([60, 30], 0, s, 0.75)
    assert lower[0] == pytest.approx(S.clopper_pearson_lower(60, 64, 0.01 / s.num_stages), rel=1e-12)
    assert upper[1] == pytest.approx(S.clopper_pearson_upper(30, 64, 0.05 / s.num_stages), rel=1e-12)
    assert decision.tolist() == [sq.CERTIFIED, sq.NOT_CERTIFIED]


@pytest.mark.slow
@pytest.mark.parametrize("p_star", [0.6, 0.9, 0.99])
def test_false_certification_rate_at_most_alpha_under_early_stopping(p_star):
    # hardest null pA = p*: a certificate is false; the rate must stay <= alpha = 0.05
    alpha = 0.05
    s = sq.make_schedule(n_max=4096, alpha=alpha)
    false = simulate("valid", p_star, p_star, s, seed=1, alpha=alpha)
    assert false <= allowance(RUNS, alpha), f"{false} false certifications of {RUNS}"


@pytest.mark.slow
def test_naive_peeking_fails_the_same_test():
    # negative control: fixed-alpha Clopper–Pearson re-checked at every stage, same simulation
    alpha = 0.05
    s = sq.make_schedule(n_max=4096, alpha=alpha)
    false = simulate("naive", 0.9, 0.9, s, seed=1, alpha=alpha)
    assert false > allowance(RUNS, alpha), f"naive peeking gave only {false} false certifications of {RUNS}"
    assert false / RUNS > 2 * alpha  # several looks each spend alpha


def test_power_pa_one_certified_at_first_stage_and_clear_losers_stop_early():
    s = sq.make_schedule(n_max=100_000, alpha=0.001)
    p_star = float(st.norm.cdf(0.5 / 0.5))  # r = 0.5 at sigma = 0.5
    decision, lower, _ = sq.decision_step([64], 0, s, p_star)
    assert decision.tolist() == [sq.CERTIFIED] and lower[0] == pytest.approx((0.001 / 12) ** (1 / 64))
    decision, _, upper = sq.decision_step([20], 0, s, p_star)
    assert decision.tolist() == [sq.NOT_CERTIFIED] and upper[0] < p_star


def test_power_near_threshold_matches_the_stage_level_probability():
    # pA a little above p*: simulated certification rate equals the rate implied by the rule,
    # computed independently by exact binomial sums for the first two stages
    s = sq.make_schedule(n_max=128, alpha=0.05, beta=0.05)
    p_star, p_true = 0.7, 0.85
    rng_rate = simulate("valid", p_true, p_star, s, seed=3, alpha=0.05) / RUNS
    # exact: certified at stage 1 if c1 >= k1; else continue unless futile; stage 2 on c1 + c2
    k = np.arange(65)
    lower1 = np.array([S.clopper_pearson_lower(int(c), 64, s.alphas[0]) for c in k])
    upper1 = np.array([S.clopper_pearson_upper(int(c), 64, s.betas[0]) for c in k])
    reach = sq.reach_probability(p_star, s)
    p1 = st.binom.pmf(k, 64, p_true)
    cert1 = lower1 > p_star
    cont = ~cert1 & ~(upper1 < reach)
    k2 = np.arange(129)
    lower2 = np.array([S.clopper_pearson_lower(int(c), 128, s.alphas[1]) for c in k2])
    exact = p1[cert1].sum()
    for c1 in k[cont]:
        c2 = np.arange(65)
        exact += p1[c1] * st.binom.pmf(c2, 64, p_true)[lower2[c1 + c2] > p_star].sum()
    assert rng_rate == pytest.approx(exact, abs=4 * np.sqrt(exact * (1 - exact) / RUNS))


def test_reach_probability_is_where_the_final_bound_crosses_p_star():
    s = sq.make_schedule(n_max=10_000, alpha=0.001)
    p_star = 0.8
    reach = sq.reach_probability(p_star, s)
    assert reach > p_star
    a = s.alphas[-1]
    assert st.beta.ppf(a, reach * 10_000, 10_000 - reach * 10_000 + 1) == pytest.approx(p_star, abs=1e-9)
    assert sq.reach_probability(0.9999999, s) > 1  # unreachable at this n_max


def test_max_radius_step_keeps_the_best_bound_and_stops_at_the_cap():
    s = sq.make_schedule(n_max=100_000, alpha=0.001)

    def radius_of(p):
        return np.atleast_1d(S.cohen_radius(p, sigma=0.5))

    stop, radius, lower, _ = sq.max_radius_step([64, 55], 0, s, [0.0, 0.75], radius_of=radius_of, radius_cap=0.5)
    assert stop.tolist() == [True, False]  # 64/64 gives radius 0.5 * Phi^-1(0.863) = 0.547 >= cap 0.5
    assert lower[1] == 0.75  # an earlier stage's better bound is kept (55/64 alone gives less)
    assert radius[1] == pytest.approx(0.5 * st.norm.ppf(0.75))
    stop, _, _, _ = sq.max_radius_step([12], 0, s, [0.0], radius_of=radius_of)
    assert stop.tolist() == [True]  # 12/64: even pA at its upper bound cannot certify anything


def test_module_imports_no_torch():
    code = "import sys, smoothcert.core.sequential; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
