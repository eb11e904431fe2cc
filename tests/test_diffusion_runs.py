"""Diffusion denoised smoothing in the other certification paths (issue 28): sequential CERTIFY
(``certify --adaptive --diffusion``), torchrun sharding (ranks played one after the other in this
process, as in tests/test_distributed.py), and curve mode through the Python API in sound mode, where
every input the UNet receives must be the encoding of a grid point drawn by the sampler."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from synthdata import write_idx_dataset
from tinyddpm import tiny_unet, write_tiny_diffusion
from torch import nn

from smoothcert.cli.main import main
from smoothcert.io.logs import ADAPTIVE_COLUMNS, read_rows

diffusers = pytest.importorskip("diffusers")

SIGMA = 0.25


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A one-epoch small_cnn trained without noise on a synthetic Fashion-MNIST, and a tiny 28 x 28 DDPM."""
    root = tmp_path_factory.mktemp("diffusion-runs")
    data = write_idx_dataset(root / "data", n_train=32, n_test=8)
    train = ["train", "--dataset", "fashion-mnist", "--data-dir", str(data), "--arch", "small_cnn", "--sigma", "0"]
    assert main([*train, "--epochs", "1", "--batch", "16", "--out", str(root / "m"), "--quiet"]) == 0
    return root, data, write_tiny_diffusion(root / "ddpm")


def _strip_time(path: Path) -> list[list[str]]:
    rows = [ln.split("\t") for ln in path.read_text().splitlines()]
    t = rows[0].index("time")
    return [r[:t] + r[t + 1 :] for r in rows]


def test_sequential_certify_through_a_diffusion_model_records_its_keys(setup, tmp_path):
    """certify --adaptive --diffusion: sequential rows for every example, and an identity naming the
    diffusion model and its timestep next to the sequential settings."""
    from smoothcert.io.diffusion import diffusion_sha256
    from smoothcert.models.diffusion import choose_timestep

    root, data, ddpm = setup
    out = tmp_path / "seq.tsv"
    args = ["certify", "--model", str(root / "m"), "--data-dir", str(data), "--sigma", str(SIGMA), "--quiet"]
    args += [
        "--adaptive",
        "--n0",
        "8",
        "--n-max",
        "200",
        "--alpha",
        "0.05",
        "--max",
        "3",
        "--batch",
        "100",
        "--pass-size",
        "100",
    ]
    assert main([*args, "--device", "cpu", "--diffusion", str(ddpm), "--out", str(out)]) == 0
    identity = json.loads(Path(str(out) + ".json").read_text())["identity"]
    abar = diffusers.DDPMScheduler(num_train_timesteps=100).alphas_cumprod
    assert identity["diffusion_sha256"] == diffusion_sha256(ddpm)
    assert identity["diffusion_t"] == choose_timestep(abar, SIGMA)
    assert identity["adaptive"] is True and identity["n_max"] == 200 and identity["sound"] is True
    rows = read_rows(out, ADAPTIVE_COLUMNS)
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    n_used = ADAPTIVE_COLUMNS.index("n_used")
    assert all(8 < int(r[n_used]) <= 8 + 200 for r in rows)  # selection plus at least one look, at most n_max


@pytest.mark.parametrize("adaptive", [False, True])
def test_two_ranks_through_a_diffusion_model_merge_into_the_single_process_rows(setup, tmp_path, adaptive):
    """Rank 1 writes its part, rank 0 its part and the merge: the rows of one process, time aside, and the
    same identity (diffusion keys included). Control: the same shards without the diffusion model give
    other rows, so the comparison sees the diffusion model's effect."""
    from smoothcert.runs.certify import RunConfig, run
    from smoothcert.runtime.distributed import DistContext

    root, data, ddpm = setup
    common = dict(command="certify", model=str(root / "m"), data_dir=str(data), n0=10, alpha=0.05, seed=3)
    common.update(sigma=SIGMA, batch=100, pass_size=100, max=4, device="cpu", progress=False)  # no probe: fast
    common.update(dict(adaptive=True, n_max=120) if adaptive else dict(n=40))

    def sharded(out: Path, **more) -> Path:
        for rank in (1, 0):
            run(RunConfig(out=str(out), **common, **more), DistContext(rank=rank, world_size=2))
        return out

    single = run(RunConfig(out=str(tmp_path / "single.tsv"), diffusion=str(ddpm), **common))
    multi = sharded(tmp_path / "multi.tsv", diffusion=str(ddpm))
    assert _strip_time(multi) == _strip_time(single) and len(_strip_time(multi)) == 1 + 4
    identity = json.loads(Path(str(multi) + ".json").read_text())["identity"]
    assert identity == json.loads(Path(str(single) + ".json").read_text())["identity"]
    assert "diffusion_sha256" in identity and "diffusion_t" in identity
    assert not list(tmp_path.glob("multi.tsv.part*"))
    plain = sharded(tmp_path / "plain.tsv")
    assert _strip_time(plain) != _strip_time(single)


# ------------------------------------------------------------------ curve mode, Python API

SHAPE = (1, 8, 8)
Q = 255


class Recorder(nn.Module):
    """Passes its input to ``inner`` and keeps a copy of it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, *args):
        self.seen.append(args[0].detach().clone())
        return self.inner(*args)


def _curve(sound: bool | str, x: torch.Tensor, *, pass_size=None):
    from smoothcert.models.denoisers import compose
    from smoothcert.models.diffusion import DiffusionDenoiser
    from smoothcert.smoothing.classifier import SmoothedClassifier
    from smoothcert.smoothing.curve import certify_curve

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=100)
    unet = Recorder(tiny_unet(size=8))
    den = DiffusionDenoiser(unet, scheduler.alphas_cumprod, sigma=SIGMA).eval()
    front = Recorder(den)
    torch.manual_seed(1)
    model = compose(front, nn.Sequential(nn.Flatten(), nn.Linear(64, 3))).eval()
    smoothed = SmoothedClassifier(model, 3, SIGMA, input_shape=SHAPE, pass_size=pass_size, sound=sound)
    cert = certify_curve(
        smoothed, x, alpha=0.05, n_max=300, batch_size=64, n0=16, generator=torch.Generator().manual_seed(4)
    )
    return cert, den, front.seen, unet.seen


def _on_grid_exactly(z: torch.Tensor) -> bool:
    """``z`` is ``(i + j) / q`` for integers: what sound mode writes (one IEEE division of an exact integer)."""
    return torch.equal(z, torch.round(z * Q) / Q)


def test_curve_mode_in_sound_mode_feeds_the_unet_grid_points_plus_the_samplers_noise():
    """certify_curve on SmoothedClassifier(model o DiffusionDenoiser) in sound mode, for an input a
    quarter of the grid tolerance off its grid point: every input the denoiser receives is exactly a
    grid value ``(i + j) / 255`` (the grid point ``round(255 x)`` plus integer noise, never ``x`` plus
    noise), every UNet input is that value's encoding ``sqrt(abar_t) (2z - 1)`` bit for bit, one per draw
    (``n_used``), and the integer noise has the discretized Gaussian's standard deviation
    ``sqrt((255 sigma)^2 + 1/12) = 63.75``: over ``n_used * 64`` (> 5,000) coordinates the sample standard
    deviation's relative error is below 1% (one standard error), so 5%. Control: float mode feeds
    off-grid values (a draw lands on the grid with probability ~0)."""
    g = torch.Generator().manual_seed(0)
    grid_x = torch.randint(40, 216, SHAPE, generator=g).double() / Q
    x = (grid_x + 2.5e-5 / Q).float()  # within sound mode's tolerance (1e-4 of a step): its grid point is grid_x
    cert, den, zs, x_ts = _curve(True, x)
    assert cert.sound and cert.grid == Q and cert.n_used == cert.n0 + cert.n
    assert sum(len(z) for z in zs) == cert.n_used and len(x_ts) == len(zs)
    for z, x_t in zip(zs, x_ts, strict=True):
        assert _on_grid_exactly(z)
        assert torch.equal(x_t, den.encode(z))  # the UNet sees exactly the grid value's encoding
    j = torch.cat([(torch.round(z.double() * Q) - torch.round(grid_x * Q)).flatten() for z in zs])
    assert j.numel() > 5000
    expected = math.sqrt((Q * SIGMA) ** 2 + 1 / 12)
    assert abs(float(j.std()) / expected - 1) < 0.05

    fcert, _, fzs, _ = _curve(False, x)  # control: float mode, x + floating-point noise
    assert not fcert.sound and not any(_on_grid_exactly(z) for z in fzs)


def test_curve_mode_with_the_measured_pass_size_still_feeds_only_grid_points():
    """pass_size="auto" probes the model on synthetic inputs before sampling: those are grid points too,
    so the UNet still never receives an off-grid value in sound mode."""
    x = torch.randint(0, Q + 1, SHAPE, generator=torch.Generator().manual_seed(2)).float() / Q
    cert, den, zs, x_ts = _curve(True, x, pass_size="auto")
    assert cert.sound and sum(len(z) for z in zs) >= cert.n_used
    assert all(_on_grid_exactly(z) for z in zs)
    assert all(torch.equal(x_t, den.encode(z)) for z, x_t in zip(zs, x_ts, strict=True))
