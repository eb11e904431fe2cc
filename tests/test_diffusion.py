"""Diffusion denoised smoothing (Carlini et al. 2023; docs/diffusion.md): the timestep choice and the scaling
against written-out formulas, an oracle network as a positive control (with planted scaling bugs it must
catch), diffusers' directory format and its refusals, sound mode through the denoiser, certify, and a tiny
``train-diffusion`` run that resumes."""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from synthdata import write_idx_dataset
from tinyddpm import tiny_unet as _tiny_unet
from torch import nn

from smoothcert.core.errors import CheckpointError, ConfigError
from smoothcert.io.diffusion import (
    diffusion_sha256,
    load_diffusion,
    load_diffusion_denoiser,
    require_diffusers,
    save_diffusion,
)
from smoothcert.models.denoisers import compose
from smoothcert.models.diffusion import DiffusionDenoiser, choose_timestep, noise_to_signal
from smoothcert.smoothing.classifier import SmoothedClassifier

diffusers = pytest.importorskip("diffusers")

SHAPE = (1, 8, 8)


# ------------------------------------------------------------------ written-out schedules


def _alphas_bar(schedule: str, T: int) -> torch.Tensor:
    """abar_t = prod_{s <= t} (1 - beta_s), t = 0 .. T-1, in float64, from the schedules' definitions:
    linear betas from 1e-4 to 0.02 (Ho et al. 2020, Sec. 4); the cosine schedule of Nichol & Dhariwal
    (2021, Eq. 17) with s = 0.008, betas capped at 0.999."""
    if schedule == "linear":
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    else:

        def f(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_timestep_and_scaling_match_the_written_out_formulas(schedule):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule)
    abar = _alphas_bar(schedule, 1000)
    # float32 cumulative products of 1000 factors: relative error ~1e-5, so 1e-4 relative
    assert torch.allclose(scheduler.alphas_cumprod.double(), abar, rtol=1e-4, atol=1e-9)
    ratio = torch.sqrt((1 - abar) / abar)
    # near t = 0, 1 - abar ~ 4e-5 carries float32's ~6e-8 rounding of abar: relative error up to ~1e-3
    assert torch.allclose(noise_to_signal(scheduler.alphas_cumprod), ratio, rtol=2e-3)
    for sigma in (0.12, 0.25, 0.5, 1.0):
        t = choose_timestep(scheduler.alphas_cumprod, sigma)
        assert t == int(torch.argmin((ratio - 2 * sigma).abs())), sigma  # nearest to 2 sigma, not to sigma
        assert abs(float(ratio[t]) - 2 * sigma) < float(ratio[t + 1] - ratio[t - 1])  # within a step
        den = DiffusionDenoiser(nn.Identity(), scheduler.alphas_cumprod, sigma=sigma)
        assert den.timestep == t
        z = torch.rand(2, *SHAPE)
        expected = math.sqrt(float(abar[t])) * (2 * z.double() - 1)  # x_t = sqrt(abar_t) (2z - 1)
        assert torch.allclose(den.encode(z).double(), expected, rtol=1e-4, atol=1e-6)
    # at sigma = 0.5 (ratio 1, abar = 1/2) the linear schedule's t is where abar crosses 1/2
    if schedule == "linear":
        t = choose_timestep(scheduler.alphas_cumprod, 0.5)
        assert float(abar[t - 1]) > 0.5 - 2e-3 and float(abar[t + 1]) < 0.5 + 2e-3


def test_the_nearest_ratio_wins_and_a_sigma_beyond_the_schedule_is_refused():
    abar = torch.tensor([0.8, 0.5, 0.2], dtype=torch.float64)  # ratios 0.5, 1, 2 (up to rounding)
    assert [choose_timestep(abar, s) for s in (0.1, 0.3, 0.45, 0.7, 0.95)] == [0, 0, 1, 1, 2]
    with pytest.raises(ConfigError, match=r"sigma=1.01 is beyond the diffusion schedule.*sigma up to 1\b"):
        choose_timestep(abar, 1.01)
    with pytest.raises(ConfigError, match="sigma must be a finite number > 0"):
        choose_timestep(abar, 0.0)


# ------------------------------------------------------------------ oracle network


class Oracle(nn.Module):
    """A network that knows the clean image and the noise: returns exactly the target of its prediction type."""

    def __init__(self, x: torch.Tensor, e: torch.Tensor, abar: float, kind: str) -> None:
        super().__init__()
        self.x0, self.e, self.abar, self.kind = 2 * x - 1, e, abar, kind

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = math.sqrt(self.abar), math.sqrt(1 - self.abar)
        if self.kind == "epsilon":
            return self.e
        if self.kind == "sample":
            return self.x0
        return a * self.e - s * self.x0  # the velocity


class NoScale(DiffusionDenoiser):
    def encode(self, z):  # planted bug: forgets sqrt(abar_t)
        return 2 * z - 1


class NoRange(DiffusionDenoiser):
    def encode(self, z):  # planted bug: forgets the map to [-1, 1]
        return math.sqrt(self.abar) * z


class NoDivide(DiffusionDenoiser):
    def decode(self, x_t, out):  # planted bug: forgets dividing by sqrt(abar_t)
        return x_t - math.sqrt(1 - self.abar) * out


def _exact_case(kind: str, cls: type[DiffusionDenoiser] = DiffusionDenoiser) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise x + sigma e with the oracle, sigma matching timestep 300 of the linear schedule exactly."""
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=kind)
    abar = float(scheduler.alphas_cumprod[300])
    sigma = math.sqrt((1 - abar) / abar) / 2
    gen = torch.Generator().manual_seed(3)
    x = 0.05 + 0.9 * torch.rand(4, *SHAPE, generator=gen)  # inside (0, 1): clipping does nothing
    e = torch.randn(4, *SHAPE, generator=gen)
    den = cls(Oracle(x, e, abar, kind), scheduler.alphas_cumprod, sigma=sigma, prediction_type=kind)
    assert den.timestep == 300
    with torch.no_grad():
        return den(x + sigma * e), x


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_the_oracle_recovers_the_clean_image(kind):
    """Positive control: with the network's exact target, x_0 = x. The noise has std 2 sigma = 0.47 in
    [-1, 1]; float32 rounding leaves errors ~1e-6, so 1e-5."""
    out, x = _exact_case(kind)
    assert (out - x).abs().max() < 1e-5


@pytest.mark.parametrize("bug", [NoScale, NoRange, NoDivide])
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_the_same_check_catches_a_wrong_scaling(kind, bug):
    out, x = _exact_case(kind, bug)
    assert (out - x).abs().max() > 0.01


def test_output_is_clipped_to_pixels_and_a_learned_variance_half_is_ignored():
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)

    class Wide(nn.Module):
        def forward(self, x_t, t):  # noise prediction in channel 0, junk "variance" in channel 1
            return torch.cat([torch.full_like(x_t, -50.0), torch.full_like(x_t, 1e6)], 1)

    den = DiffusionDenoiser(Wide(), scheduler.alphas_cumprod, sigma=0.25)
    out = den(torch.rand(2, *SHAPE))
    assert out.shape == (2, *SHAPE) and torch.equal(out, torch.ones_like(out))  # -50 noise: clipped at 1


# ------------------------------------------------------------------ diffusers' format


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny UNet and a 100-step linear schedule in DDPMPipeline's layout."""
    out = tmp_path_factory.mktemp("ddpm") / "model"
    save_diffusion(out, _tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100))
    return out


def test_round_trip_through_diffusers_format(saved, tmp_path):
    assert {p.name for p in saved.iterdir()} >= {"model_index.json", "unet", "scheduler"}
    assert (saved / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    diffusers.DDPMPipeline.from_pretrained(str(saved))  # a directory diffusers itself loads
    den, identity = load_diffusion_denoiser(saved, sigma=0.25, image_shape=SHAPE)
    unet, scheduler = _tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100)
    direct = DiffusionDenoiser(unet, scheduler.alphas_cumprod, sigma=0.25)
    z = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(den(z), direct(z))
    assert identity == {"diffusion_sha256": diffusion_sha256(saved), "diffusion_t": direct.timestep}
    assert den.info()["timestep"] == direct.timestep and den.prediction_type == "epsilon"

    flat = tmp_path / "flat"  # the same files in one folder (unet config, weights, scheduler config)
    unet.save_pretrained(str(flat))
    scheduler.save_pretrained(str(flat))
    assert diffusion_sha256(flat) == diffusion_sha256(saved)  # the hash is of the files, not the layout
    flat_den, _ = load_diffusion_denoiser(flat, sigma=0.25, image_shape=SHAPE)
    with torch.no_grad():
        assert torch.equal(flat_den(z), direct(z))
    with torch.no_grad():  # positive control: other weights, another hash
        next(unet.parameters()).add_(1e-3)
    unet.save_pretrained(str(flat))
    assert diffusion_sha256(flat) != diffusion_sha256(saved)


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_mismatches_are_refused_in_one_line(saved, tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as e:
        load_diffusion_denoiser(saved, sigma=0.25, image_shape=(1, 16, 16))
    assert "trained on 8x8 images but the data are 16x16" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        load_diffusion_denoiser(saved, sigma=0.25, image_shape=(3, 8, 8))
    assert "takes 1-channel images but the data have 3 channels" in _one_line(e)
    # 100 linear steps reach only abar_99 = 0.364 (written out): ratio 1.32, so sigma up to 0.66
    ratio = float(torch.sqrt((1 - _alphas_bar("linear", 100)) / _alphas_bar("linear", 100))[-1])
    assert abs(ratio - 1.323) < 1e-3
    with pytest.raises(ConfigError) as e:
        load_diffusion_denoiser(saved, sigma=1.0, image_shape=SHAPE)
    assert "beyond the diffusion schedule" in _one_line(e)
    stated = float(re.search(r"sigma up to ([0-9.]+)", str(e.value))[1])  # type: ignore[index]
    assert abs(stated - ratio / 2) < 1e-3
    load_diffusion_denoiser(saved, sigma=0.66, image_shape=SHAPE)  # just inside: accepted, t = 99

    broken = tmp_path / "no-scheduler"
    save_diffusion(broken, _tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100))
    (broken / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(CheckpointError) as e:
        load_diffusion_denoiser(broken, sigma=0.25, image_shape=SHAPE)
    assert "no scheduler config" in _one_line(e)

    pickled = tmp_path / "pickled"
    save_diffusion(pickled, _tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100))
    weights = pickled / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(CheckpointError) as e:
        load_diffusion(pickled)
    assert "is a pickle file" in _one_line(e)
    with pytest.raises(CheckpointError) as e:
        load_diffusion(tmp_path / "absent")
    assert "is not a directory" in _one_line(e)

    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if the extra were not installed
    with pytest.raises(ConfigError) as e:
        require_diffusers()
    assert "pip install 'smoothcert[diffusion]'" in _one_line(e)
    with pytest.raises(ConfigError, match=r"smoothcert\[diffusion\]"):
        load_diffusion_denoiser(saved, sigma=0.25, image_shape=SHAPE)


def test_a_class_conditional_unet_is_refused_when_loaded(saved, tmp_path):
    """Its forward needs class labels that smoothing cannot give: refused in one line at load (0.3 loaded
    it, and certify failed at the first forward pass with diffusers' traceback, after writing its log's
    header and sidecar). Control: the unconditional UNet of the same settings loads and denoises."""
    z = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    for config, fragment in (
        ({"num_class_embeds": 10}, "num_class_embeds=10"),
        ({"class_embed_type": "identity"}, "class_embed_type='identity'"),
    ):
        path = tmp_path / fragment.split("=")[0]
        save_diffusion(path, _tiny_unet(**config), diffusers.DDPMScheduler(num_train_timesteps=100))
        with pytest.raises(ConfigError) as e:
            load_diffusion_denoiser(path, sigma=0.25, image_shape=SHAPE)
        assert f"is class-conditional ({fragment})" in _one_line(e)
    den, _ = load_diffusion_denoiser(saved, sigma=0.25, image_shape=SHAPE)
    with torch.no_grad():
        assert den(z).shape == z.shape


def test_a_unet_without_sample_size_takes_any_size_its_levels_divide(tmp_path):
    """diffusers' UNet2DModel may leave sample_size unset (None): it is fully convolutional, so it takes any
    image whose sides its down-sampling halves exactly (0.3 failed on it with a TypeError reading the
    missing size). The same weights with and without sample_size denoise alike; 7 x 7 (odd) is refused."""
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=100)
    save_diffusion(tmp_path / "unsized", _tiny_unet(size=None), scheduler)
    z = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    den, _ = load_diffusion_denoiser(tmp_path / "unsized", sigma=0.25, image_shape=SHAPE)
    sized = DiffusionDenoiser(_tiny_unet(), scheduler.alphas_cumprod, sigma=0.25)
    with torch.no_grad():
        assert torch.equal(den(z), sized(z))
    load_diffusion_denoiser(tmp_path / "unsized", sigma=0.25, image_shape=(1, 12, 6))  # even sides: accepted
    with pytest.raises(ConfigError) as e:
        load_diffusion_denoiser(tmp_path / "unsized", sigma=0.25, image_shape=(1, 7, 7))
    assert "halves images 1 times, which 7x7 images do not allow" in _one_line(e)


# ------------------------------------------------------------------ smoothing through the denoiser


class Recorder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, z):
        self.seen.append(z.detach().clone())
        return self.inner(z)


def _smoothed(saved: Path, *, sound: bool) -> tuple[SmoothedClassifier, Recorder]:
    den, _ = load_diffusion_denoiser(saved, sigma=0.25, image_shape=SHAPE)
    torch.manual_seed(1)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    recorder = Recorder(den)
    model = compose(recorder, classifier).eval()
    return SmoothedClassifier(model, 3, 0.25, input_shape=SHAPE, pass_size=None, sound=sound), recorder


def _grid_distance(seen: list[torch.Tensor]) -> float:
    """Largest distance of a recorded input from the grid i / 255, in grid steps."""
    steps = torch.cat([s.flatten() for s in seen]).double() * 255
    return float((steps - steps.round()).abs().max())


@pytest.mark.parametrize("sound", [False, True])
def test_certify_through_the_diffusion_denoiser_and_sound_mode_feeds_the_grid(saved, sound):
    """In sound mode every input the denoiser receives is on the grid i/255 (float32 rounding of i/255
    for |i| < 2000 is below 1e-3 steps); in float mode (the positive control) inputs lie off it, about
    half a step at worst among 2 * 48 * 64 draws."""
    smoothed, recorder = _smoothed(saved, sound=sound)
    x = torch.randint(0, 256, SHAPE, generator=torch.Generator().manual_seed(0)).float() / 255
    certs = [
        smoothed.certify(x, n0=16, n=32, alpha=0.05, batch_size=48, generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    assert certs[0] == certs[1]  # deterministic denoiser, same seed: same certificate
    assert certs[0].label in (-1, 0, 1, 2) and certs[0].radius >= 0
    assert sum(len(s) for s in recorder.seen) == 2 * (16 + 32)  # every draw passed through the denoiser
    distance = _grid_distance(recorder.seen)
    if sound:
        assert distance < 1e-3
    else:
        assert distance > 0.4
    z = recorder.seen[0]
    with torch.no_grad():
        assert torch.equal(recorder.inner(z), recorder.inner(z))  # same input, same output


# ------------------------------------------------------------------ train-diffusion


def _main_with_train_diffusion(monkeypatch):
    """The CLI's main, where ``train-diffusion`` is registered."""
    cli = importlib.import_module("smoothcert.cli.main")
    assert "train-diffusion" in cli._COMMANDS
    return cli.main


def test_train_diffusion_trains_resumes_loads_and_refuses_in_one_line(tmp_path, monkeypatch, capsys):
    main = _main_with_train_diffusion(monkeypatch)
    data = write_idx_dataset(tmp_path / "fmnist", n_train=16, n_test=4)
    out = tmp_path / "ddpm"
    args = ["train-diffusion", "--dataset", "fashion-mnist", "--data-dir", str(data), "--out", str(out)]
    args += ["--channels", "8,16", "--norm-groups", "4", "--no-attention", "--timesteps", "50", "--batch", "8"]
    args += ["--eval-limit", "4", "--eval-sigma", "0.25", "--device", "cpu", "--quiet"]
    assert main([*args, "--epochs", "1"]) == 0
    assert main([*args, "--epochs", "2"]) == 0  # trains epoch 2 only
    log = (out / "train_log.tsv").read_text().splitlines()
    assert log[0].split("\t") == ["epoch", "lr", "train_loss", "test_loss", "denoise_mse", "time"]
    assert [r.split("\t")[0] for r in log[1:]] == ["1", "2"]
    meta = json.loads((out / "smoothcert_diffusion.json").read_text())
    assert meta["epochs"] == 2 and meta["kind"] == "diffusion" and meta["train_config"]["channels"] == [8, 16]
    assert all(math.isfinite(meta[k]) for k in ("train_loss", "test_loss", "denoise_mse"))
    den, identity = load_diffusion_denoiser(out, sigma=0.25, image_shape=(1, 28, 28))
    assert identity["diffusion_t"] == den.timestep and den.prediction_type == "epsilon"
    capsys.readouterr()

    assert main([*args, "--epochs", "3", "--lr", "0.001"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lr: 0.0002 there, 0.001 now" in err, err
    assert main([*args, "--epochs", "1", "--channels", "8,10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "multiples of norm_groups=4" in err, err


# ------------------------------------------------------------------ certify --diffusion


def test_certify_with_a_diffusion_directory_records_it_and_refuses_mismatches(saved, tmp_path, capsys):
    """``certify --diffusion DIR`` smooths model(D(x + noise)) with a classifier trained without noise; the
    log's identity names the diffusion model (sha256) and its timestep. Refused in one line, writing
    nothing: a diffusion model of another image size or a class-conditional one (positive control: the
    matching one runs), and --diffusion together with --denoiser."""
    from smoothcert.cli.main import main

    data = write_idx_dataset(tmp_path / "fmnist", n_train=32, n_test=4)
    clf = tmp_path / "plain"
    train = ["train", "--dataset", "fashion-mnist", "--data-dir", str(data), "--arch", "small_cnn", "--sigma", "0"]
    assert main([*train, "--epochs", "1", "--batch", "16", "--train-limit", "16", "--out", str(clf), "--quiet"]) == 0
    ddpm = tmp_path / "ddpm28"
    save_diffusion(ddpm, _tiny_unet(size=28), diffusers.DDPMScheduler(num_train_timesteps=100))
    base = ["certify", "--model", str(clf), "--data-dir", str(data), "--sigma", "0.25", "--quiet"]
    base += ["--n0", "5", "--n", "20", "--max", "2", "--batch", "50"]
    out = tmp_path / "cert.tsv"
    assert main([*base, "--diffusion", str(ddpm), "--out", str(out)]) == 0
    identity = json.loads((tmp_path / "cert.tsv.json").read_text())["identity"]
    abar = diffusers.DDPMScheduler(num_train_timesteps=100).alphas_cumprod
    assert identity["diffusion_sha256"] == diffusion_sha256(ddpm)
    assert identity["diffusion_t"] == choose_timestep(abar, 0.25)
    assert identity["sound"] is True and len(out.read_text().splitlines()) == 3
    capsys.readouterr()
    conditional = tmp_path / "conditional28"
    save_diffusion(conditional, _tiny_unet(size=28, num_class_embeds=10), diffusers.DDPMScheduler())
    for extra, fragment in (
        (["--diffusion", str(saved)], "8x8 images"),  # an 8 x 8 diffusion model for 28 x 28 images
        (["--diffusion", str(conditional)], "class-conditional"),
        (["--diffusion", str(ddpm), "--denoiser", str(clf)], "denoiser"),
    ):
        bad = tmp_path / "bad.tsv"
        assert main([*base, *extra, "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1, err
        assert not bad.exists() and not (tmp_path / "bad.tsv.json").exists()
