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
from smoothcert.smoothing.certificates import ABSTAIN
from smoothcert.smoothing.segmentation import SmoothedSegmenter


class ThresholdSegmenter(torch.nn.Module):
    """Scores ``(-x, x)`` per pixel: class 1 iff the noisy pixel is positive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, x], dim=1)


SIGMA = 0.5


def _pixels(probabilities: np.ndarray) -> torch.Tensor:
    """An input whose pixel ``i`` takes class 1 with probability ``probabilities[i]``."""
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
    seg = SmoothedSegmenter(ThresholdSegmenter(), 2, SIGMA, input_shape=(1, 8, 8))
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
    seg = SmoothedSegmenter(ThresholdSegmenter(), 2, SIGMA, input_shape=(1, 8, 8))
    x = _pixels(probs)
    both = seg.certify_taus(x, n0=10, n=300, alpha=0.05, taus=[0.6, 0.8], batch_size=128, generator=torch.Generator().manual_seed(4))
    for tau, cert in zip([0.6, 0.8], both, strict=True):
        single = seg.certify(x, n0=10, n=300, alpha=0.05, tau=tau, batch_size=128, generator=torch.Generator().manual_seed(4))
        assert np.array_equal(single.labels, cert.labels)
    assert both[0].abstain_fraction <= both[1].abstain_fraction  # a higher tau certifies a subset


def test_predict_labels_the_clear_pixels():
    probs = np.where(np.arange(64) % 2 == 0, 0.9999, 0.0001)
    seg = SmoothedSegmenter(ThresholdSegmenter(), 2, SIGMA, input_shape=(1, 8, 8))
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
    seg = SmoothedSegmenter(ThresholdSegmenter(), 2, SIGMA, input_shape=(1, 8, 8))
    x = _pixels(probs)
    errors = 0
    for seed in range(RUNS):
        cert = seg.certify(x, n0=10, n=N, alpha=ALPHA, tau=TAU, batch_size=N, generator=torch.Generator().manual_seed(seed))
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
