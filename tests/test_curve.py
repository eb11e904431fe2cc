"""smoothcert.smoothing.curve: curve mode through the engine, on oracles whose pA is known exactly.

Oracle: f(z) = 1[z_0 > -m], a half-space along the first coordinate. At x = 0 the smoothed
classifier's pA is the noise's one-coordinate CDF at m (Gaussian Phi(m / sigma), Laplace
1 - exp(-m / b) / 2, uniform 1/2 + m / (2 lam)), and g(delta) = 1 exactly while delta_0 > -m, so
the smoothed classifier is robust up to distance m in every norm and the radius formula at
the exact pA, R(pA), is at most m. A certified radius above R(pA) needs p_lower > pA, which a
valid run does with probability at most alpha: over R seeded inputs the count must stay
within the binomial (1 - 1e-4) quantile at rate alpha; the same radii inflated by 10% must
exceed it (positive control).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats as st

from smoothcert import ABSTAIN, SmoothedClassifier
from smoothcert.core import stats as S
from smoothcert.smoothing.curve import CurveCertificate, certify_curve, certify_curve_batch, default_radii

SIGMA = 0.5
SHAPE = (4,)
PAIRS = [
    ("gaussian", "l2"),
    ("gaussian", "l1"),
    ("gaussian", "linf"),
    ("laplace", "l1"),
    ("uniform", "l1"),
    ("uniform", "linf"),
]


class HalfSpace(torch.nn.Module):
    def __init__(self, m: float) -> None:
        super().__init__()
        self.m = m

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = z.flatten(1)[:, 0].double() + self.m
        return torch.stack([-s, s], dim=1)


def exact_pa(noise: str, m: float) -> float:
    if noise == "gaussian":
        return float(st.norm.cdf(m / SIGMA))
    if noise == "laplace":
        return 1 - 0.5 * np.exp(-m / (SIGMA / np.sqrt(2)))
    return 0.5 + m / (2 * np.sqrt(3) * SIGMA)


MARGIN = {"gaussian": 0.42, "laplace": 0.324, "uniform": 0.52}  # pA about 0.8 for each noise


def smoothed(noise: str, norm: str) -> SmoothedClassifier:
    # float mode: the half-space's pA is known in closed form for the continuous noise
    return SmoothedClassifier(
        HalfSpace(MARGIN[noise]), 2, SIGMA, noise=noise, norm=norm, input_shape=SHAPE, sound=False
    )


def gens(k: int, base: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(k)]


@pytest.mark.parametrize(("noise", "norm"), PAIRS)
def test_certified_radius_at_most_the_true_radius_in_every_pair(noise, norm):
    sc = smoothed(noise, norm)
    m, pa = MARGIN[noise], exact_pa(noise, MARGIN[noise])
    true_r = float(sc.radius_of(np.array([pa]), dim=4)[0])
    assert true_r <= m + 1e-12
    runs, alpha = 120, 0.05
    certs = certify_curve_batch(
        sc,
        torch.zeros(runs, *SHAPE),
        alpha=alpha,
        n_max=10_000,
        batch_size=50_000,
        labels=[1] * runs,
        generator=gens(runs),
        radii=[0.0, true_r, 2 * true_r],  # a grid radius exactly at the truth
    )
    allowed = st.binom.ppf(1 - 1e-4, runs, alpha)
    assert sum(c.radius > true_r for c in certs) <= allowed
    # positive control: radii inflated by 10% (a planted bug) fail the same count
    assert sum(1.10 * c.radius > true_r for c in certs) > allowed
    assert all(c.decisions[2] != "certified" for c in certs)
    # at large n_max the radius comes close to the truth from below: within 5% (the bound's deficit is under 3%)
    big = certify_curve(
        sc,
        torch.zeros(SHAPE),
        alpha=0.001,
        n_max=100_000,
        batch_size=50_000,
        label=1,
        radii=[0.0, true_r],
        radius_tol=0.0,
        acr_tol=0.0,
        generator=torch.Generator().manual_seed(5),
    )
    assert 0.95 * true_r < big.radius <= true_r and big.reason == "n_max"


def test_certificate_fields_and_decisions():
    sc = smoothed("gaussian", "l2")
    c = certify_curve(
        sc,
        torch.zeros(SHAPE),
        alpha=0.001,
        n_max=100_000,
        batch_size=10_000,
        generator=torch.Generator().manual_seed(1),
    )
    assert isinstance(c, CurveCertificate)
    assert c.radii == (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)  # cap 2 sigma
    assert c.label == 1 == c.selected and not c.evaluation and c.n0 == 100 and c.n_used == 100 + c.n
    assert c.reason in ("cap", "decided", "tolerance", "n_max") and c.method == "union"
    assert c.p_lower < exact_pa("gaussian", 0.42) < c.p_upper
    assert c.radius == pytest.approx(SIGMA * st.norm.ppf(c.p_lower), rel=1e-12)
    for r, d in zip(c.radii, c.decisions, strict=True):
        assert (d == "certified") == c.certified_at(r)
        assert d != "not_certified" or c.p_upper <= sc.noise.threshold(r, norm="l2") or r == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.radius = 2.0  # type: ignore[misc]
    # a clear loser abstains after few draws; evaluation mode draws no selection samples
    lose = certify_curve(
        sc,
        torch.zeros(SHAPE),
        alpha=0.001,
        n_max=100_000,
        batch_size=10_000,
        label=0,
        generator=torch.Generator().manual_seed(2),
    )
    assert lose.label == ABSTAIN and lose.radius == 0.0 and lose.evaluation and lose.n0 == 0
    # no radius is certified; radius 0 may be left undecided when the tolerance rule stops first
    assert lose.n_used == lose.n <= 100 and "certified" not in lose.decisions
    assert set(lose.decisions[1:]) == {"not_certified"}


def test_default_grid_for_other_norms_is_the_radius_at_phi_2():
    sc = smoothed("gaussian", "linf")
    assert default_radii(sc, 4)[-1] == pytest.approx(2 * SIGMA / 2, rel=1e-12)  # 2 sigma / sqrt(d)
    assert default_radii(smoothed("laplace", "l1"), 4, 0.8)[-1] == 0.8


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"alpha": 0.0}, "alpha must be in (0, 1), got 0.0"),
        ({"n_max": 0}, "n_max must be >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"radii": [0.0, 0.5, 0.25]}, "radii must be finite, >= 0 and strictly increasing, got [0.0, 0.5, 0.25]"),
        ({"radius_cap": -1.0}, "radius_cap must be a finite number >= 0, got -1.0"),
        ({"radius_cap": 1.0, "radii": [0.0, 1.0]}, "give radii or radius_cap, not both"),
        ({"method": "bogus"}, "method must be one of betabinomial, union, got 'bogus'"),
        ({"radius_tol": float("nan")}, "radius_tol must be a finite number >= 0, got nan"),
        ({"label": 2}, "label must be < num_classes=2, got 2"),
    ],
)
def test_refuses_bad_arguments_naming_the_value(kwargs, fragment):
    args = {"alpha": 0.01, "n_max": 1000, "batch_size": 100} | kwargs
    with pytest.raises(ValueError) as info:
        certify_curve(smoothed("gaussian", "l2"), torch.zeros(SHAPE), **args)
    assert fragment in str(info.value)


@pytest.mark.parametrize("labels", [None, [1, 0, 1, 1]])
def test_batch_equals_one_by_one_with_per_input_generators(labels):
    sc = SmoothedClassifier(HalfSpace(MARGIN["gaussian"]), 2, SIGMA, input_shape=SHAPE, sound=False)
    xs = torch.tensor([[0.0, 0, 0, 0], [0.1, 0, 0, 0], [-0.3, 0, 0, 0], [0.6, 0, 0, 0]])
    kw = {"alpha": 0.001, "n_max": 50_000, "batch_size": 3000}
    batch = certify_curve_batch(sc, xs, labels=labels, generator=gens(4, 7), **kw)
    one = [
        certify_curve(sc, xs[i], label=None if labels is None else labels[i], generator=gens(4, 7)[i], **kw)
        for i in range(4)
    ]
    assert batch == one
    assert len({c.n for c in batch}) > 1  # the inputs stopped at different looks


class _Residual(SmoothedClassifier):
    def tv_bound(self, dim: int) -> float:
        return 0.01


def test_sound_mode_residual_moves_both_bounds():
    sc = _Residual(HalfSpace(0.42), 2, SIGMA, input_shape=SHAPE)
    c = certify_curve(
        sc,
        torch.zeros(SHAPE),
        alpha=0.01,
        n_max=1000,
        batch_size=1000,
        label=1,
        n_first=1000,
        generator=torch.Generator().manual_seed(3),
    )
    assert c.n == 1000 and c.tv_bound == 0.01
    assert c.p_lower == pytest.approx(S.clopper_pearson_lower(c.count, 1000, 0.01) - 0.01, abs=1e-15)
    assert c.p_upper == pytest.approx(S.clopper_pearson_upper(c.count, 1000, 0.01) + 0.01, abs=1e-15)
    assert c.radius == pytest.approx(SIGMA * st.norm.ppf(c.p_lower), rel=1e-12)


def test_empty_batch():
    assert (
        certify_curve_batch(smoothed("gaussian", "l2"), torch.zeros(0, *SHAPE), alpha=0.01, n_max=100, batch_size=10)
        == []
    )
