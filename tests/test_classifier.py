"""SmoothedClassifier: guarantees checked against exact oracles (MATH.md §2–§4, §7)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from oracles import ThresholdClasses
from scipy import stats as st

from smoothcert import ABSTAIN, Certificate, Prediction, SmoothedClassifier, SmoothingWarning
from smoothcert import stats as S


def _tolerance(runs: int, alpha: float) -> int:
    """Most failures a correct procedure may show: if the true failure rate is <= alpha, the
    count exceeds this with probability <= 1e-4 (one-sided binomial test), so a pass is no
    accident of the seed, and a procedure with a markedly higher rate fails."""
    return int(st.binom.ppf(1 - 1e-4, runs, alpha))


# ------------------------------------------------------------------ the linear oracle (§7)


def test_exact_probability_radius_equals_true_distance(linear_model):
    sigma = 0.8
    for x in [torch.tensor([0.3, 0.1]), torch.tensor([-1.0, 0.4]), torch.tensor([0.0, 2.0])]:
        d = linear_model.distance(x)
        p_a = st.norm.cdf(d / sigma)
        assert S.cohen_radius(p_a, sigma=sigma) == pytest.approx(d, rel=1e-9)


@pytest.mark.slow
def test_monte_carlo_radius_exceeds_true_distance_at_most_alpha_of_the_time(linear_model):
    # "failure rate <= alpha": over R independent CERTIFY runs the certificate overstates the
    # true distance (or names the wrong class) at most alpha of the time, within _tolerance.
    sigma, alpha, runs = 0.5, 0.1, 4000
    x = torch.tensor([0.2, 0.05])  # w.x + b = 0.9, distance 0.18, pA = Phi(0.36) ~= 0.64
    d, c = linear_model.distance(x), linear_model.label(x)
    sc = SmoothedClassifier(linear_model, 2, sigma)
    certs = sc.certify_batch(
        x.repeat(runs, 1), n0=20, n=100, alpha=alpha, batch_size=10_000, generator=torch.Generator().manual_seed(0)
    )
    failures = sum((ct.label not in (c, ABSTAIN)) or (ct.label == c and ct.radius > d) for ct in certs)
    assert failures <= _tolerance(runs, alpha)
    assert sum(not ct.abstained for ct in certs) > runs // 2  # the test is not vacuous
    # the same test rejects a point estimate in place of the confidence bound
    naive = sum(S.cohen_radius(ct.count / ct.n, sigma=sigma) > d for ct in certs)
    assert naive > _tolerance(runs, alpha)


def test_radius_approaches_distance_as_n_grows(linear_model):
    sigma = 1.0
    x = torch.tensor([1.0, 0.0])  # distance 0.7, pA = Phi(0.7) ~= 0.758
    d = linear_model.distance(x)
    sc = SmoothedClassifier(linear_model, 2, sigma)
    radii = []
    for n in [1_000, 10_000, 100_000]:
        certs = sc.certify_batch(
            x.repeat(5, 1), n0=100, n=n, alpha=0.001, batch_size=20_000, generator=torch.Generator().manual_seed(n)
        )
        radii.append(np.mean([ct.radius for ct in certs]))
    assert radii[0] < radii[1] < radii[2] <= d
    # at n = 1e5 the CP bound is within about 3.1 * sqrt(pA(1 - pA) / n) = 0.004 of pA: ~2% of d here
    assert radii[2] == pytest.approx(d, rel=0.05)


# ------------------------------------------------------------------ statistical validity


@pytest.mark.slow
def test_certify_p_lower_exceeds_true_pa_at_most_alpha_of_the_time():
    # three classes with exact probabilities: pA = 0.6 is the true top-class probability
    probs, sigma, alpha, runs = [0.6, 0.3, 0.1], 1.0, 0.1, 4000
    sc = SmoothedClassifier(ThresholdClasses(probs, sigma), 3, sigma)
    certs = sc.certify_batch(
        torch.zeros(runs, 2), n0=10, n=100, alpha=alpha, batch_size=8192, generator=torch.Generator().manual_seed(1)
    )
    bad = sum((ct.selected == 0 and ct.p_lower > probs[0]) or (ct.label not in (0, ABSTAIN)) for ct in certs)
    assert bad <= _tolerance(runs, alpha)
    assert sum(ct.label == 0 for ct in certs) > runs // 2


@pytest.mark.slow
def test_predict_returns_wrong_class_at_most_alpha_of_the_time():
    # g(x) = 0 with pA = 0.40 barely above pB = 0.37: the hardest case for PREDICT
    probs, sigma, alpha, runs = [0.40, 0.37, 0.23], 1.0, 0.1, 4000
    sc = SmoothedClassifier(ThresholdClasses(probs, sigma), 3, sigma)
    preds = sc.predict_batch(
        torch.zeros(runs, 2), n=300, alpha=alpha, batch_size=8192, generator=torch.Generator().manual_seed(2)
    )
    wrong = sum(p.label not in (0, ABSTAIN) for p in preds)
    assert wrong <= _tolerance(runs, alpha)
    # plain arg-max (no test) is wrong far more often, so this test has power
    counts = sc.sample_counts(torch.zeros(runs, 2), n=300, batch_size=8192, generator=torch.Generator().manual_seed(3))
    assert int((counts.argmax(axis=1) != 0).sum()) > _tolerance(runs, alpha)


def test_certify_uses_fresh_samples_for_estimation(linear_model):
    sc = SmoothedClassifier(linear_model, 2, 0.5)
    sc.certify(torch.tensor([0.3, 0.0]), n0=37, n=250, alpha=0.01, batch_size=64)
    assert linear_model.samples_seen == 37 + 250


def test_certificate_fields(linear_model):
    sc = SmoothedClassifier(linear_model, 2, 0.5)
    x = torch.tensor([1.0, 0.0])  # distance 0.7, far from the boundary
    ct = sc.certify(x, n0=100, n=1000, alpha=0.001, batch_size=512, generator=torch.Generator().manual_seed(0))
    assert isinstance(ct, Certificate) and not ct.abstained
    assert ct.label == ct.selected == 1
    assert (ct.n, ct.n0, ct.alpha, ct.sigma) == (1000, 100, 0.001, 0.5)
    assert ct.p_lower == pytest.approx(S.clopper_pearson_lower(ct.count, 1000, 0.001))
    assert ct.radius == pytest.approx(0.5 * st.norm.ppf(ct.p_lower))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ct.radius = 10.0  # type: ignore[misc]


def test_abstains_on_the_boundary(linear_model):
    sc = SmoothedClassifier(linear_model, 2, 0.5)
    x = torch.tensor([-0.1, 0.0])  # w.x + b = 0.2: close to the boundary, pA ~ 0.53
    ct = sc.certify(x, n0=100, n=200, alpha=0.001, batch_size=512, generator=torch.Generator().manual_seed(0))
    assert ct.abstained and ct.label == ABSTAIN and ct.radius == 0.0 and ct.p_lower <= 0.5
    pr = sc.predict(x, n=200, alpha=0.001, batch_size=512, generator=torch.Generator().manual_seed(0))
    assert isinstance(pr, Prediction) and pr.abstained and pr.label == ABSTAIN and pr.pvalue > 0.001
    assert pr.count + pr.runner_up_count == 200


def test_same_seed_same_results_and_batch_equals_single(linear_model):
    sc = SmoothedClassifier(linear_model, 2, 0.5)
    xs = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))

    def gens():
        return [torch.Generator().manual_seed(i) for i in range(8)]

    batch = sc.certify_batch(xs, n0=50, n=300, alpha=0.01, batch_size=256, generator=gens())
    assert batch == sc.certify_batch(xs, n0=50, n=300, alpha=0.01, batch_size=256, generator=gens())
    single = [sc.certify(xs[i], n0=50, n=300, alpha=0.01, batch_size=256, generator=g) for i, g in enumerate(gens())]
    assert batch == single
    pb = sc.predict_batch(xs, n=100, alpha=0.01, batch_size=256, generator=gens())
    assert pb == [sc.predict(xs[i], n=100, alpha=0.01, batch_size=256, generator=g) for i, g in enumerate(gens())]


def test_restores_train_mode(linear_model):
    linear_model.train()
    SmoothedClassifier(linear_model, 2, 0.5).predict(torch.zeros(2), n=20, alpha=0.1, batch_size=8)
    assert linear_model.training


def test_warns_once_when_n_can_never_answer(linear_model):
    sc = SmoothedClassifier(linear_model, 2, 0.5)
    with pytest.warns(SmoothingWarning, match="needs n >= 11"):
        assert sc.predict(torch.ones(2), n=10, alpha=0.001, batch_size=8).abstained
    with pytest.warns(SmoothingWarning, match="needs n >= 10"):
        assert sc.certify(torch.ones(2), n0=5, n=9, alpha=0.001, batch_size=8).abstained
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sc.predict(torch.ones(2), n=10, alpha=0.001, batch_size=8)  # second time: silent


def test_warnings_are_per_instance_so_test_order_does_not_matter(linear_model):
    # the same (n, alpha) as above: with a module-global registry this instance would stay silent
    # whenever test_warns_once_when_n_can_never_answer ran first
    first = SmoothedClassifier(linear_model, 2, 0.5)
    with pytest.warns(SmoothingWarning, match="needs n >= 11"):
        first.predict(torch.ones(2), n=10, alpha=0.001, batch_size=8)
    with pytest.warns(SmoothingWarning, match="needs n >= 11"):
        SmoothedClassifier(linear_model, 2, 0.5).predict(torch.ones(2), n=10, alpha=0.001, batch_size=8)


# ------------------------------------------------------------------ bad input


class Wide(torch.nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(z.shape[0], 7)


@pytest.mark.parametrize(
    ("build", "call", "exc", "fragment"),
    [
        (lambda m: SmoothedClassifier(m, 2, -0.5), None, ValueError, "sigma must be > 0 and finite, got -0.5"),
        (lambda m: SmoothedClassifier(m, 2, float("nan")), None, ValueError, "sigma must be > 0 and finite, got nan"),
        (lambda m: SmoothedClassifier(m, 1, 0.5), None, ValueError, "num_classes must be >= 2, got 1"),
        (lambda m: SmoothedClassifier("model", 2, 0.5), None, TypeError, "base_classifier must be callable"),
        (
            None,
            lambda sc, x: sc.certify(x, n0=10, n=100, alpha=0.0, batch_size=8),
            ValueError,
            "alpha must be in (0, 1), got 0.0",
        ),
        (
            None,
            lambda sc, x: sc.predict(x, n=100, alpha=1.0, batch_size=8),
            ValueError,
            "alpha must be in (0, 1), got 1.0",
        ),
        (None, lambda sc, x: sc.certify(x, n0=0, n=100, alpha=0.1, batch_size=8), ValueError, "n0 must be >= 1, got 0"),
        (None, lambda sc, x: sc.certify(x, n0=10, n=0, alpha=0.1, batch_size=8), ValueError, "n must be >= 1, got 0"),
        (
            None,
            lambda sc, x: sc.predict(x, n=10, alpha=0.1, batch_size=0),
            ValueError,
            "batch_size must be >= 1, got 0",
        ),
        (
            None,
            lambda sc, x: sc.certify(x.unsqueeze(0), n0=10, n=100, alpha=0.1, batch_size=8),
            ValueError,
            "x must have shape (2,), got (1, 2)",
        ),
        (
            None,
            lambda sc, x: sc.certify_batch(x, n0=10, n=100, alpha=0.1, batch_size=8),
            ValueError,
            "xs must have shape (batch, 2), got (2,)",
        ),
        (
            None,
            lambda sc, x: sc.certify(torch.tensor([0.0, float("nan")]), n0=10, n=100, alpha=0.1, batch_size=8),
            ValueError,
            "x contains non-finite values",
        ),
        (
            None,
            lambda sc, x: sc.predict(torch.tensor([1, 2]), n=10, alpha=0.1, batch_size=8),
            TypeError,
            "x must have a floating dtype, got torch.int64",
        ),
        (
            None,
            lambda sc, x: sc.predict([0.0, 1.0], n=10, alpha=0.1, batch_size=8),
            TypeError,
            "x must be a torch.Tensor, got list",
        ),
    ],
)
def test_bad_input_names_argument_and_value(linear_model, build, call, exc, fragment):
    with pytest.raises(exc) as info:
        sc = (build or (lambda m: SmoothedClassifier(m, 2, 0.5, input_shape=(2,))))(linear_model)
        if call is not None:
            call(sc, torch.tensor([0.5, 0.5]))
    assert fragment in str(info.value)


def test_scalar_input_has_wrong_rank(linear_model):
    with pytest.raises(ValueError, match="wrong rank"):
        SmoothedClassifier(linear_model, 2, 0.5).certify(torch.tensor(1.0), n0=10, n=100, alpha=0.1, batch_size=8)


def test_model_output_width_must_match_num_classes():
    sc = SmoothedClassifier(Wide(), 10, 0.5)
    with pytest.raises(ValueError, match=r"num_classes=10.*got shape \(\d+, 7\)"):
        sc.certify(torch.zeros(3), n0=10, n=100, alpha=0.1, batch_size=8)
