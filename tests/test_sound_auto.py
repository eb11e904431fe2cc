"""The API's mode choice (sound="auto" default, True, False) and the centre of sound certificates.

``sound="auto"`` certifies an input on the grid ``i / q`` in sound mode and any other input in
float mode, per input in a batch, with one SmoothingWarning the first time an input is off the
grid (docs/sound.md §5). A sound certificate's theorem is about the grid point ``round_q(x)``;
the radius about ``x`` gives up ``||x - round_q(x)||`` (``grid_offset``, docs/sound.md §2).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from smoothcert import SmoothedClassifier, SmoothingWarning
from smoothcert.core import lattice
from smoothcert.core import stats as S
from smoothcert.core.errors import ConfigError
from smoothcert.smoothing.smoothed import grid_offsets

Q = 255


class Recording(torch.nn.Module):
    """Two classes by the sign of a fixed linear score; keeps every input it is given."""

    def __init__(self, bias: float = 0.0) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []
        self.bias = bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.inputs.append(z.detach().clone())
        s = z.flatten(1).double().sum(1) - 0.5 * z[0].numel() + self.bias
        return torch.stack([-s, s], dim=1)


def on_grid(z: torch.Tensor, q: int = Q) -> bool:
    k = torch.round(z.double() * q)
    return bool(torch.equal(z, (k / q).to(z.dtype)))


def grid_input(shape=(1, 4, 4), seed=0, q: int = Q) -> torch.Tensor:
    return torch.randint(0, q + 1, shape, generator=torch.Generator().manual_seed(seed)).float() / q


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


KW = dict(n0=50, n=400, alpha=0.01, batch_size=200)

# ------------------------------------------------------------------ the mode of each input


def test_auto_is_the_default_and_certifies_grid_inputs_in_sound_mode():
    model = Recording()
    sc = SmoothedClassifier(model, 2, 0.25, pass_size=None)
    assert sc.sound == "auto" and sc.grid == Q
    x = grid_input()
    c = sc.certify(x, **KW, generator=gen(1))
    tv = 16 * lattice.lattice_table("gaussian", 0.25, Q).tv
    assert (c.sound, c.grid, c.tv_bound, c.grid_offset) == (True, Q, tv, 0.0)
    assert all(on_grid(z) for z in model.inputs)  # nothing but grid points reached the model
    # the same certificate as sound=True gives (same draws: the grid sampler)
    assert SmoothedClassifier(Recording(), 2, 0.25, sound=True, pass_size=None).certify(x, **KW, generator=gen(1)) == c
    # control: sound=False on the same grid input is float mode, whose inputs are off the grid
    model_f = Recording()
    cf = SmoothedClassifier(model_f, 2, 0.25, sound=False, pass_size=None).certify(x, **KW, generator=gen(1))
    assert (cf.sound, cf.grid, cf.tv_bound) == (False, None, 0.0)
    assert not any(on_grid(z) for z in model_f.inputs)


def test_auto_certifies_off_grid_inputs_in_float_mode_with_one_warning():
    sc = SmoothedClassifier(Recording(), 2, 0.25, pass_size=None)
    x = grid_input() + 0.3 / Q  # a third of a grid step off
    with pytest.warns(SmoothingWarning, match=r"sound='auto': an input is off the grid 1/255.*float mode") as rec:
        c = sc.certify(x, **KW, generator=gen(1))
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert (c.sound, c.grid, c.tv_bound, c.grid_offset) == (False, None, 0.0, 0.0)
    # float mode's certificate exactly (the float noise, the same draws)
    assert c == SmoothedClassifier(Recording(), 2, 0.25, sound=False, pass_size=None).certify(x, **KW, generator=gen(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per smoothed model: no second warning
        p = sc.predict(x, n=100, alpha=0.01, batch_size=100)
        a = sc.certify_adaptive(x, alpha=0.01, n_max=512, batch_size=256)
    assert (p.sound, p.tv_bound, a.sound, a.tv_bound) == (False, 0.0, False, 0.0)
    # a fresh smoothed model warns again (the registry is per instance); a grid input does not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SmoothedClassifier(Recording(), 2, 0.25, pass_size=None).certify(grid_input(), **KW)
    with pytest.warns(SmoothingWarning):
        SmoothedClassifier(Recording(), 2, 0.25, pass_size=None).predict(x, n=10, alpha=0.1, batch_size=10)


def test_sound_true_refuses_off_grid_inputs_and_sound_false_is_float_mode():
    strict = SmoothedClassifier(Recording(), 2, 0.25, sound=True, pass_size=None)
    xs = torch.stack([grid_input(), grid_input(seed=1) + 0.3 / Q])
    for call in (
        lambda: strict.certify_batch(xs, **KW),
        lambda: strict.predict_batch(xs, n=10, alpha=0.1, batch_size=10),
        lambda: strict.certify_adaptive_batch(xs, alpha=0.01, n_max=256, batch_size=128),
    ):
        with pytest.raises(ValueError, match=r"not on the grid 1/255 required by sound mode") as info:
            call()
        assert "\n" not in str(info.value)
    off = SmoothedClassifier(Recording(), 2, 0.25, sound=False, pass_size=None)
    assert off.grid is None and off.tv_bound(16) == 0.0
    assert [c.sound for c in off.certify_batch(xs, **KW)] == [False, False]


def test_grid_is_allowed_with_auto_and_refused_with_float_mode():
    q = 16
    model = Recording()
    sc = SmoothedClassifier(model, 2, 0.25, grid=q, pass_size=None)
    x = grid_input(q=q)
    c = sc.certify(x, **KW, generator=gen(0))
    assert (c.sound, c.grid) == (True, q) and c.tv_bound == 16 * lattice.lattice_table("gaussian", 0.25, q).tv
    assert all(on_grid(z, q) for z in model.inputs)
    with pytest.raises(ConfigError, match=r"grid=16 applies only to sound mode"):
        SmoothedClassifier(Recording(), 2, 0.25, sound=False, grid=16)
    for bad in ("yes", None, 1):
        with pytest.raises(ConfigError, match=r"sound must be True, False or 'auto'"):
            SmoothedClassifier(Recording(), 2, 0.25, sound=bad)  # type: ignore[arg-type]


def test_a_mixed_batch_is_split_per_input_and_each_result_is_that_of_the_input_alone():
    # rows 0 and 2 on the grid, row 1 off it: with one generator per input, each result equals the
    # one its input gets alone, in the mode of that input
    xs = torch.stack([grid_input(seed=0), grid_input(seed=1) + 0.3 / Q, grid_input(seed=2)])
    model = Recording(bias=1.0)
    sc = SmoothedClassifier(model, 2, 0.25, pass_size=None)
    with pytest.warns(SmoothingWarning):
        batch = sc.certify_batch(xs, **KW, generator=[gen(i) for i in range(3)])
        z = torch.cat(model.inputs)
        rows_on_grid = sum(on_grid(row) for row in z)
        assert (rows_on_grid, len(z)) == (2 * 450, 3 * 450)  # the noisy copies of rows 0 and 2 only
        preds = sc.predict_batch(xs, n=200, alpha=0.01, batch_size=100, generator=[gen(i) for i in range(3)])
        adaptive = sc.certify_adaptive_batch(
            xs, alpha=0.01, n_max=1024, batch_size=256, generator=[gen(10 + i) for i in range(3)]
        )
    assert [c.sound for c in batch] == [True, False, True] == [p.sound for p in preds] == [a.sound for a in adaptive]
    for i in range(3):
        mode = True if i != 1 else False
        alone = SmoothedClassifier(Recording(bias=1.0), 2, 0.25, sound=mode, pass_size=None)
        assert batch[i] == alone.certify(xs[i], **KW, generator=gen(i))
        assert preds[i] == alone.predict(xs[i], n=200, alpha=0.01, batch_size=100, generator=gen(i))
        ad = alone.certify_adaptive(xs[i], alpha=0.01, n_max=1024, batch_size=256, generator=gen(10 + i))
        assert adaptive[i] == ad
    # control: the other mode's certificate of a row differs (here in its fields), so the equality can fail
    other = SmoothedClassifier(Recording(bias=1.0), 2, 0.25, sound=False, pass_size=None)
    assert other.certify(xs[0], **KW, generator=gen(0)) != batch[0]
    # counts per input of a mixed batch, in input order, through the engine with n per input
    counts = sc.run_engine(xs, _votes(), n=[30, 0, 50], batch_size=64, generator=[gen(i) for i in range(3)])
    assert counts.sum(1).tolist() == [30, 0, 50]


def _votes():
    from smoothcert.smoothing.engine import ClassVotes

    return ClassVotes(2)


def test_certificates_from_counts_needs_the_inputs_unless_float_mode():
    x = grid_input()
    sc = SmoothedClassifier(Recording(bias=2.0), 2, 0.25, pass_size=None)
    g = gen(3)
    sel = sc.sample_counts(x[None], n=50, batch_size=200, generator=g)
    est = sc.sample_counts(x[None], n=400, batch_size=200, generator=g)
    with pytest.raises(ConfigError, match=r"needs xs="):
        sc.certificates_from_counts(sel, est, n0=50, n=400, alpha=0.01, dim=16)
    (got,) = sc.certificates_from_counts(sel, est, n0=50, n=400, alpha=0.01, xs=x[None])
    assert got == sc.certify(x, **KW, generator=gen(3)) and got.sound
    # one input for several rows of counts (several classifiers voting on shared draws)
    both = sc.certificates_from_counts(np.repeat(sel, 2, 0), np.repeat(est, 2, 0), n0=50, n=400, alpha=0.01, xs=x[None])
    assert both == [got, got]
    with pytest.raises(ValueError, match=r"dim=15 but the inputs xs have 16"):
        sc.certificates_from_counts(sel, est, n0=50, n=400, alpha=0.01, dim=15, xs=x[None])
    floatm = SmoothedClassifier(Recording(bias=2.0), 2, 0.25, sound=False)
    (f,) = floatm.certificates_from_counts(sel, est, n0=50, n=400, alpha=0.01, dim=16)
    assert not f.sound and f.p_lower == float(S.clopper_pearson_lower(f.count, 400, 0.01))


# ------------------------------------------------------------------ the centre: round_q(x), not x


def _grid64() -> torch.Tensor:
    """A float64 grid input: every coordinate is fl64(i / 255)."""
    return torch.randint(0, Q + 1, (1, 4, 4), generator=gen(0)).double() / Q


def _shifted(x: torch.Tensor) -> torch.Tensor:
    """``x`` moved by ``0.5e-4 / q`` in every coordinate: within the grid tolerance, so it rounds back to ``x``."""
    return x.double() + 0.5e-4 / Q


@pytest.mark.parametrize(
    ("noise", "norm", "expected"),
    [("gaussian", "l2", 4 * 0.5e-4 / Q), ("uniform", "l1", 16 * 0.5e-4 / Q), ("gaussian", "linf", 0.5e-4 / Q)],
)
def test_a_shifted_input_gets_the_exact_grid_radius_minus_its_offset(noise, norm, expected):
    x = _grid64()
    xo = _shifted(x)
    sc = SmoothedClassifier(Recording(bias=3.0), 2, 0.5, noise=noise, norm=norm, pass_size=None)
    exact = sc.certify(x, **KW, generator=gen(4))
    moved = sc.certify(xo, **KW, generator=gen(4))
    assert exact.grid_offset == 0.0 and exact.radius > 0 and moved.sound
    assert moved.count == exact.count and moved.p_lower == exact.p_lower  # the model saw the same grid points
    assert moved.grid_offset == pytest.approx(expected, rel=1e-9) and moved.grid_offset >= expected * (1 - 1e-12)
    assert moved.radius == pytest.approx(exact.radius - moved.grid_offset, abs=1e-12)
    assert moved.radius < exact.radius  # control: the subtraction happened
    # certify_batch, sequential CERTIFY (max-radius) and certificates_from_counts give up the same offset
    (b_exact, b_moved) = sc.certify_batch(torch.stack([x, xo]), **KW, generator=[gen(4), gen(4)])
    assert (b_exact, b_moved) == (exact, moved)
    ae = sc.certify_adaptive(x, alpha=0.01, n_max=1024, batch_size=256, generator=gen(5))
    am = sc.certify_adaptive(xo, alpha=0.01, n_max=1024, batch_size=256, generator=gen(5))
    assert ae.grid_offset == 0.0 and am.grid_offset == moved.grid_offset and am.count == ae.count
    assert am.radius == pytest.approx(ae.radius - am.grid_offset, abs=1e-12) and ae.radius > 0
    g = gen(4)
    sel = sc.sample_counts(xo[None], n=50, batch_size=200, generator=g)
    est = sc.sample_counts(xo[None], n=400, batch_size=200, generator=g)
    assert sc.certificates_from_counts(sel, est, n0=50, n=400, alpha=0.01, xs=xo[None]) == [moved]


def test_decision_mode_tests_the_radius_plus_the_offset():
    x = _grid64()
    xo = _shifted(x)
    sc = SmoothedClassifier(Recording(bias=3.0), 2, 0.5, pass_size=None)
    kw = dict(alpha=0.01, n_max=1024, batch_size=256, n_first=1024)  # one stage: the same bound every time
    first = sc.certify_adaptive(x, radius=0.1, **kw, generator=gen(6))
    assert first.decision == "certified" and first.radius > 0.1
    # test at a radius between the shifted input's radius and the exact one: certified only unshifted
    off = float(grid_offsets(xo[None], Q, "l2")[0])
    r = first.radius - off / 2
    kw["radius"] = r
    de = sc.certify_adaptive(x, **kw, generator=gen(6))
    dm = sc.certify_adaptive(xo, **kw, generator=gen(6))
    assert de.decision == "certified" and de.radius > r
    assert dm.decision != "certified" and dm.count == de.count
    assert dm.grid_offset == off


def test_grid_offsets_are_zero_for_stored_grid_points_and_bound_the_distance_otherwise():
    x32 = grid_input((3, 8, 8), seed=7)  # fl32(i / 255): how an 8-bit image is stored
    assert grid_offsets(x32, Q, "l2").tolist() == [0.0, 0.0, 0.0]
    assert grid_offsets(x32.double(), Q, "l2").tolist() != [0.0, 0.0, 0.0]  # fl32(i/255) is not fl64(i/255)
    assert grid_offsets(x32.double(), Q, "l2").max() < 8 * 2**-25  # ... but within float32 rounding of it
    x64 = (torch.randint(0, 256, (3, 64), generator=gen(1)).double() / Q) + torch.rand(
        3, 64, generator=gen(2)
    ).double() * 1e-6
    exact = np.sqrt((((x64.numpy() * Q - np.rint(x64.numpy() * Q)) / Q) ** 2).sum(1))
    got = grid_offsets(x64, Q, "l2")
    assert np.all(got >= exact) and np.allclose(got, exact, rtol=1e-9, atol=0)
    assert math.isclose(
        float(grid_offsets(x64, Q, "linf")[0]),
        float(np.abs(x64[0].numpy() - np.rint(x64[0].numpy() * Q) / Q).max()),
        rel_tol=1e-9,
    )


def test_split_batches_merge_every_reduction_in_input_order():
    # the dense tasks' reductions go through the same split: per-pixel votes and raw outputs
    from smoothcert.smoothing.engine import OutputSamples, PixelVotes
    from smoothcert.smoothing.smoothed import SmoothedModel

    def segmenter(z: torch.Tensor) -> torch.Tensor:  # 3 classes per pixel from the pixel's value
        return torch.cat([-z, z - 0.5, 0.2 * torch.ones_like(z)], dim=1)

    xs = torch.stack([grid_input(seed=0), grid_input(seed=1) + 0.3 / Q, grid_input(seed=2)])
    mixed = SmoothedModel(segmenter, 0.25, pass_size=None)
    with pytest.warns(SmoothingWarning):
        votes = mixed.run_engine(xs, PixelVotes(3), n=40, batch_size=64, generator=[gen(i) for i in range(3)])
        outs = mixed.run_engine(xs, OutputSamples(), n=[5, 6, 7], batch_size=64, generator=[gen(i) for i in range(3)])
    assert votes.shape == (3, 16, 3) and [len(o) for o in outs] == [5, 6, 7]
    for i in range(3):
        alone = SmoothedModel(segmenter, 0.25, sound=i != 1, pass_size=None)
        v = alone.run_engine(xs[i : i + 1], PixelVotes(3), n=40, batch_size=64, generator=[gen(i)])
        o = alone.run_engine(xs[i : i + 1], OutputSamples(), n=5 + i, batch_size=64, generator=[gen(i)])
        assert np.array_equal(votes[i], v[0]) and np.array_equal(outs[i], o[0])
    # control: swapping two rows' modes changes their votes, so the comparison above can fail
    swapped = SmoothedModel(segmenter, 0.25, sound=False, pass_size=None)
    v0 = swapped.run_engine(xs[:1], PixelVotes(3), n=40, batch_size=64, generator=[gen(0)])
    assert not np.array_equal(votes[0], v0[0])
