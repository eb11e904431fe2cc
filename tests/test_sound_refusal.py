"""Sound mode refuses off-grid inputs on every public path (issue 25 §1).

The grid rule (``smoothcert.core.lattice.require_on_grid``) is enforced where sound noise is put
on an input, :meth:`GridNoise.perturb_`, so no route to sound counts or certificates can skip it:
the classifier's methods, sequential CERTIFY called directly, ``SmoothedModel.run_engine``, the
engine itself, and counting votes with ``run_engine`` then deciding with
``certificates_from_counts``. The positive control is the construction that bypassed the check
before: with the rule patched out, an input half a grid step off in every pixel gets a sound
certificate for a class that the true smoothed classifier at that input does not return.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smoothcert import SmoothedClassifier
from smoothcert.core import lattice
from smoothcert.core.errors import ConfigError
from smoothcert.smoothing.adaptive import SequentialSettings, certify_sequential
from smoothcert.smoothing.engine import ClassVotes, run_samples
from smoothcert.smoothing.noises import make_noise
from smoothcert.smoothing.sound import GridNoise

Q = 255
D = 784
SIGMA = 0.05
# the float32 input 0.5 / q is 0.5000000x grid steps in float64, so the grid point nearest to it is 1 / q:
# the rounded-pixel sum is centred at D = 784 around the grid point and at D / 2 = 392 around x
THRESHOLD = 588  # half way
REFUSAL = r"not on the grid 1/255 required by sound mode: coordinate \d+ is .*\| = 0\.5 > 0\.0001"


def _sum_classifier(z: torch.Tensor) -> torch.Tensor:
    """Class 1 iff the sum of the rounded pixels ``round(q z)`` is above THRESHOLD, else class 0."""
    s = torch.round(z.reshape(len(z), -1).to(torch.float64) * Q).sum(dim=1)
    one = (s > THRESHOLD).to(torch.float32)
    return torch.stack([1.0 - one, one], dim=1)


def _off_grid() -> torch.Tensor:
    # q x = 0.5 in every pixel: half a grid step from 0 and from 1 / q
    x = torch.full((D,), 0.5 / Q, dtype=torch.float32)
    assert float(x[0].double() * Q) > 0.5  # float32 rounding puts it just above the tie: nearest grid point 1 / q
    return x


def _clf() -> SmoothedClassifier:
    return SmoothedClassifier(_sum_classifier, num_classes=2, sigma=SIGMA, sound=True, grid=Q, input_shape=(D,))


def _seq() -> SequentialSettings:
    return SequentialSettings(alpha=0.001, n_max=256, batch_size=128, n0=32, n_first=64)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


ROUTES = {
    "certify": lambda c, x: c.certify(x, n0=32, n=64, alpha=0.001, batch_size=64, generator=_gen()),
    "certify_batch": lambda c, x: c.certify_batch(x[None], n0=32, n=64, alpha=0.001, batch_size=64, generator=_gen()),
    "predict": lambda c, x: c.predict(x, n=64, alpha=0.001, batch_size=64, generator=_gen()),
    "predict_batch": lambda c, x: c.predict_batch(x[None], n=64, alpha=0.001, batch_size=64, generator=_gen()),
    "sample_counts": lambda c, x: c.sample_counts(x[None], n=64, batch_size=64, generator=_gen()),
    "certify_adaptive": lambda c, x: c.certify_adaptive(x, generator=_gen(), alpha=0.001, n_max=256, batch_size=128),
    "certify_adaptive_batch": lambda c, x: c.certify_adaptive_batch(
        x[None], generator=_gen(), alpha=0.001, n_max=256, batch_size=128
    ),
    "certify_sequential": lambda c, x: certify_sequential(c, x[None], _seq(), labels=None, generator=_gen()),
    "run_engine": lambda c, x: c.run_engine(x[None], ClassVotes(2), n=64, batch_size=64, generator=_gen()),
    "run_samples": lambda c, x: run_samples(
        _sum_classifier,
        x[None],
        n=64,
        noise=GridNoise(make_noise("gaussian", SIGMA), Q),
        reduction=ClassVotes(2),
        batch_size=64,
        generator=_gen(),
    ),
    "run_engine+certificates_from_counts": lambda c, x: c.certificates_from_counts(
        c.run_engine(x[None], ClassVotes(2), n=32, batch_size=64, generator=_gen()),
        c.run_engine(x[None], ClassVotes(2), n=64, batch_size=64, generator=_gen()),
        n0=32,
        n=64,
        alpha=0.001,
        dim=D,
        xs=x[None],
    ),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_public_route_refuses_an_off_grid_input(route):
    clf = _clf()
    with pytest.raises(ConfigError, match=REFUSAL):
        ROUTES[route](clf, _off_grid())
    # control: the same route accepts the grid point next to it
    ROUTES[route](clf, torch.full((D,), 1 / Q))


def test_one_off_grid_pixel_is_named_with_its_offset():
    # a single pixel 0.3 grid steps off, inside an otherwise valid image: named by index and value
    x = torch.arange(D, dtype=torch.float32).remainder(256) / Q
    x[500] += 0.3 / Q
    noise = GridNoise(make_noise("gaussian", 0.25), Q)
    with pytest.raises(
        ConfigError, match=r"coordinate 500 is 0\.\d+, \|255 \* x - round\(255 \* x\)\| = 0\.3 > 0\.0001"
    ):
        noise.perturb_(torch.empty(4, D), x)
    # within the tolerance (float32 rounding of i / 255 is ~1e-5 grid steps) it is accepted
    x[500] = 244 / Q
    noise.perturb_(torch.empty(4, D), x)
    with pytest.raises(ConfigError, match="coordinate 3 is nan"):
        noise.perturb_(torch.empty(4, D), torch.tensor([0.0, 1 / Q, 2 / Q, float("nan")]))


def test_reviewer_construction_gives_a_false_certificate_without_the_check(monkeypatch):
    """Positive control: the refusal above is what stands between this input and a false certificate.

    With the grid rule patched out, sound noise is drawn around the grid point ``round(q x) = 1``
    instead of ``x``. There the rounded-pixel sum is about ``N(784, 357^2)`` (784 pixels of std
    ``0.05 * 255 = 12.75`` steps), above 588 with probability ``Phi(0.55) = 0.71``: class 1 is
    certified with a positive radius, ``sound=True``. At ``x`` itself the sum is centred at 392,
    so the smoothing of the rounding classifier at ``x`` gives class 1 with probability
    ``Phi(-0.55) = 0.29``: the true smoothed class at ``x`` is 0 and the certificate is false. The
    true probability is estimated below from continuous float64 noise rounded to the grid (the law
    sound mode stands for), 4000 draws: its standard error is 0.007, far from the 0.5 it must stay below.
    """
    monkeypatch.setattr(lattice, "require_on_grid", lambda *a, **k: None)
    clf = _clf()
    x = _off_grid()
    selection = clf.run_engine(x[None], ClassVotes(2), n=100, batch_size=1000, generator=_gen())
    estimation = clf.run_engine(x[None], ClassVotes(2), n=2000, batch_size=1000, generator=_gen())
    (cert,) = clf.certificates_from_counts(selection, estimation, n0=100, n=2000, alpha=0.001, dim=D, xs=x[None])
    # g(x) = 1 is claimed (the grid offset, 0.055 here, is already given up in the radius)
    assert cert.label == 1 and not cert.abstained and cert.sound
    # the truth at x: continuous Gaussian noise, then round to the grid (float64, exact enough here)
    rng = np.random.default_rng(1)
    z = np.rint(Q * (x.double().numpy() + rng.normal(0.0, SIGMA, size=(4000, D))))
    p_class1 = float(np.mean(z.sum(axis=1) > THRESHOLD))
    assert p_class1 < 0.4  # Phi(-0.55) = 0.29; the certified class 1 is not the smoothed class at x
    # and the same call with the rule in place refuses
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=REFUSAL):
        clf.run_engine(x[None], ClassVotes(2), n=100, batch_size=1000, generator=_gen())
