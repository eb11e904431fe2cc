"""Tests for smoothcert.smoothing.noises: samplers (distribution, std, reproducibility, in place) and API."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats as st

from smoothcert.core import radii as R
from smoothcert.smoothing import noises as N

SIGMA = 0.5
N_DRAWS = 200_000
# KS p-value threshold: a correct sampler fails with probability 1e-4 for a fresh seed (the
# seeds are fixed, so the test is deterministic); the positive controls show that a 5%
# error in the scale is rejected far beyond this level at this sample size.
KS_P_MIN = 1e-4


def reference(name: str, sigma: float = SIGMA) -> st.rv_continuous:
    """The stated distribution with per-coordinate std sigma, from scipy."""
    return {
        "gaussian": st.norm(scale=sigma),
        "laplace": st.laplace(scale=sigma / math.sqrt(2)),
        "uniform": st.uniform(loc=-sigma * math.sqrt(3), scale=2 * sigma * math.sqrt(3)),
    }[name]


def draw(noise: N.Noise, shape: tuple[int, ...] = (N_DRAWS,), seed: int = 0) -> torch.Tensor:
    out = torch.empty(shape, dtype=torch.float32)
    return noise.sample_(out, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", N.NOISES)
def test_sampler_matches_stated_distribution(name: str) -> None:
    x = draw(N.make_noise(name, SIGMA), seed=123).double().numpy()
    ref = reference(name)
    assert ref.std() == pytest.approx(SIGMA)
    assert st.kstest(x, ref.cdf).pvalue > KS_P_MIN
    # per-coordinate std: the sample std is within 5 standard errors of sigma; SE of the
    # sample variance is sqrt((mu4 - sigma^4) / n), propagated to the std.
    kurt = ref.stats(moments="k") + 3.0
    se_std = SIGMA * math.sqrt((kurt - 1) / N_DRAWS) / 2
    assert abs(x.std() - SIGMA) < 5 * se_std
    assert abs(x.mean()) < 5 * SIGMA / math.sqrt(N_DRAWS)


@pytest.mark.parametrize("name", N.NOISES)
def test_ks_positive_control(name: str) -> None:
    """The KS test above rejects a sampler whose scale is 5% off, or the wrong family."""
    x = draw(N.make_noise(name, SIGMA), seed=123).double().numpy()
    assert st.kstest(x, reference(name, SIGMA * 1.05).cdf).pvalue < KS_P_MIN
    other = "laplace" if name == "gaussian" else "gaussian"
    assert st.kstest(x, reference(other).cdf).pvalue < KS_P_MIN


def test_gaussian_float64_draws_are_float64_normal_rounded_bitwise() -> None:
    """draws="float64" is 0.2's stream: a float64 normal_(0, sigma) draw rounded to float32 (its logs rely on it)."""
    for shape in [(7,), (3, 28, 28), (1000, 17)]:
        a = draw(N.Gaussian(0.25, draws="float64"), shape, seed=42)
        b = torch.empty(shape, dtype=torch.float64).normal_(0.0, 0.25, generator=torch.Generator().manual_seed(42))
        assert torch.equal(a, b.float())
    # control: the default float32 draws are another stream
    assert not torch.equal(
        draw(N.Gaussian(0.25), (3, 28, 28), seed=42), draw(N.Gaussian(0.25, draws="float64"), (3, 28, 28), seed=42)
    )
    # a float64 buffer always gets float64 draws
    g64 = N.Gaussian(0.25).sample_(torch.empty(100, dtype=torch.float64), torch.Generator().manual_seed(3))
    assert torch.equal(
        g64, torch.empty(100, dtype=torch.float64).normal_(0.0, 0.25, generator=torch.Generator().manual_seed(3))
    )


def _box_muller_reference(count: int, sigma: float, seed: int) -> torch.Tensor:
    """gaussian32_'s construction recomputed in float64 from the same generator stream (one chunk)."""
    g = torch.Generator().manual_seed(seed)
    half = (count + 1) // 2
    words = torch.empty(half, dtype=torch.int64).random_(-(2**63), None, generator=g)
    k = (words.view(torch.int32).to(torch.int64) >> 8) & 0xFFFFFF
    k1, k2 = k[:half].double(), k[half:].double()
    r = torch.sqrt(-2.0 * torch.log1p(-k1 * 2.0**-24)) * sigma
    tail = (k[:half] >= 2**24 - 2**14).nonzero().view(-1)
    v = torch.empty(tail.numel(), dtype=torch.float64).uniform_(generator=g)
    r[tail] = torch.sqrt(-2.0 * torch.log((1.0 - v) * 2.0**-10)) * sigma
    theta = 2.0 * math.pi * k2 * 2.0**-24
    return torch.cat([r * torch.cos(theta), r * torch.sin(theta)])[:count]


@pytest.mark.parametrize("count", [16, 1001, 200_000])
def test_gaussian32_is_box_muller_within_float32_rounding(count: int) -> None:
    """The float32 draws equal the Box–Muller construction computed in float64 on the same bits
    (tail redraws included) to within 8 float32 ulps of the pair's radius: the "few ulps"
    docs/noises.md states, checked coordinate by coordinate (the error is absolute in the angle,
    so a value near a zero of cos or sin has a larger relative error, never a larger absolute one)."""
    sigma = 0.7
    got = draw(N.Gaussian(sigma), (count,), seed=9).double()
    ref = _box_muller_reference(count, sigma, seed=9)
    half = (count + 1) // 2
    pair = torch.cat([ref[:half], ref[half:], torch.zeros(2 * half - count, dtype=torch.float64)])
    radius = torch.sqrt(pair[:half] ** 2 + pair[half:] ** 2).repeat(2)[:count]
    bound = 8 * 2.0**-24 * radius + 1e-12
    assert ((got - ref).abs() <= bound).all()
    # control: the check catches a planted error of one part in 10^5 in the radius
    assert not ((got * (1 + 1e-5) - ref).abs() <= bound).all()


def _tail_radii(monkeypatch: pytest.MonkeyPatch, *, refine: bool) -> np.ndarray:
    """Radii r/sigma of 200,000 pairs whose u1 bits all fall in the tail bucket (k1 = 2^24 - 1)."""

    def all_tail(out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return out.fill_(-1)  # every 24-bit field is 2^24 - 1: u1 = 2^-24 before any refinement

    monkeypatch.setattr(N, "random_bits64_", all_tail)
    if not refine:  # the planted bug: no coordinate is found in the tail bucket
        monkeypatch.setattr(N, "positions_at_least", lambda codes, first: torch.empty(0, dtype=torch.int64))
    x = N.Gaussian(1.0).sample_(torch.empty(400_000), torch.Generator().manual_seed(5)).double()
    return torch.sqrt(x[:200_000] ** 2 + x[200_000:] ** 2).numpy()


def test_gaussian32_tail_pairs_get_the_conditional_tail_law(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pairs whose u1 falls in (0, 2^-10] get a fresh radius from the exact conditional law:
    given u1 <= 2^-10, R^2 - 20 ln 2 ~ Exp(mean 2) (R^2 = -2 ln u1). KS at p > 1e-4 (seeded);
    the radius then reaches past float32's cut sqrt(48 ln 2) = 5.77, up to sqrt(126 ln 2) = 9.35.
    Positive control: without the refinement every radius is the float32 cut and the KS test rejects."""
    r = _tail_radii(monkeypatch, refine=True)
    excess = r**2 - 20 * math.log(2)
    assert excess.min() > -1e-4
    assert st.kstest(excess, st.expon(scale=2.0).cdf).pvalue > KS_P_MIN
    # P(R > sqrt(48 ln 2) | tail) = 2^-14: about 12 of 200,000 pairs; none with probability 6e-6
    assert r.max() > math.sqrt(48 * math.log(2))
    assert r.max() <= math.sqrt(126 * math.log(2)) + 1e-5
    control = _tail_radii(monkeypatch, refine=False)
    assert np.allclose(control, math.sqrt(48 * math.log(2)), rtol=1e-6)
    assert st.kstest(control**2 - 20 * math.log(2), st.expon(scale=2.0).cdf).pvalue < KS_P_MIN


def test_gaussian32_pairs_are_independent_normals() -> None:
    """The two halves of each pair are uncorrelated and their squared radius is chi^2_2:
    r^2 / sigma^2 ~ Exp(mean 2), KS at p > 1e-4 on 100,000 pairs (seeded)."""
    sigma = 0.3
    x = draw(N.Gaussian(sigma), (200_000,), seed=11).double().numpy() / sigma
    a, b = x[:100_000], x[100_000:]
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(100_000)
    assert st.kstest(a**2 + b**2, st.expon(scale=2.0).cdf).pvalue > KS_P_MIN


@pytest.mark.parametrize("name", N.NOISES)
def test_float_mode_tails_reach_past_the_float32_cut(name: str) -> None:
    """Samplers draw in float64: the transforms reach far beyond float32's 2^-24 resolution.

    The Laplace transform of the extreme float64 uniforms gives ``|x| = 53 b ln 2`` and
    ``52 b ln 2`` (float32 uniforms stopped at ``24 b ln 2``); the Gaussian's float64 draws
    are checked above; uniform noise has no tail to cut.
    """
    b = 0.3
    v = torch.tensor([-1.0, 1.0 - 2.0**-52, -(1.0 - 2.0**-52), 1.0 - 2.0**-24], dtype=torch.float64)
    x = N._laplace_from_uniform_(v.clone(), b)
    assert x[0].item() == pytest.approx(-53 * b * math.log(2), rel=1e-12)
    assert x[1].item() == pytest.approx(52 * b * math.log(2), rel=1e-12)
    assert x[2].item() == pytest.approx(-52 * b * math.log(2), rel=1e-12)
    assert x[3].item() == pytest.approx(24 * b * math.log(2), rel=1e-12)


def test_laplace_is_inverse_cdf_of_one_uniform_stream() -> None:
    """Laplace draws equal scipy's Laplace quantile of the float64 uniform_ stream u = (v + 1) / 2,
    drawn chunk by chunk (2^20) and computed independently, over more than one chunk."""
    n = 2 * N._CHUNK + 12345
    x = draw(N.Laplace(SIGMA), (n,), seed=9).double().numpy()
    g = torch.Generator().manual_seed(9)
    v = np.concatenate(
        [
            torch.empty(min(N._CHUNK, n - s), dtype=torch.float64).uniform_(-1.0, 1.0, generator=g).numpy()
            for s in range(0, n, N._CHUNK)
        ]
    )
    want = st.laplace.ppf((v + 1) / 2, scale=SIGMA / math.sqrt(2))
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-7)  # float32 rounding of the result


def test_laplace_transform_is_finite_at_endpoints() -> None:
    b = 0.3
    v = torch.tensor([-1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 1.0 - 2.0**-24], dtype=torch.float64)
    x = N._laplace_from_uniform_(v.clone(), b)
    assert torch.isfinite(x).all()
    assert x[0] == pytest.approx(-b * 53 * math.log(2)) and x[5] == pytest.approx(b * 53 * math.log(2))
    assert x[1] == pytest.approx(-b * math.log(2)) and x[4] == pytest.approx(b * math.log(2))
    assert x[2] == 0 and x[3] == 0


@pytest.mark.parametrize("name", N.NOISES)
def test_sampler_in_place_reproducible(name: str) -> None:
    noise = N.make_noise(name, SIGMA)
    out = torch.empty(4, 3, 5)
    ptr = out.data_ptr()
    ret = noise.sample_(out, torch.Generator().manual_seed(5))
    assert ret is out and out.data_ptr() == ptr and out.shape == (4, 3, 5) and out.dtype == torch.float32
    assert torch.equal(out, draw(noise, (4, 3, 5), seed=5))
    assert not torch.equal(out, draw(noise, (4, 3, 5), seed=6))
    # one generator advances: two consecutive draws differ, and replay from the same seed
    g = torch.Generator().manual_seed(5)
    first = noise.sample_(torch.empty(60), g).clone()
    second = noise.sample_(torch.empty(60), g)
    assert not torch.equal(first, second)
    assert torch.equal(first, out.view(-1))


@pytest.mark.parametrize("name", N.NOISES)
def test_sampler_float64_and_default_generator(name: str) -> None:
    noise = N.make_noise(name, SIGMA)
    out = noise.sample_(torch.empty(50_000, dtype=torch.float64), None)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    assert abs(out.std().item() - SIGMA) < 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", N.NOISES)
def test_sampler_on_cuda(name: str) -> None:
    noise = N.make_noise(name, SIGMA)
    out = torch.empty(N_DRAWS, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(3)
    x = noise.sample_(out, g)
    assert x.device.type == "cuda" and torch.isfinite(x).all()
    assert st.kstest(x.double().cpu().numpy(), reference(name).cdf).pvalue > KS_P_MIN
    assert torch.equal(x, noise.sample_(torch.empty_like(out), torch.Generator(device="cuda").manual_seed(3)))


def test_sampler_bad_buffer() -> None:
    noise = N.Laplace(1.0)
    with pytest.raises(TypeError, match=r"out must be a torch.Tensor, got ndarray"):
        noise.sample_(np.zeros(3), None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"floating-point dtype, got torch.int64"):
        noise.sample_(torch.zeros(3, dtype=torch.int64), None)
    with pytest.raises(ValueError, match=r"out must be contiguous"):
        noise.sample_(torch.zeros(4, 4).t(), None)


# --------------------------------------------------------------------------- API


def test_registry_and_parameterization() -> None:
    assert N.NOISES == ("gaussian", "laplace", "uniform") == R.NOISES
    g, lap, u = (N.make_noise(n, 0.5) for n in N.NOISES)
    assert isinstance(g, N.Gaussian) and isinstance(lap, N.Laplace) and isinstance(u, N.Uniform)
    assert g.scale == 0.5
    assert lap.scale == pytest.approx(0.5 / math.sqrt(2))
    assert u.scale == pytest.approx(0.5 * math.sqrt(3))
    assert g.norms == ("l2", "l1", "linf") and lap.norms == ("l1",) and u.norms == ("l1", "linf")
    for n in (g, lap, u):
        assert n.norms == R.supported_norms(n.name)
        assert n.to_dict() == {"name": n.name, "sigma": 0.5}
        assert N.make_noise(**n.to_dict()) == n
    assert repr(lap) == "Laplace(sigma=0.5)"
    assert isinstance(N.Uniform(1).sigma, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.sigma = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        N.Noise(1.0)  # type: ignore[abstract]


@pytest.mark.parametrize("name", N.NOISES)
def test_radius_and_threshold_delegate(name: str) -> None:
    noise = N.make_noise(name, 0.5)
    p = np.array([0.4, 0.6, 0.9])
    for norm in noise.norms:
        want = R.radius(name, p, sigma=0.5, norm=norm, dim=10)
        np.testing.assert_array_equal(noise.radius(p, norm=norm, dim=10), want)
        np.testing.assert_array_equal(
            noise.radius(p, norm=norm, dim=10, p_upper_b=0.05),
            R.radius(name, p, sigma=0.5, norm=norm, dim=10, p_upper_b=0.05),
        )
        assert noise.threshold(0.1, norm=norm, dim=10) == R.threshold(name, 0.1, sigma=0.5, norm=norm, dim=10)
        assert noise.check_norm(norm) == norm


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"noise must be one of gaussian, laplace, uniform, got 'cauchy'"):
        N.make_noise("cauchy", 1.0)
    with pytest.raises(ValueError, match=r"noise must be one of .* got 'Gaussian'"):
        N.make_noise("Gaussian", 1.0)
    for bad in (0.0, -0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"sigma must be > 0 and finite"):
            N.make_noise("laplace", bad)
    with pytest.raises(ValueError, match=r"sigma must be > 0 and finite, got -0.5"):
        N.Uniform(-0.5)
    with pytest.raises(TypeError, match=r"sigma must be a real number"):
        N.Gaussian("0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"norm must be one of l1, l2, linf, got 'l0'"):
        N.Gaussian(1.0).check_norm("l0")
    with pytest.raises(ValueError, match=r"norm 'l2' is not certified by laplace noise \(supported: l1\)"):
        N.Laplace(1.0).radius(0.9, norm="l2")
    with pytest.raises(ValueError, match=r"norm 'l2' is not certified by uniform noise"):
        N.Uniform(1.0).threshold(0.1, norm="l2")
    with pytest.raises(ValueError, match=r"dim .* required for norm 'linf'"):
        N.Uniform(1.0).radius(0.9, norm="linf")


def test_gaussian32_refuses_other_buffers() -> None:
    """gaussian32_ writes float32 only: a float64 or integer buffer is refused by type, naming the dtype."""
    with pytest.raises(TypeError, match="float64"):
        N.gaussian32_(torch.empty(4, dtype=torch.float64), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        N.gaussian32_(torch.empty(4, dtype=torch.int32), 0.5)
    assert N.gaussian32_(torch.empty(5), 0.5).isfinite().all()  # control: float32, odd size


def test_draws_option_is_checked_and_recorded() -> None:
    """draws= names float32 or float64 (a bad value is refused naming it); only Gaussian noise takes
    float32; to_dict records a non-default choice so make_noise(**d) rebuilds the same sampler."""
    with pytest.raises(ValueError, match=r"draws must be one of float32, float64, got 'float16'"):
        N.Gaussian(0.5, draws="float16")
    with pytest.raises(ValueError, match=r"draws='float32' applies to gaussian noise only"):
        N.make_noise("laplace", 0.5, draws="float32")
    assert N.make_noise("uniform", 0.5, draws="float64") == N.Uniform(0.5)
    legacy = N.make_noise("gaussian", 0.5, draws="float64")
    assert legacy.to_dict() == {"name": "gaussian", "sigma": 0.5, "draws": "float64"}
    assert N.make_noise(**legacy.to_dict()) == legacy != N.Gaussian(0.5)
    assert N.Gaussian(0.5).to_dict() == {"name": "gaussian", "sigma": 0.5}
    assert repr(legacy) == "Gaussian(sigma=0.5, draws='float64')"
