"""The Lipschitz-margin baseline (Tsuzuku, Sato & Sugiyama, NeurIPS 2018): the bound, the radius, soundness.

Soundness is checked empirically: an L2 PGD attack at 0.99x each certified radius must never change
the prediction (a sound certificate makes this impossible, whatever the attack's strength; PGD is
seeded). Positive controls: the same attack does break many inputs at 4x the radius, and a bound
that leaves out one layer's norm is caught by an adversarial example closer than its radius.
Exact checks compare float64 spectral norms with an independent construction (autograd Jacobian +
numpy SVD) at relative tolerance 1e-10.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from smoothcert.baselines.attack import l2_pgd, min_adversarial_distance
from smoothcert.baselines.bound import (
    double_copy,
    layer_norms,
    lipschitz_bound,
    margin_radius,
    operator_norm,
)
from smoothcert.baselines.run import certify_dataset
from smoothcert.baselines.train import train_lipschitz_margin
from smoothcert.core.errors import ConfigError
from smoothcert.models.architectures import Normalize
from smoothcert.models.lipschitz import MaxMin, OrthoLinear, lipschitz_mlp

SIDE, CLASSES = 8, 3


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 8x8 images: a class mean image plus N(0, 0.2^2) pixel noise, clipped to [0, 1]."""
    means = torch.rand(CLASSES, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(100))
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    x = (means[y] + 0.2 * torch.randn(n, 1, SIDE, SIDE, generator=gen)).clamp(0, 1)
    return x, y


def _jacobian_norm(fn, shape: tuple[int, ...]) -> float:
    """Independent reference: the spectral norm of the Jacobian of a linear map at 0, by numpy's SVD."""
    jac = torch.autograd.functional.jacobian(
        lambda v: fn(v.reshape(1, *shape)).flatten(), torch.zeros(math.prod(shape), dtype=torch.float64)
    )
    return float(np.linalg.norm(jac.numpy(), 2))


@pytest.mark.parametrize("padding,stride", [(1, 1), (0, 1), (1, 2)])
def test_conv_operator_norm_is_the_exact_norm_of_the_zero_padded_map(padding, stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=padding, stride=stride, bias=False).double()
    shape = (2, 7, 7)
    exact = operator_norm(conv, shape)
    assert exact == pytest.approx(_jacobian_norm(conv, shape), rel=1e-10)
    # power iteration approaches the norm from below: never above the exact value
    v = torch.randn(1, *shape, dtype=torch.float64)
    for _ in range(50):
        u = conv(v)
        v = torch.autograd.functional.vjp(conv, v, u)[1]
        v = v / v.norm()
    assert float(conv(v).detach().norm()) <= exact * (1 + 1e-12)


def test_layer_norms_of_a_small_cnn_multiply_to_a_bound_above_every_local_gradient():
    torch.manual_seed(1)
    net = nn.Sequential(
        Normalize((0.5,), (0.25,)),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, CLASSES),
    )
    norms = layer_norms(net, (1, SIDE, SIDE))
    assert [ln.kind for ln in norms] == [
        "Normalize",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "ReLU",
        "Flatten",
        "Linear",
    ]
    assert norms[0].norm == pytest.approx(4.0) and norms[3].norm == 1.0 and norms[4].input_shape == (4, 4, 4)
    bound = lipschitz_bound(net, (1, SIDE, SIDE)).value
    net64 = double_copy(net)
    x = torch.rand(20, 1, SIDE, SIDE, dtype=torch.float64)
    for i in range(20):  # ||J^T e_j - J^T e_k|| / sqrt(2) <= L for the logit differences
        jac = torch.autograd.functional.jacobian(lambda v: net64(v.reshape(1, 1, SIDE, SIDE)).flatten(), x[i].flatten())
        assert float(np.linalg.norm(jac.numpy(), 2)) <= bound


def test_overlapping_max_pool_and_unknown_layers():
    norms = layer_norms(nn.Sequential(nn.MaxPool2d(3, stride=1)), (1, 6, 6))
    assert norms[0].norm == pytest.approx(3.0)  # each element lies in up to 3 x 3 windows
    with pytest.raises(ConfigError, match="GELU"):
        layer_norms(nn.Sequential(nn.Flatten(), nn.GELU()), (4,))


def test_orthonormal_layers_and_maxmin_are_1_lipschitz():
    torch.manual_seed(2)
    for i, o in ((10, 6), (6, 10), (8, 8)):
        w = OrthoLinear(i, o).weight().detach().double()
        assert float(torch.linalg.matrix_norm(w, ord=2)) == pytest.approx(1.0, abs=1e-6)
    a, b = torch.randn(500, 8, dtype=torch.float64), torch.randn(500, 8, dtype=torch.float64)
    assert bool(((MaxMin()(a) - MaxMin()(b)).norm(dim=1) <= (a - b).norm(dim=1) + 1e-12).all())
    net = lipschitz_mlp(in_features=SIDE * SIDE, hidden=(16, 16), num_classes=CLASSES, mean=(0.5,), std=(0.5,))
    assert lipschitz_bound(net, (1, SIDE, SIDE)).value == pytest.approx(2.0, rel=1e-6)


def test_margin_radius_is_margin_over_sqrt2_l():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.5, 0.5]], dtype=torch.float64)
    predict, radius = margin_radius(logits, 2.0)
    assert predict.tolist() == [0, 1]
    assert float(radius[0]) == pytest.approx(2.0 / (math.sqrt(2) * 2.0), rel=1e-8)
    assert float(radius[1]) == 0.0  # a tie certifies nothing


@pytest.fixture(scope="module")
def trained():
    """A 1-Lipschitz MLP (after Normalize with std 0.5, so L = 2) trained with LMT at epsilon = 0.3."""
    torch.manual_seed(3)
    x, y = _blobs(600, seed=4)
    net = lipschitz_mlp(in_features=SIDE * SIDE, hidden=(32, 32), num_classes=CLASSES, mean=(0.5,), std=(0.5,))
    bound = lipschitz_bound(net, (1, SIDE, SIDE))
    history = train_lipschitz_margin(net, x, y, lipschitz=bound.value, epsilon=0.3, epochs=12, lr=5e-3, seed=0)
    xt, yt = _blobs(120, seed=5)
    return net, xt, yt, history


def test_training_and_certification_give_rows_in_certify_columns(trained):
    net, xt, yt, history = trained
    assert history[-1].accuracy > 0.9
    run = certify_dataset(net, xt, yt, indices=range(100, 220))
    assert len(run.rows) == 120 and run.rows[0].idx == 100
    acc = np.mean([r.correct for r in run.rows])
    cert = np.mean([r.correct and r.radius >= 0.3 for r in run.rows])
    assert acc > 0.9 and cert > 0.5
    assert run.bound.value == pytest.approx(2.0, rel=1e-6)
    row = run.rows[0].values()
    assert list(row) == ["idx", "label", "predict", "radius", "correct", "time"]
    assert str(row["time"]).count(":") == 2 and row["correct"] in (0, 1)


def _certified(trained, bound_value: float):
    net, xt, _yt, _ = trained
    net64 = double_copy(net)
    with torch.no_grad():
        predict, radius = margin_radius(net64(xt.double()), bound_value)
    keep = radius > 0
    return net64, xt.double()[keep], predict[keep], radius[keep]


def test_pgd_at_099_radius_never_changes_the_prediction(trained):
    """Soundness: 0 of the certified inputs is broken at 0.99 r (100 steps, 3 starts, seeded)."""
    net, *_ = trained
    net64, x, predict, radius = _certified(trained, lipschitz_bound(net, (1, SIDE, SIDE)).value)
    assert len(x) > 60
    res = l2_pgd(
        net64, x, predict, epsilon=0.99 * radius, steps=100, restarts=3, generator=torch.Generator().manual_seed(0)
    )
    assert int(res.success.sum()) == 0


def test_pgd_breaks_inputs_well_beyond_the_radius(trained):
    """Positive control for the attack: at 4 r it does change many predictions (the attack has teeth)."""
    net, *_ = trained
    net64, x, predict, radius = _certified(trained, lipschitz_bound(net, (1, SIDE, SIDE)).value)
    res = l2_pgd(net64, x, predict, epsilon=4 * radius, steps=100, restarts=1)
    assert float(res.success.float().mean()) > 0.3
    assert bool((res.distance[res.success] <= 4 * radius[res.success] * (1 + 1e-9)).all())


def test_a_bound_without_one_layer_is_caught(trained):
    """Positive control for the bound: leaving out Normalize's factor 2 halves L, and some radius then
    exceeds the distance of an adversarial example PGD finds (so the radius is provably wrong)."""
    net, *_ = trained
    bad = lipschitz_bound(net, (1, SIDE, SIDE), skip=["0"])
    assert bad.value == pytest.approx(1.0, rel=1e-6)
    net64, x, predict, radius = _certified(trained, bad.value)
    res = l2_pgd(net64, x, predict, epsilon=0.99 * radius, steps=100, restarts=1)
    assert int(res.success.sum()) >= 1
    assert bool((res.distance[res.success] < radius[res.success]).all())


def test_min_adversarial_distance_brackets_the_boundary(trained):
    """Bisection finds adversarial examples no closer than the (sound) certified radius, on a few inputs."""
    net, *_ = trained
    net64, x, predict, radius = _certified(trained, lipschitz_bound(net, (1, SIDE, SIDE)).value)
    dist = min_adversarial_distance(net64, x[:8], predict[:8], hi=float(radius[:8].max()) * 4, iterations=6, steps=40)
    found = torch.isfinite(dist)
    assert int(found.sum()) >= 1 and bool((dist[found] >= radius[:8][found]).all())
