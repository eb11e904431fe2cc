"""Percentile (median) smoothing (Chiang et al. 2020) and certified boxes.

Oracle: ``f(x) = w^T x`` under ``eps ~ N(0, sigma^2 I)`` has ``f(x + eps) ~ N(w^T x, sigma^2 ||w||^2)``,
so its smoothed p-th percentile is ``w^T x + sigma ||w|| Phi^-1(p)`` in closed form, and over the
ball ``||x' - x|| <= r`` it is smallest at ``x - r w/||w||`` and largest at ``x + r w/||w||``.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from scipy import stats as st

from smoothcert.core.errors import ConfigError
from smoothcert.core.percentile import (
    lower_order_index,
    percentile_bounds,
    shifted_percentiles,
    upper_order_index,
)
from smoothcert.smoothing.certificates import SmoothingWarning
from smoothcert.smoothing.noises import Gaussian
from smoothcert.smoothing.regression import SmoothedRegressor, box_iou, worst_case_iou

W = torch.tensor([3.0, -4.0, 0.0, 0.0])  # ||w|| = 5
X = torch.tensor([0.2, -0.1, 0.5, 0.3])  # off the 8-bit grid: the float-mode tests on it pass sound=False
SIGMA, RADIUS, ALPHA, N = 0.5, 0.1, 0.1, 100


class Linear(torch.nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(len(x), -1) @ self.w)[:, None]


def _true_extremes(p: float) -> tuple[float, float]:
    """The smallest and largest smoothed p-th percentile over the ball of radius RADIUS around X."""
    norm = float(W.norm())
    centre = float(W @ X) + SIGMA * norm * float(st.norm.ppf(p))
    return centre - RADIUS * norm, centre + RADIUS * norm


# ------------------------------------------------------------------------------ reference values


def test_shifted_percentiles_are_closed_form():
    lo, hi = shifted_percentiles(0.5, 0.25, sigma=0.5)
    assert lo == pytest.approx(st.norm.cdf(-0.5), rel=1e-12)
    assert hi == pytest.approx(st.norm.cdf(0.5), rel=1e-12)


@pytest.mark.parametrize(("n", "p", "a"), [(100, 0.4, 0.05), (37, 0.2, 0.01), (1000, 0.62, 0.0005), (5, 0.5, 0.05)])
def test_order_indices_match_a_brute_force_search(n, p, a):
    cdf = st.binom.cdf(np.arange(n + 1), n, p)
    lows = [k + 1 for k in range(n + 1) if cdf[k] <= a]
    assert lower_order_index(n, p, a) == (max(lows) if lows else 0)
    ups = [k + 1 for k in range(n + 1) if cdf[k] >= 1 - a]
    assert upper_order_index(n, p, a) == min(min(ups) if ups else n + 1, n + 1)


def test_too_few_samples_give_infinite_bounds():
    b = percentile_bounds(np.arange(5.0), radius=0.5, sigma=0.25, alpha=0.01)
    assert b.lower[0] == -np.inf and b.upper[0] == np.inf and b.estimate[0] == 2.0


@pytest.mark.parametrize(("bad", "match"), [({"radius": -0.1}, "radius"), ({"percentile": 1.0}, "percentile")])
def test_bad_settings_are_refused_by_name(bad, match):
    reg = SmoothedRegressor(Linear(W), SIGMA)
    kw = {"n": 10, "alpha": 0.1, "radius": 0.1, "batch_size": 10, **bad}
    with pytest.raises(ConfigError, match=match):
        reg.certify(X, **kw)


def test_regressor_refuses_noise_without_the_percentile_theorem():
    with pytest.raises(ValueError, match="norm"):
        SmoothedRegressor(Linear(W), SIGMA, norm="l3")


def test_certificate_is_frozen_and_holds_its_settings():
    reg = SmoothedRegressor(Linear(W), SIGMA, sound=False)
    c = reg.certify(X, n=200, alpha=0.01, radius=0.1, batch_size=64, generator=torch.Generator().manual_seed(0))
    assert c.estimate.shape == c.lower.shape == c.upper.shape == (1,)
    assert c.lower[0] <= c.estimate[0] <= c.upper[0] and c.width[0] > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.radius = 1.0  # type: ignore[misc]


def test_samples_beyond_one_batch_are_all_distinct_draws():
    """n > batch_size spans several engine blocks; each block's outputs must be kept, not the buffer they share."""
    reg = SmoothedRegressor(Linear(W), SIGMA, sound=False)
    y = reg.samples(X, n=10, batch_size=3, generator=torch.Generator().manual_seed(0))[:, 0]
    assert len(np.unique(y)) == 10
    # the same stream as one draw of 3, 3, 3, 1 noise rows from the generator
    g = torch.Generator().manual_seed(0)
    rows = torch.cat([Gaussian(SIGMA).sample_(torch.empty(k, 4), g) for k in (3, 3, 3, 1)])
    assert np.allclose(y, ((X + rows) @ W).numpy(), atol=1e-5)


# ------------------------------------------------------------------------------ coverage


RUNS = 400
# failing runs are stochastically below Binomial(RUNS, alpha); above its 0.999 quantile is a false alarm w.p. <= 1e-3
LIMIT = int(st.binom.ppf(0.999, RUNS, ALPHA))


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_interval_contains_the_smoothed_percentile_over_the_ball(p):
    """Failure rate <= alpha: the interval misses the worst-case percentile at x -/+ r w/||w|| in <= alpha of runs."""
    reg = SmoothedRegressor(Linear(W), SIGMA, sound=False)
    low, high = _true_extremes(p)
    fails = 0
    for seed in range(RUNS):
        c = reg.certify(
            X,
            n=N,
            alpha=ALPHA,
            radius=RADIUS,
            percentile=p,
            batch_size=N,
            generator=torch.Generator().manual_seed(seed),
        )
        fails += int(c.lower[0] > low or c.upper[0] < high)
    assert fails <= LIMIT, f"{fails} of {RUNS} intervals missed the smoothed percentile (limit {LIMIT})"


def test_joint_intervals_of_two_outputs_hold_together():
    """alpha is split over the output dimensions: both intervals hold at once in >= 1 - alpha of runs."""
    w2 = torch.stack([W, torch.tensor([1.0, 2.0, -2.0, 0.0])], dim=1)  # ||w_2|| = 3

    class Two(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(len(x), -1) @ w2

    reg = SmoothedRegressor(Two(), SIGMA, sound=False)
    centre = (X @ w2).numpy()
    norms = w2.norm(dim=0).numpy()
    fails = 0
    for seed in range(RUNS):
        c = reg.certify(X, n=N, alpha=ALPHA, radius=RADIUS, batch_size=N, generator=torch.Generator().manual_seed(seed))
        fails += int(np.any(c.lower > centre - RADIUS * norms) or np.any(c.upper < centre + RADIUS * norms))
    assert fails <= LIMIT


def test_exact_failure_probability_is_at_most_alpha_and_narrowing_exceeds_it():
    """The exact miss probability of the chosen order statistics is <= alpha; one step narrower it is > alpha."""
    for n, alpha, shift in itertools.product([50, 100, 400], [0.1, 0.01], [0.05, 0.2, 0.5]):
        p_low, p_high = st.norm.cdf(-shift), st.norm.cdf(shift)
        lo, hi = lower_order_index(n, p_low, alpha / 2), upper_order_index(n, p_high, alpha / 2)
        miss = st.binom.cdf(lo - 1, n, p_low) + st.binom.sf(hi - 1, n, p_high)
        narrow = st.binom.cdf(lo, n, p_low) + st.binom.sf(hi - 2, n, p_high)
        assert miss <= alpha < narrow, (n, alpha, shift)


def test_positive_control_an_interval_narrowed_by_one_order_statistic_fails():
    """Narrowing both bounds by one order statistic raises the miss rate to about 0.13 (exact) > alpha = 0.1.

    20000 runs of n = 100 draws each come from one engine call (the draws are i.i.d.); the check
    that passes the sound interval (its count stays below the 0.999 quantile of Binomial(runs,
    alpha)) fails the narrowed one.
    """
    runs = 20_000
    reg = SmoothedRegressor(Linear(W), SIGMA, sound=False)
    y = reg.samples(X, n=runs * N, batch_size=10_000, generator=torch.Generator().manual_seed(7))[:, 0]
    ordered = np.sort(y.reshape(runs, N), axis=1)
    low, high = _true_extremes(0.5)
    limit = st.binom.ppf(0.999, runs, ALPHA)
    counts = {}
    for widen in (0, -1):
        b = percentile_bounds(ordered[0], radius=RADIUS, sigma=SIGMA, alpha=ALPHA, widen=widen)
        lo_i, hi_i = b.lower_index, b.upper_index  # widen=-1: one order statistic inward on each side
        counts[widen] = int(np.sum((ordered[:, lo_i - 1] > low) | (ordered[:, hi_i - 1] < high)))
    assert counts[0] <= limit < counts[-1], counts


# ------------------------------------------------------------------------------ boxes


def test_box_iou_reference_values():
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert box_iou([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([1, 1, 1, 1], [1, 1, 1, 1]) == 0.0  # empty boxes


def _brute_min(lo, hi, ref, steps=13):
    axes = [np.linspace(lo[j], hi[j], steps) for j in range(4)]
    grid = np.array(list(itertools.product(*axes)))
    return float(np.min(box_iou(grid, np.asarray(ref)[None, :])))


def test_worst_case_iou_is_the_exact_minimum():
    """Never above a dense grid's minimum (it is a minimum over a subset) and never below any box's IoU."""
    rng = np.random.default_rng(3)
    for _ in range(60):
        ref = np.sort(rng.uniform(0, 1, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]  # x0, y0, x1, y1
        centre = ref + rng.normal(0, 0.05, 4)
        half = rng.uniform(0, 0.08, 4)
        lo, hi = centre - half, centre + half
        exact = worst_case_iou(lo, hi, ref)
        assert exact <= _brute_min(lo, hi, ref) + 1e-12
        samples = rng.uniform(lo, hi, (2000, 4))
        assert exact <= float(np.min(box_iou(samples, ref[None, :]))) + 1e-12
        assert exact >= 0.0


def test_worst_case_iou_reference_case_and_degenerate_intervals():
    # reference (0,0,1,1); every coordinate may move 0.1: the worst box grows outward on all
    # sides or shrinks inward; shrinking to (0.1,0.1,0.9,0.9) gives 0.64, growing to (-0.1,-0.1,1.1,1.1)
    # gives 1/1.44 = 0.694; mixing (shift) gives (0.1,0.1,1.1,1.1): 0.81/1.19 = 0.6807
    lo, hi = np.array([-0.1, -0.1, 0.9, 0.9]), np.array([0.1, 0.1, 1.1, 1.1])
    assert worst_case_iou(lo, hi, [0, 0, 1, 1]) == pytest.approx(0.64)
    assert worst_case_iou([0, 0, 0.5, 0.5], [0.6, 0.6, 1, 1], [0, 0, 1, 1]) == 0.0  # x0 may pass x1: empty box
    assert worst_case_iou([-np.inf, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]) == 0.0
    with pytest.raises(ValueError, match="lower"):
        worst_case_iou([0.2, 0, 1, 1], [0.1, 0, 1, 1], [0, 0, 1, 1])


def test_positive_control_a_search_of_two_corners_overestimates():
    """Only the all-lower and all-upper boxes (a planted shortcut) miss the shrunk worst case above."""
    lo, hi, ref = np.array([-0.1, -0.1, 0.9, 0.9]), np.array([0.1, 0.1, 1.1, 1.1]), np.array([0, 0, 1, 1.0])
    shortcut = min(float(box_iou(lo, ref)), float(box_iou(hi, ref)))
    assert shortcut > _brute_min(lo, hi, ref) + 0.03  # 0.681 against the true 0.640
    assert worst_case_iou(lo, hi, ref) == pytest.approx(_brute_min(lo, hi, ref))


# ------------------------------------------------------------------------------ sound mode

X_GRID = torch.round(X * 255) / 255


class RecordingLinear(Linear):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__(w)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().to("cpu", torch.float64).clone())
        return super().forward(x)


def test_sound_mode_feeds_the_model_only_grid_points_and_records_its_mode():
    model = RecordingLinear(W)
    reg = SmoothedRegressor(model, SIGMA, sound=True, grid=255)
    c = reg.certify(
        X_GRID, n=100, alpha=ALPHA, radius=RADIUS, batch_size=32, generator=torch.Generator().manual_seed(0)
    )
    seen = torch.cat(model.seen)
    assert len(seen) == 100 and float((255 * seen - torch.round(255 * seen)).abs().max()) < 1e-4
    assert c.sound and c.grid == 255 and 0 < c.tv_bound == reg.tv_bound(4) < 1e-14
    # float-mode control: off-grid inputs, nothing accounted
    model.seen.clear()
    f = SmoothedRegressor(model, SIGMA, sound=False).certify(
        X_GRID, n=100, alpha=ALPHA, radius=RADIUS, batch_size=32, generator=torch.Generator().manual_seed(0)
    )
    seen = torch.cat(model.seen)
    assert float((255 * seen - torch.round(255 * seen)).abs().max()) > 0.1
    assert not f.sound and f.grid is None and f.tv_bound == 0.0


def test_the_residual_total_variation_moves_the_order_statistics_by_the_predicted_amount(monkeypatch):
    """With tv_bound planted at t, each side's order statistic is chosen at (alpha - n t) / (2 D):
    here alpha - n t = alpha / 100, which moves both bounds outward."""
    n, D = 200, 1
    t = ALPHA * 0.99 / n
    reg = SmoothedRegressor(Linear(W), SIGMA, sound=True)
    gen = torch.Generator
    before = reg.certify(X_GRID, n=n, alpha=ALPHA, radius=RADIUS, batch_size=n, generator=gen().manual_seed(2))
    monkeypatch.setattr(reg, "tv_bound", lambda dim: t)
    after = reg.certify(X_GRID, n=n, alpha=ALPHA, radius=RADIUS, batch_size=n, generator=gen().manual_seed(2))
    p_low, p_high = shifted_percentiles(0.5, RADIUS, sigma=SIGMA)
    level = ALPHA - n * t
    assert after.tv_bound == t
    assert after.lower_index == lower_order_index(n, p_low, level / (2 * D)) < before.lower_index
    assert after.upper_index == upper_order_index(n, p_high, level / (2 * D)) > before.upper_index
    assert before.lower_index == lower_order_index(n, p_low, (ALPHA - n * before.tv_bound) / (2 * D))
    assert after.lower[0] <= before.lower[0] and after.upper[0] >= before.upper[0]
    assert np.array_equal(after.estimate, before.estimate)  # the same draws


def test_auto_certifies_an_off_grid_input_in_float_mode_and_an_on_grid_one_in_sound_mode():
    reg = SmoothedRegressor(Linear(W), SIGMA)
    assert reg.sound == "auto"
    kw = {"n": 100, "alpha": ALPHA, "radius": RADIUS, "batch_size": 100}
    with pytest.warns(SmoothingWarning, match="off the grid"):
        off = reg.certify(X, **kw, generator=torch.Generator().manual_seed(0))
    on = reg.certify(X_GRID, **kw, generator=torch.Generator().manual_seed(0))
    assert (off.sound, off.grid, off.tv_bound, off.grid_offset) == (False, None, 0.0, 0.0)
    assert (on.sound, on.grid, on.grid_offset) == (True, 255, 0.0) and on.tv_bound == reg.tv_bound(4) > 0


def _index_jump(n: int, level: float) -> float:
    """The radius r* (to 1e-15) at which the lower order statistic chosen for the median at ``level``
    moves down by one: below r* it is k, from r* on k - 1 (the shifted percentile Phi(-r/sigma) falls)."""
    y = np.zeros((n, 1))

    def index(r: float) -> int:
        return percentile_bounds(y, radius=r, sigma=SIGMA, alpha=level, percentile=0.5).lower_index

    lo, hi = 0.05, 0.15
    k = index(lo)
    assert index(hi) < k
    while hi - lo > 1e-15:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if index(mid) == k else (lo, mid)
    return hi


def test_a_sound_interval_covers_the_ball_of_radius_plus_grid_offset():
    """An input off its grid point by 0.5e-4 / q per coordinate is certified about round_q(x): the
    ball of r about x lies in the ball of r + o about round_q(x) (o = ||x - round_q(x)|| = 2 * 0.5e-4
    / 255 for d = 4), so the percentiles are shifted for r + o. r is put just below the radius r* at
    which the lower order statistic steps down, with r + o above it: the certificate takes the
    outer order statistic, which the radius r alone (no offset) would not."""
    n = 200
    reg = SmoothedRegressor(Linear(W.double()), SIGMA, sound=True)  # float64 inputs: the offset is represented
    level = ALPHA - n * reg.tv_bound(4)
    x_grid = torch.round(X.double() * 255) / 255  # fl64(i / 255): offset 0
    x = x_grid + 0.5e-4 / 255
    expected = 2 * 0.5e-4 / 255
    r = _index_jump(n, level) - expected / 2
    gen = torch.Generator
    c = reg.certify(x, n=n, alpha=ALPHA, radius=r, batch_size=n, generator=gen().manual_seed(4))
    assert c.sound and c.radius == r and expected <= c.grid_offset <= expected * (1 + 1e-6)
    y = reg.samples(x, n=n, batch_size=n, generator=gen().manual_seed(4))
    shifted = percentile_bounds(y, radius=r + c.grid_offset, sigma=SIGMA, alpha=level, percentile=0.5)
    plain = percentile_bounds(y, radius=r, sigma=SIGMA, alpha=level, percentile=0.5)
    assert (c.lower_index, c.upper_index) == (shifted.lower_index, shifted.upper_index)
    assert c.lower_index == plain.lower_index - 1 and c.lower[0] <= plain.lower[0]  # the offset widened it
    exact = reg.certify(x_grid, n=n, alpha=ALPHA, radius=r, batch_size=n, generator=gen().manual_seed(4))
    assert exact.grid_offset == 0.0 and exact.lower_index == plain.lower_index  # control: no offset, no shift
