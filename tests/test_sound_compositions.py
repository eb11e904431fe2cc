"""Sound mode through the compositions: lifting, ensembles (with and without K-consensus), a
denoiser in front, PREDICT and sequential CERTIFY; the false certificate of docs/sound.md §1 in each
mode that could be attacked; eval mode during sampling; the pass-size probe's inputs; the top-level API.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import pytest
import torch

import smoothcert
from smoothcert import SmoothedClassifier
from smoothcert.core import lattice
from smoothcert.core import stats as S
from smoothcert.models.denoisers import DnCNN, compose
from smoothcert.models.ensemble import Ensemble
from smoothcert.smoothing import engine
from smoothcert.smoothing.lifting import AvgPoolThen, avg_pool, lift, upsample

Q = 255
KW = dict(n0=50, n=400, alpha=0.01, batch_size=200)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def on_grid(z: torch.Tensor) -> bool:
    return bool(torch.equal(z, (torch.round(z.double() * Q) / Q).to(z.dtype)))


def grid_input(shape=(1, 4, 4), seed=0) -> torch.Tensor:
    return torch.randint(0, Q + 1, shape, generator=gen(seed)).float() / Q


class Linear2(torch.nn.Module):
    """Two classes by the sign of ``sum(z) - d/2 + bias``; records its inputs."""

    def __init__(self, bias: float = 2.0, flip: bool = False) -> None:
        super().__init__()
        self.bias, self.flip = bias, flip
        self.inputs: list[torch.Tensor] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.inputs.append(z.detach().clone())
        s = z.flatten(1).double().sum(1) - 0.5 * z[0].numel() + self.bias
        s = -s if self.flip else s
        return torch.stack([-s, s], dim=1).float()


def _tv(dim: int, sigma: float = 0.25) -> float:
    return dim * lattice.lattice_table("gaussian", sigma, Q).tv


# ------------------------------------------------------------------ lifting


def test_lift_keeps_sound_mode_and_the_base_model_sees_only_grid_points():
    low_model = Linear2(bias=1.0)
    low = SmoothedClassifier(low_model, 2, 0.25, sound=True, input_shape=(1, 4, 4), pass_size=None)
    high = lift(low, factor=2)
    assert (high.sound, high.grid, high.sigma) == (True, Q, 0.5)
    seen: list[torch.Tensor] = []
    assert isinstance(high.base_model, AvgPoolThen)
    high.base_model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    x = upsample(grid_input(), 2)
    c = high.certify(x, **KW, generator=gen(0))
    assert seen and all(on_grid(z) for z in seen)  # the lifted base model f' o AvgPool_2 sees grid points only
    # and f' sees their pooling: a deterministic function of the grid point
    assert all(torch.equal(p, avg_pool(z, 2)) for p, z in zip(low_model.inputs, seen, strict=True))
    tv = _tv(64, 0.5)
    assert (c.sound, c.grid, c.tv_bound) == (True, Q, tv)
    assert c.p_lower == max(float(S.clopper_pearson_lower(c.count, 400, 0.01)) - tv, 0.0)
    # sound=False and "auto" are carried over too
    assert lift(SmoothedClassifier(Linear2(), 2, 0.25, sound=False), factor=2).sound is False
    auto = lift(SmoothedClassifier(Linear2(), 2, 0.25, grid=16), factor=3)
    assert (auto.sound, auto.grid) == ("auto", 16)


def test_lifted_sound_radius_gives_up_the_offset_of_the_high_resolution_input():
    low = SmoothedClassifier(Linear2(bias=3.0), 2, 0.25, sound=True, pass_size=None)
    high = lift(low, factor=2)
    x = upsample(torch.randint(0, Q + 1, (1, 4, 4), generator=gen(1)).double() / Q, 2)
    xo = x + 0.5e-4 / Q
    exact, moved = high.certify(x, **KW, generator=gen(2)), high.certify(xo, **KW, generator=gen(2))
    assert exact.grid_offset == 0.0 and exact.radius > 0 and moved.count == exact.count
    assert moved.grid_offset == pytest.approx(8 * 0.5e-4 / Q, rel=1e-9)  # sqrt(64) coordinates
    assert moved.radius == pytest.approx(exact.radius - moved.grid_offset, abs=1e-12)


# ------------------------------------------------------------------ ensembles and a denoiser


@pytest.mark.parametrize("consensus", [None, 2])
def test_sound_ensemble_members_see_only_grid_points(consensus):
    members = [Linear2(bias=0.5), Linear2(bias=-0.5), Linear2(bias=1.5)]
    ens = Ensemble(members, consensus=consensus)
    sc = SmoothedClassifier(ens, 2, 0.25, pass_size=None)  # "auto": a grid input is certified in sound mode
    c = sc.certify(grid_input(), **KW, generator=gen(3))
    assert c.sound and c.tv_bound == _tv(16)
    assert c.p_lower == max(float(S.clopper_pearson_lower(c.count, 400, 0.01)) - c.tv_bound, 0.0)
    for m in members:
        assert m.inputs and all(on_grid(z) for z in m.inputs)
    sizes = [sum(len(z) for z in m.inputs) for m in members]
    if consensus == 2:  # the later member ran on the rows without consensus only: fewer, still grid points
        assert sizes[0] == sizes[1] == 450 and 0 < sizes[2] < 450 and ens.member_evaluations_saved > 0
    else:
        assert sizes == [450, 450, 450]


def test_sound_denoised_smoothing_feeds_the_denoiser_grid_points():
    torch.manual_seed(0)
    denoiser = DnCNN(1, depth=3, width=4)
    seen: list[torch.Tensor] = []
    denoiser.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    sc = SmoothedClassifier(compose(denoiser, classifier), 3, 0.25, sound=True, pass_size=None)
    x = grid_input()
    c = sc.certify(x, **KW, generator=gen(4))
    p = sc.predict(x, n=200, alpha=0.01, batch_size=100, generator=gen(5))
    a = sc.certify_adaptive(x, alpha=0.01, n_max=512, batch_size=256, generator=gen(6))
    assert len(seen) > 0 and all(on_grid(z) for z in seen)
    assert all(r.sound and r.tv_bound == _tv(16) for r in (c, p, a))
    # PREDICT's level gives up n * tv_bound; the sequential bounds move by tv_bound
    assert a.p_upper <= 1.0 and a.p_lower <= float(S.clopper_pearson_lower(a.count, a.n, 0.01))
    assert denoiser.training and classifier.training  # the modes were restored


def test_sound_predict_and_sequential_certify_see_grid_points_only():
    model = Linear2(bias=1.0)
    sc = SmoothedClassifier(model, 2, 0.25, pass_size=None)
    x = grid_input()
    p = sc.predict(x, n=300, alpha=0.01, batch_size=100, generator=gen(7))
    a = sc.certify_adaptive(x, alpha=0.01, n_max=1024, batch_size=256, generator=gen(8))
    assert p.sound and a.sound and all(on_grid(z) for z in model.inputs)
    assert sum(len(z) for z in model.inputs) == 300 + a.n_used


# ------------------------------------------------------------------ the false certificate of docs/sound.md §1


def _reader_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "false_certificate.py"
    spec = importlib.util.spec_from_file_location("false_certificate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _attack(base: torch.nn.Module, *, factor: int = 1, **kw) -> tuple[bool, float, int]:
    """CERTIFY at x = 0 and count at x' = 1/255 (28 x 28, upsampled by ``factor``): (false?, radius, label)."""
    sc = SmoothedClassifier(base, 2, 0.25, pass_size=None, **kw)
    if factor > 1:
        sc = lift(sc, factor=factor)
    x = upsample(torch.zeros(1, 28, 28), factor)
    x_adv = upsample(torch.full((1, 28, 28), 1 / 255), factor)
    dist = float((x_adv.double() - x.double()).norm())
    cert = sc.certify(x, n0=20, n=300, alpha=0.001, batch_size=300, generator=gen(0))
    counts = sc.sample_counts(x_adv[None], n=300, batch_size=300, generator=gen(1))[0]
    false = cert.label >= 0 and cert.radius > dist and int(counts[cert.label]) * 2 < 300
    return false, cert.radius, cert.label


def test_the_rounding_reader_false_certificate_is_not_produced_in_any_sound_composition():
    reader = _reader_module().RoundingReader

    def quiet_dncnn() -> DnCNN:  # D(z) = z - 0 = z exactly: a denoiser in front changes nothing here
        d = DnCNN(1, depth=3, width=2)
        torch.nn.init.zeros_(d.net[-1].weight)
        return d

    bases = {
        "plain": lambda: reader(),
        "ensemble": lambda: Ensemble([reader(), reader()]),
        "consensus": lambda: Ensemble([reader(), reader(), reader()], consensus=2),
        "denoised": lambda: compose(quiet_dncnn(), reader()),
    }
    for name, make in bases.items():
        # positive control: float mode gives the false certificate (radius above ||x' - x|| = 0.110)
        false, radius, label = _attack(make(), sound=False)
        assert false and label == 0 and radius > 0.3, name
        # "auto" (the default; x = 0 is a grid point, so sound mode): certifies class 1, true at x'
        false, radius, label = _attack(make())
        assert not false and label == 1, name
    assert _attack(reader(), sound=True)[1:] == _attack(reader())[1:]  # sound=True: the same certificate
    # lifted: the base f' o AvgPool_2 reads the pooled bits; in sound mode its certificate still holds
    false, _, _ = _attack(reader(), factor=2)
    assert not false


# ------------------------------------------------------------------ batch independence: eval mode


class TrainModeSensitive(torch.nn.Module):
    """BatchNorm and Dropout: in train mode an output depends on the rest of the batch (and on chance)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(16, 8),
            torch.nn.BatchNorm1d(8),
            torch.nn.Dropout(0.5),
            torch.nn.Linear(8, 3),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@contextlib.contextmanager
def _engine_without_eval_mode(monkeypatch):
    """The engine's own eval-mode guard switched off: what remains is the smoothed model's."""
    monkeypatch.setattr(engine, "eval_mode", lambda model: contextlib.nullcontext())
    yield


@pytest.mark.parametrize("sound", [True, False])
def test_sampling_runs_the_model_in_eval_mode_and_restores_its_mode(monkeypatch, sound):
    x = grid_input()
    trained = TrainModeSensitive().train()
    evaluated = TrainModeSensitive().eval()  # the same weights
    with _engine_without_eval_mode(monkeypatch):
        got = SmoothedClassifier(trained, 3, 0.25, sound=sound, pass_size=None).sample_counts(
            x[None], n=300, batch_size=64, generator=gen(9)
        )
        want = SmoothedClassifier(evaluated, 3, 0.25, sound=sound, pass_size=None).sample_counts(
            x[None], n=300, batch_size=64, generator=gen(9)
        )
    assert (got == want).all()
    assert trained.training and all(m.training for m in trained.modules())  # restored
    assert not evaluated.training
    # positive control: in train mode the model's output for one input depends on its batch
    trained.train()
    a = torch.rand(8, 1, 4, 4, generator=gen(1))
    b = torch.cat([a[:1], torch.rand(7, 1, 4, 4, generator=gen(2))])
    torch.manual_seed(0)
    out_a = trained(a)[0]
    torch.manual_seed(0)
    out_b = trained(b)[0]
    assert not torch.allclose(out_a, out_b)


def test_every_submodule_keeps_its_own_mode():
    model = TrainModeSensitive().train()
    model.net[2].eval()  # a frozen BatchNorm inside a model in training mode
    SmoothedClassifier(model, 3, 0.25, pass_size="auto", input_shape=(1, 4, 4)).certify(grid_input(), **KW)
    assert model.training and not model.net[2].training and model.net[3].training
    # control: restoring with model.train(previous) would switch the frozen BatchNorm to training mode
    model.eval()
    model.train(True)
    assert model.net[2].training


def test_the_mode_is_restored_after_an_exception():
    class Fails(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            assert not self.training, "sampled in train mode"
            raise RuntimeError("boom")

    model = Fails().train()
    with pytest.raises(RuntimeError, match="boom"):
        SmoothedClassifier(model, 2, 0.25, pass_size=None).certify(grid_input(), **KW)
    assert model.training


# ------------------------------------------------------------------ the pass-size probe's inputs


@pytest.mark.parametrize(("sound", "grid_points"), [(True, True), ("auto", True), (False, False)])
def test_the_pass_size_probe_feeds_grid_points_in_sound_and_auto_mode(sound, grid_points):
    model = Linear2()
    sc = SmoothedClassifier(model, 2, 0.25, sound=sound, pass_size="auto", input_shape=(1, 4, 4))
    probe = sc.probe_pass_size(batch_size=64)
    assert probe is not None and probe.passes > 0 and len(model.inputs) == probe.passes
    # sound and auto: every probe input is a grid point; float mode (control): uniform values, off the grid
    assert all(on_grid(z) == grid_points for z in model.inputs)
    assert len({round(float(v) * Q) for z in model.inputs for v in z.flatten()}) > 200  # spread over the grid


# ------------------------------------------------------------------ the top-level API


def test_top_level_names():
    from smoothcert import Ensemble as E
    from smoothcert import SmoothedRegressor, SmoothedSegmenter
    from smoothcert import lift as lift_

    assert E is Ensemble and lift_ is lift
    assert SmoothedSegmenter.__module__ == "smoothcert.smoothing.segmentation"
    assert SmoothedRegressor.__module__ == "smoothcert.smoothing.regression"
    assert {"Ensemble", "SmoothedRegressor", "SmoothedSegmenter", "lift"} <= set(smoothcert.__all__)
