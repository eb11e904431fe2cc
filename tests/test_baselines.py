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
from collections import OrderedDict

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


# --- Issue 25 §3: layers are recognised by their exact type, and hooks are refused -----------------------


class _TimesTenReLU(nn.ReLU):
    """Planted: a "ReLU" whose forward multiplies by 10 (Lipschitz constant 10, not 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * super().forward(x)


class _TimesTenOrtho(OrthoLinear):
    """Planted: an orthonormal layer whose forward multiplies by 10."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * super().forward(x)


class _Scale(nn.Module):
    """A module the bound does not know."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * x


def _identity_net() -> nn.Sequential:
    """``Linear(I, b=1) -> ReLU -> Linear(I)`` on R^4: the plain network is the identity plus 1 near 0, L = 1."""
    first, last = nn.Linear(4, 4), nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.eye(4))
        first.bias.fill_(1.0)
        last.weight.copy_(torch.eye(4))
    return nn.Sequential(first, nn.ReLU(), last)


def _times_ten(module, args, output):
    return 10.0 * output


def _pre_times_ten(module, args):
    return (10.0 * args[0],)


def _plant(kind: str, net: nn.Sequential):
    """Change what ``net`` computes without changing its layers' types (or with a subclass); returns a handle."""
    if kind == "subclass":
        net[1] = _TimesTenReLU()
        return None
    if kind == "forward hook":
        return net[1].register_forward_hook(_times_ten)
    if kind == "pre-hook":
        return net[1].register_forward_pre_hook(_pre_times_ten)
    if kind == "global hook":
        return nn.modules.module.register_module_forward_hook(lambda m, a, out: 10.0 * out if m is net[1] else None)
    if kind == "hook on the container":
        return net.register_forward_hook(_times_ten)
    if kind == "instance forward":
        net[1].forward = lambda x: 10.0 * torch.relu(x)
        return None
    raise AssertionError(kind)


PLANTS = ["subclass", "forward hook", "pre-hook", "global hook", "hook on the container", "instance forward"]


@pytest.mark.parametrize("kind", PLANTS)
def test_a_planted_change_really_breaks_the_base_layers_bound(kind):
    """Positive control: bounding the planted layer as its base type (L = 1, what an isinstance match gave)
    is violated: two inputs 0.1 apart come out 1.0 apart (the network is 10 x (x + 1) near 0)."""
    base_bound = lipschitz_bound(_identity_net(), (4,)).value  # computed before a global hook exists
    assert base_bound == pytest.approx(1.0, rel=1e-8)
    planted = _identity_net()
    handle = _plant(kind, planted)
    try:
        a = torch.zeros(1, 4)
        b = a + torch.tensor([[0.1, 0.0, 0.0, 0.0]])
        with torch.no_grad():
            ratio = float((planted(a) - planted(b)).norm() / (a - b).norm())
        assert ratio == pytest.approx(10.0, rel=1e-5) and ratio > 5 * base_bound
    finally:
        if handle is not None:
            handle.remove()


@pytest.mark.parametrize("kind", PLANTS)
def test_a_planted_change_is_refused_with_one_line_naming_the_module(kind):
    net = _identity_net()
    handle = _plant(kind, net)
    expected = {
        "subclass": r"layer '1' of type _TimesTenReLU \(a subclass of ReLU",
        "forward hook": r"module '1' \(ReLU\) has a forward hook",
        "pre-hook": r"module '1' \(ReLU\) has a forward pre-hook",
        "global hook": r"global module forward hook",
        "hook on the container": r"module '<model>' \(Sequential\) has a forward hook",
        "instance forward": r"module '1' \(ReLU\) has its own forward",
    }[kind]
    try:
        for call in (
            lambda: lipschitz_bound(net, (4,)),
            lambda: certify_dataset(net, torch.zeros(2, 4), torch.zeros(2)),
        ):
            with pytest.raises(ConfigError, match=expected) as err:
                call()
            assert "\n" not in str(err.value)
    finally:
        if handle is not None:
            handle.remove()
    if handle is not None:  # control: the same network without the hook is bounded again
        assert lipschitz_bound(net, (4,)).value == pytest.approx(1.0, rel=1e-8)


def test_backward_hooks_subclassed_containers_orthonormal_subclasses_and_unknown_modules_are_refused():
    net = _identity_net()
    handle = net[2].register_full_backward_hook(lambda m, gi, go: None)
    with pytest.raises(ConfigError, match=r"module '2' \(Linear\) has a backward hook"):
        lipschitz_bound(net, (4,))
    handle.remove()
    handle = nn.modules.module.register_module_full_backward_hook(lambda m, gi, go: None)
    try:
        with pytest.raises(ConfigError, match="global module backward hook"):
            lipschitz_bound(net, (4,))
    finally:
        handle.remove()

    class LoudSequential(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 10.0 * super().forward(x)

    with pytest.raises(ConfigError, match=r"'inner' \(LoudSequential\)"):
        lipschitz_bound(nn.Sequential(OrderedDict(inner=LoudSequential(nn.Flatten()))), (4,))
    # an OrthoLinear subclass is neither frozen into a plain Linear nor bounded as one
    ortho = nn.Sequential(nn.Flatten(), _TimesTenOrtho(4, 4))
    with pytest.raises(ConfigError, match=r"layer '1' of type _TimesTenOrtho \(a subclass of OrthoLinear"):
        lipschitz_bound(ortho, (4,))
    with pytest.raises(ConfigError, match=r"layer '1' of type _Scale has no known Lipschitz bound"):
        lipschitz_bound(nn.Sequential(nn.Flatten(), _Scale()), (4,))
    # control: the exact types are still bounded (plain OrthoLinear: 1)
    assert lipschitz_bound(nn.Sequential(nn.Flatten(), OrthoLinear(4, 4)), (4,)).value == pytest.approx(1.0, rel=1e-6)
