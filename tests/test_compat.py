"""smoothcert.smoothing.compat.Smooth keeps the 2019 reference call signatures, return types and statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sp_stats
from statsmodels.stats.proportion import proportion_confint

from smoothcert import SmoothedClassifier
from smoothcert.smoothing.compat import Smooth


def test_reference_signatures_and_types(linear_model):
    smoothed = Smooth(linear_model, 2, 0.5, sound=False)
    x = torch.tensor([1.0, 0.0])
    torch.manual_seed(0)
    label = smoothed.predict(x, 100, 0.001, 64)
    assert isinstance(label, int) and label == 1
    out = smoothed.certify(x, 100, 1000, 0.001, 64)
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0] == 1 and isinstance(out[1], float) and out[1] > 0
    assert Smooth.ABSTAIN == -1


def test_abstains_like_the_reference(linear_model):
    smoothed = Smooth(linear_model, 2, 0.5, sound=False)
    x = torch.tensor([-0.1, 0.0])  # on the boundary
    torch.manual_seed(0)
    assert smoothed.certify(x, 100, 200, 0.001, 64) == (-1, 0.0)
    assert smoothed.predict(x, 50, 0.001, 64) == -1


def test_same_global_seed_same_answer_as_smoothed_classifier(linear_model):
    x = torch.tensor([0.2, 0.1])
    torch.manual_seed(5)
    ref = Smooth(linear_model, 2, 0.5, sound=False).certify(x, 50, 500, 0.01, 128)
    torch.manual_seed(5)
    ct = SmoothedClassifier(linear_model, 2, 0.5, sound=False).certify(x, n0=50, n=500, alpha=0.01, batch_size=128)
    assert ref == (ct.label, ct.radius)


# ------------------------------------------------------------------ against an independent 2019 CERTIFY

CENTROIDS = np.array([[np.cos(a), np.sin(a)] for a in (0.0, 2 * np.pi / 3, 4 * np.pi / 3)])


class NearestCentroid(torch.nn.Module):
    """A 3-class base classifier on R^2 with nonlinear (Voronoi) decision boundaries."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # logits: minus the squared distances
        return -(torch.cdist(x, torch.as_tensor(CENTROIDS, dtype=x.dtype)) ** 2)


def _certify_2019(x: np.ndarray, *, sigma: float, n0: int, n: int, alpha: float, rng: np.random.Generator):
    """CERTIFY as the paper states it (Sec. 3.2, pseudocode), written here from scratch with numpy
    and statsmodels: pick the top class from n0 noisy votes, count its votes among n fresh ones,
    take the one-sided (1 - alpha) Clopper-Pearson lower bound pA; abstain unless pA > 1/2, else
    return radius sigma * Phi^-1(pA)."""

    def votes(num: int) -> np.ndarray:
        noisy = x + sigma * rng.standard_normal((num, 2))
        pred = np.argmin(((noisy[:, None, :] - CENTROIDS[None]) ** 2).sum(-1), axis=1)
        return np.bincount(pred, minlength=3)

    top = int(np.argmax(votes(n0)))
    p_lower = proportion_confint(int(votes(n)[top]), n, alpha=2 * alpha, method="beta")[0]
    if p_lower <= 0.5:
        return -1, 0.0
    return top, sigma * float(sp_stats.norm.ppf(p_lower))


def _certified(results: list[tuple[int, float]], labels: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(radii, examples) indicators: correct and certified at radius >= r."""
    pred = np.array([p for p, _ in results])
    rad = np.array([r for _, r in results])
    return (pred == labels)[None, :] & (rad[None, :] >= radii[:, None])


@pytest.mark.slow
def test_certified_accuracy_agrees_with_an_independent_2019_certify():
    """compat.Smooth and the re-implementation above run CERTIFY on the same base classifier and
    the same m inputs, each twice, with independent randomness.

    Each example's "certified correct at r" is a Bernoulli(q_i) draw, with the same q_i in both
    implementations if they agree. Two runs A1, A2 of one implementation estimate its
    sum_i q_i (1 - q_i) without bias as sum_i (A1_i - A2_i)^2 / 2, so the difference of the two
    implementations' certified accuracies (each averaged over its two runs) has standard deviation
    sqrt(V_ours / 2 + V_ref / 2) / m. Tolerance: 5 of these estimated standard deviations plus
    1/m (the estimate rests on a few dozen borderline examples; even if it were half the truth, a
    false failure would be a 3.5-sigma event). Positive control: the same check catches noise
    drawn 15% too large in the re-implementation."""
    m, sigma, n0, n, alpha = 2000, 0.5, 100, 1000, 0.001
    rng = np.random.default_rng(0)
    xs = rng.uniform(-1.5, 1.5, (m, 2))
    model = NearestCentroid()
    labels = model(torch.as_tensor(xs)).argmax(1).numpy()
    labels[rng.random(m) < 0.1] = rng.integers(0, 3)  # some wrong labels, so "correct" matters
    radii = np.array([0.0, 0.1, 0.25, 0.5, 0.75, 1.0])

    torch.manual_seed(0)
    smoothed = Smooth(model, 3, sigma, sound=False)
    ours = [_certified([smoothed.certify(torch.as_tensor(x), n0, n, alpha, n) for x in xs], labels, radii)]
    ours.append(_certified([smoothed.certify(torch.as_tensor(x), n0, n, alpha, n) for x in xs], labels, radii))
    gen = np.random.default_rng(1)  # one generator for every example and run: independent draws

    def reference(scale: float) -> list[np.ndarray]:
        kw = dict(sigma=scale * sigma, n0=n0, n=n, alpha=alpha, rng=gen)
        return [_certified([_certify_2019(x, **kw) for x in xs], labels, radii) for _ in range(2)]

    ref, wrong = reference(1.0), reference(1.15)

    def gap_and_tolerance(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        var = [((r1.astype(float) - r2) ** 2).sum(axis=1) / 2 for r1, r2 in (a, b)]  # sum_i q_i (1 - q_i)
        sd = np.sqrt(var[0] / 2 + var[1] / 2) / m
        gap = np.abs((a[0].mean(1) + a[1].mean(1)) / 2 - (b[0].mean(1) + b[1].mean(1)) / 2)
        return gap, 5 * sd + 1 / m

    assert ours[0].mean(1)[0] > 0.5 and ours[0].mean(1)[-1] > 0.03, "the grid spans radii the inputs reach"
    gap, tol = gap_and_tolerance(ours, ref)
    assert np.all(gap <= tol), (gap, tol)
    gap, tol = gap_and_tolerance(wrong, ref)
    assert np.any(gap > tol), (gap, tol)
