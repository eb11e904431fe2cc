"""Certified segmentation (Fischer et al. 2021): per-pixel binomial tests, Holm's correction, SmoothedSegmenter.

The statistical test uses an oracle segmenter whose pixel ``i`` takes class 1 iff
``x_i + eps_i > 0``, so that its class probabilities are known in closed form:
``P(class 1) = Phi(x_i / sigma)``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats as st

from smoothcert.core.errors import ConfigError
from smoothcert.core.segmentation import (
    binomial_sf_pvalues,
    certify_pixels,
    check_tau,
    holm_reject,
    segmentation_radius,
)
from smoothcert.smoothing.certificates import ABSTAIN, SmoothingWarning
from smoothcert.smoothing.segmentation import SmoothedSegmenter


class ThresholdSegmenter(torch.nn.Module):
    """Scores ``(-x, x)`` per pixel: class 1 iff the noisy pixel is positive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, x], dim=1)


SIGMA = 0.5


def _pixels(probabilities: np.ndarray) -> torch.Tensor:
    """An input whose pixel ``i`` takes class 1 with probability ``probabilities[i]``.

    Off the 8-bit grid: the statistical tests on it use ``sound=False`` (float mode), whose law is
    the one these probabilities describe."""
    return torch.tensor(SIGMA * st.norm.ppf(probabilities), dtype=torch.float32).reshape(1, 8, 8)


# ------------------------------------------------------------------------------ reference values


def test_binomial_pvalue_matches_the_exact_tail():
    # P(Bin(10, 1/2) >= 9) = (10 + 1) / 1024; P(Bin(10, 1/2) >= 0) = 1
    assert binomial_sf_pvalues([9, 0], 10, 0.5 + 1e-12)[0] == pytest.approx(11 / 1024, rel=1e-9)
    assert binomial_sf_pvalues([9, 0], 10, 0.75)[1] == 1.0
    assert binomial_sf_pvalues([10], 10, 0.75)[0] == pytest.approx(0.75**10, rel=1e-12)


def test_holm_rejects_the_step_down_set():
    # sorted: 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2: stop; 0.04 is not rejected either
    p = np.array([0.01, 0.04, 0.03, 0.005])
    assert holm_reject(p, 0.05).tolist() == [True, False, False, True]
    # all pass their levels: all rejected; an empty family rejects nothing
    assert holm_reject(np.array([0.001, 0.002]), 0.05).all()
    assert holm_reject(np.array([]), 0.05).size == 0
    # Holm rejects at least what Bonferroni does
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 0.02, 200) ** 2
    assert np.all(holm_reject(q, 0.05) >= (q <= 0.05 / q.size))


def test_holm_positive_control_step_up_would_reject_more():
    """The first failure stops Holm: 0.04 > 0.05/2 ends the procedure though 0.045 <= 0.05/1."""
    p = np.array([0.001, 0.04, 0.045])
    assert holm_reject(p, 0.05).tolist() == [True, False, False]


def test_radius_is_sigma_times_the_normal_quantile_of_tau():
    assert segmentation_radius(0.75, sigma=0.5) == pytest.approx(0.5 * 0.6744897501960817, rel=1e-12)
    assert segmentation_radius(0.75, sigma=0.5, noise="laplace", norm="l1") == pytest.approx(
        -(0.5 / math.sqrt(2)) * math.log(2 * 0.25), rel=1e-12
    )


@pytest.mark.parametrize("tau", [0.5, 1.0, 0.2, 1.5, "0.7", True])
def test_tau_outside_the_open_interval_is_refused_by_name(tau):
    with pytest.raises(ConfigError, match="tau"):
        check_tau(tau)


def test_certify_pixels_refuses_an_unknown_correction():
    with pytest.raises(ConfigError, match="correction"):
        certify_pixels([5], 10, tau=0.6, alpha=0.1, correction="none")


# ------------------------------------------------------------------------------ the segmenter


def test_certificate_is_frozen_and_consistent():
    probs = np.full(64, 0.9999)
    probs[:8] = 0.5
    seg = SmoothedSegmenter(ThresholdSegmenter(), 2, SIGMA, input_shape=(1, 8, 8), sound=False)
    cert = seg.certify(
        _pixels(probs), n0=20, n=500, alpha=0.01, tau=0.9, batch_size=256, generator=torch.Generator().manual_seed(1)
    )
    assert cert.labels.shape == (8, 8) and cert.labels.dtype == np.int64
    assert cert.radius == pytest.approx(SIGMA * st.norm.ppf(0.9), rel=1e-12)
    assert cert.abstain_fraction == pytest.approx(float(np.mean(cert.labels == ABSTAIN)))
    flat = cert.labels.reshape(-1)
    assert np.all(flat[8:] == 1)  # p = 0.9999 > tau: certified as class 1 with these seeds
    assert np.all(flat[:8] == ABSTAIN)  # p = 1/2 < tau: never certified
    with pytest.raises(dataclasses.FrozenInstanceError):
        cert.tau = 0.5  # type: ignore[misc]
    with pytest.raises(ValueError):
        cert.labels[0, 0] = 3


def test_certify_taus_share_draws_and_match_single_calls():
    probs = np.linspace(0.55, 0.999, 64)
    seg = SmoothedSegmenter(ThresholdSegmenter(), 2, SIGMA, input_shape=(1, 8, 8), sound=False)
    x = _pixels(probs)
    both = seg.certify_taus(
        x, n0=10, n=300, alpha=0.05, taus=[0.6, 0.8], batch_size=128, generator=torch.Generator().manual_seed(4)
    )
    for tau, cert in zip([0.6, 0.8], both, strict=True):
        single = seg.certify(
            x, n0=10, n=300, alpha=0.05, tau=tau, batch_size=128, generator=torch.Generator().manual_seed(4)
        )
        assert np.array_equal(single.labels, cert.labels)
    assert both[0].abstain_fraction <= both[1].abstain_fraction  # a higher tau certifies a subset


def test_predict_labels_the_clear_pixels():
    probs = np.where(np.arange(64) % 2 == 0, 0.9999, 0.0001)
    seg = SmoothedSegmenter(ThresholdSegmenter(), 2, SIGMA, input_shape=(1, 8, 8), sound=False)
    pred = seg.predict(_pixels(probs), n=200, alpha=0.01, batch_size=200, generator=torch.Generator().manual_seed(2))
    assert pred.labels.reshape(-1).tolist() == [1 - (i % 2) for i in range(64)]
    assert pred.abstain_fraction == 0.0


def test_output_shape_mismatch_is_reported():
    seg = SmoothedSegmenter(ThresholdSegmenter(), 2, SIGMA, output_shape=(4, 4))
    with pytest.raises(ValueError, match="output_shape"):
        seg.certify(torch.zeros(1, 8, 8), n0=5, n=5, alpha=0.1, tau=0.6, batch_size=10)


# ------------------------------------------------------------------------------ family-wise error


RUNS, ALPHA, TAU, N = 300, 0.1, 0.75, 100


def _family_errors(use_holm: bool) -> int:
    """Runs (of RUNS) in which some certified pixel has true probability <= tau for its label.

    48 pixels sit exactly at the null boundary (class 1 with probability tau: the test's worst
    case), 8 at probability 1/2 (the guessed class may be either, both nulls), 8 far above tau.
    """
    probs = np.full(64, TAU)
    probs[48:56] = 0.5
    probs[56:] = 0.999
    p_class1 = probs
    seg = SmoothedSegmenter(ThresholdSegmenter(), 2, SIGMA, input_shape=(1, 8, 8), sound=False)
    x = _pixels(probs)
    errors = 0
    for seed in range(RUNS):
        cert = seg.certify(
            x, n0=10, n=N, alpha=ALPHA, tau=TAU, batch_size=N, generator=torch.Generator().manual_seed(seed)
        )
        selected = cert.selected.reshape(-1)
        certified = cert.labels.reshape(-1) != ABSTAIN
        if not use_holm:  # planted bug: every pixel tested at level alpha, no correction
            certified = cert.pvalues.reshape(-1) <= ALPHA
        p_label = np.where(selected == 1, p_class1, 1 - p_class1)
        errors += int(np.any(certified & (p_label <= TAU)))
    return errors


# Under H0 (family-wise error <= alpha) the number of failing runs is stochastically below
# Binomial(RUNS, alpha); a count above its 0.999 quantile is a false alarm with probability <= 1e-3.
LIMIT = int(st.binom.ppf(0.999, RUNS, ALPHA))


def test_family_wise_error_of_certified_pixels_is_at_most_alpha():
    errors = _family_errors(use_holm=True)
    assert errors <= LIMIT, f"{errors} of {RUNS} runs certified a wrong or weak pixel (limit {LIMIT})"


def test_positive_control_without_holm_the_same_check_fails():
    """48 boundary nulls tested at alpha each: some fail in almost every run (rate about 1 - 0.93^48)."""
    assert _family_errors(use_holm=False) > LIMIT


# ------------------------------------------------------------------------------ PREDICT: Bonferroni


# An adversarial family for per-pixel PREDICT, with exactly known class probabilities. Per draw, a
# pair of binary pixels (a, b): a = 1 with probability 1/2 + EPS (its smoothed class is 1); b = 1 - a,
# except that b = 1 whenever a = 1 with probability THETA, so P(b = 1) = 1/2 - EPS + (1/2 + EPS) THETA
# > 1/2 (its smoothed class is 1 too). Both pixels sit at the decision boundary, and their top
# classes are wrong on (almost) complementary events, so the pixels' errors add up instead of
# overlapping: the worst case for a correction that is only a union bound. Two independent pairs
# make four pixels. "Wrong" below is exact: the top class is not 1.
EPS, THETA, PRED_N, PRED_ALPHA, PRED_RUNS = 0.001, 0.005, 400, 0.1, 4000
_PAIR = np.array([0.0, 0.5 - EPS, (0.5 + EPS) * (1 - THETA), (0.5 + EPS) * THETA])  # (a, b) = 00, 01, 10, 11


def _pair_family_counts(seed: int) -> np.ndarray:
    """Votes ``(PRED_RUNS, 4 pixels, 2 classes)`` of PRED_N draws from two independent pairs."""
    rng = np.random.default_rng(seed)
    out = np.zeros((PRED_RUNS, 4, 2), dtype=np.int64)
    for j in range(2):
        c = rng.multinomial(PRED_N, _PAIR, size=PRED_RUNS)
        out[:, 2 * j] = np.stack([c[:, 0] + c[:, 1], c[:, 2] + c[:, 3]], axis=1)  # pixel a: classes 0, 1
        out[:, 2 * j + 1] = np.stack([c[:, 0] + c[:, 2], c[:, 1] + c[:, 3]], axis=1)  # pixel b
    return out


# Under H0 (family-wise error <= alpha) the failing runs are stochastically below Binomial(RUNS, alpha);
# above its 0.999 quantile is a false alarm with probability <= 1e-3.
PRED_LIMIT = int(st.binom.ppf(0.999, PRED_RUNS, PRED_ALPHA))


def test_predict_family_wise_error_is_at_most_alpha_on_an_adversarial_family():
    """Bonferroni (each pixel at alpha / 4): measured 0.044 (176 of 4000) at alpha = 0.1 with these seeds."""
    from smoothcert.core.segmentation import predict_pixels

    top, decided, _ = predict_pixels(_pair_family_counts(0), PRED_ALPHA)
    failures = int(np.sum(np.any(decided & (top != 1), axis=1)))
    assert failures <= PRED_LIMIT, f"{failures} of {PRED_RUNS} runs returned a wrong pixel (limit {PRED_LIMIT})"


def test_positive_control_unadjusted_per_pixel_predict_exceeds_alpha():
    """The same family with each pixel tested at alpha (no correction): wrong in about 17% of runs."""
    from smoothcert.core.segmentation import predict_pixels

    top, _, pvalues = predict_pixels(_pair_family_counts(0), PRED_ALPHA)
    failures = int(np.sum(np.any((pvalues <= PRED_ALPHA) & (top != 1), axis=1)))
    assert failures > PRED_LIMIT


def test_predict_decides_pixels_at_alpha_over_m():
    """63 clear pixels and one whose p-value lies in (alpha/64, alpha]: Holm's last step would label it
    (every other pixel rejected first, it is tested at alpha); Bonferroni leaves it out."""
    probs = np.full(64, 0.9999)
    probs[0] = 0.55
    seg = SmoothedSegmenter(ThresholdSegmenter(), 2, SIGMA, input_shape=(1, 8, 8), sound=False)
    pred = seg.predict(_pixels(probs), n=400, alpha=0.05, batch_size=400, generator=torch.Generator().manual_seed(5))
    p = pred.pvalues.reshape(-1)
    assert 0.05 / 64 < p[0] <= 0.05, p[0]  # the case that tells the two corrections apart (these seeds)
    assert np.array_equal(pred.labels.reshape(-1) != ABSTAIN, p <= 0.05 / 64)
    assert bool(holm_reject(p, 0.05)[0])  # Holm would have returned it


# ------------------------------------------------------------------------------ sound mode


class Recording(torch.nn.Module):
    """ThresholdSegmenter that keeps every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().to("cpu", torch.float64).clone())
        return torch.cat([-x, x], dim=1)


def _off_grid(seen: list[torch.Tensor]) -> float:
    """The largest distance of ``255 x`` from an integer over every input the model saw."""
    return max(float((255 * x - torch.round(255 * x)).abs().max()) for x in seen)


def _on_grid(probabilities: np.ndarray) -> torch.Tensor:
    return torch.round(_pixels(probabilities) * 255) / 255


def test_sound_mode_feeds_the_model_only_grid_points_and_records_its_mode():
    model = Recording()
    seg = SmoothedSegmenter(model, 2, SIGMA, input_shape=(1, 8, 8), sound=True, grid=255)
    x = _on_grid(np.linspace(0.3, 0.99, 64))
    cert = seg.certify(x, n0=16, n=64, alpha=0.05, tau=0.6, batch_size=32, generator=torch.Generator().manual_seed(0))
    pred = seg.predict(x, n=64, alpha=0.05, batch_size=32, generator=torch.Generator().manual_seed(0))
    assert sum(len(s) for s in model.seen) == 16 + 64 + 64
    assert _off_grid(model.seen) < 1e-4
    dim = 64
    for r in (cert, pred):
        assert r.sound and r.grid == 255 and 0 < r.tv_bound == seg.tv_bound(dim) < 1e-12
    # float-mode control: the same model sees off-grid points, and nothing is accounted
    model.seen.clear()
    fl = SmoothedSegmenter(model, 2, SIGMA, input_shape=(1, 8, 8), sound=False)
    c = fl.certify(x, n0=16, n=64, alpha=0.05, tau=0.6, batch_size=32, generator=torch.Generator().manual_seed(0))
    assert _off_grid(model.seen) > 0.1
    assert not c.sound and c.grid is None and c.tv_bound == 0.0
    assert np.array_equal(
        c.labels.reshape(-1) != ABSTAIN, certify_pixels(c.counts, 64, tau=0.6, alpha=0.05)[0].reshape(-1)
    )


def test_sound_mode_refuses_an_input_off_the_grid():
    seg = SmoothedSegmenter(ThresholdSegmenter(), 2, SIGMA, input_shape=(1, 8, 8), sound=True)
    with pytest.raises(ValueError, match="grid"):
        seg.certify(torch.full((1, 8, 8), 0.5), n0=4, n=4, alpha=0.1, tau=0.6, batch_size=4)


def test_the_residual_total_variation_enters_certify_and_predict(monkeypatch):
    """With tv_bound planted at t, Holm runs at alpha - n t and PREDICT at (alpha - n t) / m: at
    alpha - n t = 1e-9 nothing is certified (the smallest p-value, 0.75^50 = 5.7e-7, fails
    1e-9 / 64) where alpha = 0.1 certifies every pixel; PREDICT likewise at alpha - n t' = 1e-14."""
    n, alpha = 50, 0.1
    t = (alpha - 1e-9) / n
    seg = SmoothedSegmenter(ThresholdSegmenter(), 2, SIGMA, input_shape=(1, 8, 8), sound=True)
    x = _on_grid(np.full(64, 0.99999))
    gen = torch.Generator
    before = seg.certify(x, n0=10, n=n, alpha=alpha, tau=0.75, batch_size=64, generator=gen().manual_seed(1))
    assert np.all(before.labels == 1)
    monkeypatch.setattr(seg, "tv_bound", lambda dim: t)
    after = seg.certify(x, n0=10, n=n, alpha=alpha, tau=0.75, batch_size=64, generator=gen().manual_seed(1))
    assert after.tv_bound == t and np.array_equal(after.counts, before.counts)  # same draws
    assert np.all(after.labels == ABSTAIN)
    expected = certify_pixels(after.counts, n, tau=0.75, alpha=alpha - n * t)[0]
    assert np.array_equal(after.labels != ABSTAIN, expected)
    # PREDICT: every pixel's p-value is 2 * 2^-50 = 1.8e-15 <= alpha / 64, but not <= (alpha - n t') / 64
    t2 = (alpha - 1e-14) / n
    monkeypatch.setattr(seg, "tv_bound", lambda dim: t2)
    pred = seg.predict(x, n=n, alpha=alpha, batch_size=64, generator=gen().manual_seed(1))
    assert np.all(pred.pvalues <= alpha / 64) and np.all(pred.labels == ABSTAIN) and pred.tv_bound == t2
    assert np.array_equal(pred.labels != ABSTAIN, pred.pvalues <= (alpha - n * t2) / 64)
    monkeypatch.setattr(seg, "tv_bound", lambda dim: alpha / n)  # nothing left: refused by name
    with pytest.raises(ConfigError, match="tv_bound"):
        seg.certify(x, n0=10, n=n, alpha=alpha, tau=0.75, batch_size=64)


# ------------------------------------------------------------------------------ "auto": per input


def test_auto_certifies_an_off_grid_input_in_float_mode_and_an_on_grid_one_in_sound_mode(monkeypatch):
    """One batch, two inputs: the off-grid one gets float mode (sound False, tv 0, a warning), the
    8-bit one sound mode, each with its own level. With tv_bound planted at t, alpha - n t = 1e-9
    certifies nothing (0.75^50 = 5.7e-7 > 1e-9 / 64) where the float input, at alpha, certifies
    every pixel: the level is per input, not the model's."""
    n, alpha = 50, 0.1
    probs = np.full(64, 0.99999)
    xs = torch.stack([_pixels(probs), _on_grid(probs)])
    seg = SmoothedSegmenter(ThresholdSegmenter(), 2, SIGMA, input_shape=(1, 8, 8))
    assert seg.sound == "auto"
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    with pytest.warns(SmoothingWarning, match="off the grid"):
        off, on = seg.certify_batch(xs, n0=10, n=n, alpha=alpha, tau=0.75, batch_size=64, generator=gens)
    assert (off.sound, off.grid, off.tv_bound, off.grid_offset) == (False, None, 0.0, 0.0)
    assert (on.sound, on.grid, on.grid_offset) == (True, 255, 0.0) and on.tv_bound == seg.tv_bound(64) > 0
    assert off.radius == on.radius == segmentation_radius(0.75, sigma=SIGMA)  # 8-bit input: no offset
    t = (alpha - 1e-9) / n
    monkeypatch.setattr(seg, "tv_bound", lambda dim: t)
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    off, on = seg.certify_batch(xs, n0=10, n=n, alpha=alpha, tau=0.75, batch_size=64, generator=gens)  # warned once
    assert off.tv_bound == 0.0 and np.all(off.labels == 1)  # float mode: at alpha
    assert on.tv_bound == t and np.all(on.labels == ABSTAIN)  # sound mode: at alpha - n t
    pred = seg.predict(xs[0], n=n, alpha=alpha, batch_size=64, generator=torch.Generator().manual_seed(3))
    assert (pred.sound, pred.grid, pred.tv_bound) == (False, None, 0.0) and np.all(pred.labels == 1)


def test_a_sound_radius_gives_up_the_grid_offset():
    """An input off its grid point by 0.5e-4 / q in each of the 64 pixels (within the grid's
    tolerance, so sound mode) is certified about round_q(x): its radius is the common radius less
    grid_offset = ||x - round_q(x)||_2 = 8 * 0.5e-4 / 255 (rounded up); the exact grid input keeps
    the common radius. float64 inputs so that the offset is represented."""
    probs = np.linspace(0.8, 0.99999, 64)
    grid_x = torch.round(torch.tensor(SIGMA * st.norm.ppf(probs)).reshape(1, 8, 8) * 255) / 255  # fl64(i / 255)
    shifted = grid_x + 0.5e-4 / 255
    seg = SmoothedSegmenter(ThresholdSegmenter(), 2, SIGMA, input_shape=(1, 8, 8))  # "auto": both on the grid
    gens = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)]
    exact, moved = seg.certify_batch(
        torch.stack([grid_x, shifted]), n0=10, n=100, alpha=0.05, tau=0.75, batch_size=100, generator=gens
    )
    common = segmentation_radius(0.75, sigma=SIGMA)
    expected = 8 * 0.5e-4 / 255
    assert exact.sound and moved.sound and exact.grid_offset == 0.0 and exact.radius == common
    assert expected <= moved.grid_offset <= expected * (1 + 1e-6)
    assert moved.radius == common - moved.grid_offset < common
    assert np.array_equal(moved.counts, exact.counts)  # the same grid point, the same draws
