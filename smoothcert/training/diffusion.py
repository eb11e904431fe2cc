"""Training a small DDPM (Ho et al., NeurIPS 2020) for diffusion denoised smoothing (``docs/diffusion.md`` §6).

A ``diffusers.UNet2DModel`` and a ``DDPMScheduler`` on a data set's training images, mapped to
``[-1, 1]``: each example gets a uniform timestep ``t`` and fresh noise ``eps``, ``x_t =
sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, and the loss is the mean squared error of the network's
output to its target (``eps``, ``x0`` or the velocity, per ``prediction_type``). Adam with a step
schedule. No augmentation: the model learns the images as they are.

The run directory follows :mod:`smoothcert.training.checkpoint` (``checkpoint.safetensors`` with the
last finished epoch, resumed by a rerun, refused when the identity differs; ``train_log.tsv``) and
at the end holds the model in ``DDPMPipeline``'s layout (:func:`smoothcert.io.diffusion.save_diffusion`)
plus ``smoothcert_diffusion.json`` (settings, held-out figures, versions). Each epoch's log row has
the held-out loss and the held-out MSE of the one-shot denoiser at ``eval_sigma``
(:class:`~smoothcert.models.diffusion.DiffusionDenoiser`), both on a fixed-seed draw.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from smoothcert.core.checks import check_int, check_sigma
from smoothcert.core.errors import ConfigError
from smoothcert.io.checkpoints import versions
from smoothcert.io.data import get_spec, load_dataset
from smoothcert.io.diffusion import require_diffusers, save_diffusion
from smoothcert.io.files import commit_file
from smoothcert.models.diffusion import PREDICTION_TYPES, DiffusionDenoiser, choose_timestep
from smoothcert.runtime.devices import resolve_device
from smoothcert.runtime.progress import progress
from smoothcert.training.checkpoint import CheckpointFormat, check_run_settings, resume, save_checkpoint

__all__ = ["BETA_SCHEDULES", "DiffusionConfig", "build_unet", "diffusion_loss", "train_diffusion"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
META = "smoothcert_diffusion.json"
CHECKPOINT = CheckpointFormat(
    key="smoothcert_diffusion_checkpoint",
    identity_field="identity",
    log_header="epoch\tlr\ttrain_loss\ttest_loss\tdenoise_mse\ttime",
    what="diffusion run",
)
# fields of DiffusionConfig that change the trained weights; a run resumes only if they agree
_IDENTITY = (
    "dataset",
    "batch",
    "lr",
    "lr_step",
    "gamma",
    "channels",
    "layers_per_block",
    "attention",
    "norm_groups",
    "timesteps",
    "beta_schedule",
    "prediction_type",
    "seed",
    "train_limit",
)


@dataclass(frozen=True)
class DiffusionConfig:
    """Settings of ``smoothcert train-diffusion`` (a small DDPM; ``docs/diffusion.md`` §6)."""

    dataset: str
    out: str
    epochs: int = 10
    batch: int = 64
    lr: float = 2e-4
    lr_step: int = 1000
    gamma: float = 0.1
    channels: tuple[int, ...] = (32, 64, 64)  # block_out_channels: one resolution level each
    layers_per_block: int = 1
    attention: bool = True  # self-attention at the lowest resolution
    norm_groups: int = 8
    timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    eval_sigma: float = 0.5  # the held-out one-shot denoising MSE of each epoch is measured at this sigma
    eval_limit: int = 500
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    train_limit: int | None = None
    data_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_run_settings(self)
        get_spec(self.dataset)
        if not self.channels:
            raise ConfigError("channels must name at least one level, got ()")
        ints = []
        for c in self.channels:
            if float(c) != int(c) or int(c) < 1:
                raise ConfigError(f"channels must be integers >= 1, got {self.channels!r}")
            ints.append(int(c))
        object.__setattr__(self, "channels", tuple(ints))
        check_int("layers_per_block", self.layers_per_block, 1)
        check_int("norm_groups", self.norm_groups, 1)
        bad = [c for c in ints if c % self.norm_groups]
        if bad:
            raise ConfigError(f"channels {list(ints)} must be multiples of norm_groups={self.norm_groups}")
        check_int("timesteps", self.timesteps, 2)
        check_int("eval_limit", self.eval_limit, 1)
        check_sigma(self.eval_sigma)
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {self.prediction_type!r}"
            )


def build_unet(config: DiffusionConfig, image_shape: tuple[int, ...]) -> nn.Module:
    """The ``UNet2DModel`` of ``config`` for images ``(c, h, w)``; ``h`` and ``w`` must halve at each level."""
    diffusers = require_diffusers()
    c, h, w = image_shape
    levels = len(config.channels)
    if h != w or h % 2 ** (levels - 1):
        raise ConfigError(f"{levels} channel levels halve the image {levels - 1} times, which {h}x{w} does not allow")
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if config.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return diffusers.UNet2DModel(
        sample_size=h,
        in_channels=c,
        out_channels=c,
        block_out_channels=config.channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_groups,
    )


def diffusion_loss(
    unet: nn.Module, scheduler: Any, x: torch.Tensor, *, generator: torch.Generator | None
) -> torch.Tensor:
    """The DDPM loss of a batch ``x`` of ``[0, 1]`` images: uniform timesteps, fresh noise, MSE to the target."""
    x0 = 2 * x - 1
    t = torch.randint(0, len(scheduler.alphas_cumprod), (len(x),), generator=generator, device=x.device)
    eps = torch.randn(x0.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_t = scheduler.add_noise(x0, eps, t)
    kind = scheduler.config.prediction_type
    target = eps if kind == "epsilon" else x0 if kind == "sample" else scheduler.get_velocity(x0, eps, t)
    return F.mse_loss(unet(x_t, t).sample, target)


def _evaluate(
    unet: nn.Module, scheduler: Any, images: torch.Tensor, *, sigma: float, device: torch.device
) -> tuple[float, float]:
    """Held-out loss, and MSE in ``[0, 1]`` pixels of the one-shot denoiser at ``sigma`` (fixed seeds)."""
    gen = torch.Generator(device=device).manual_seed(0)
    was = unet.training
    unet.eval()
    denoiser = DiffusionDenoiser(
        unet, scheduler.alphas_cumprod, sigma=sigma, prediction_type=scheduler.config.prediction_type
    )
    loss_sum = se = 0.0
    with torch.inference_mode():
        for x in images.split(100):
            x = x.to(device)
            loss_sum += float(diffusion_loss(unet, scheduler, x, generator=gen)) * len(x)
            noisy = x + sigma * torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype)
            se += float(((denoiser(noisy) - x) ** 2).sum())
    unet.train(was)
    return loss_sum / len(images), se / images.numel()


def _previous_train_loss(path: Path, epochs: int) -> float | None:
    """The ``train_loss`` of a finished run's record with ``epochs`` epochs, or None."""
    try:
        meta = json.loads(path.read_text())
        return float(meta["train_loss"]) if int(meta["epochs"]) == epochs else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train_diffusion(config: DiffusionConfig) -> dict[str, Any]:
    """Train (or resume) a DDPM on ``config.dataset``; returns what ``smoothcert_diffusion.json`` holds."""
    from smoothcert.training.loop import epoch_seeds

    diffusers = require_diffusers()
    spec = get_spec(config.dataset)
    device = resolve_device(config.device)
    shape = tuple(int(v) for v in spec.input_shape)
    train_set: Dataset[Any] = load_dataset(config.dataset, "train", config.data_dir)
    test_set = load_dataset(config.dataset, "test", config.data_dir)
    if config.train_limit is not None:
        train_set = Subset(train_set, range(min(config.train_limit, len(train_set))))  # type: ignore[arg-type]
    held_out = torch.stack([test_set[i][0] for i in range(min(config.eval_limit, len(test_set)))])  # type: ignore[arg-type]
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=config.timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
    )
    choose_timestep(scheduler.alphas_cumprod, config.eval_sigma)  # refuse an eval_sigma beyond the schedule now
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    unet = build_unet(config, shape).to(device)
    identity = {k: getattr(config, k) for k in _IDENTITY}
    identity["channels"] = list(config.channels)  # as JSON stores it, so a resume compares equal
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.lr)
    start, log = resume(out, CHECKPOINT, model=unet, optimizer=optimizer, identity=identity, epochs=config.epochs)
    train_loss = test_loss = denoise_mse = float("nan")
    for epoch in range(start + 1, config.epochs + 1):
        began = time.perf_counter()
        lr = config.lr * config.gamma ** ((epoch - 1) // config.lr_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seeds = epoch_seeds(config.seed, epoch)  # fixed per epoch, so resuming an epoch draws the same again
        noise_gen = torch.Generator(device=device).manual_seed(seeds.noise)  # timesteps and noise
        loader = DataLoader(
            train_set,
            batch_size=config.batch,
            shuffle=True,
            generator=torch.Generator().manual_seed(seeds.shuffle),
            num_workers=config.workers,
        )
        unet.train()
        seen, loss_sum = 0, 0.0
        bar = progress(
            loader,
            total=len(loader),
            enabled=config.progress,
            desc=f"epoch {epoch}/{config.epochs}",
            leave=False,
            unit="batch",
            fraction=0.1,
        )
        for x, _ in bar:
            x = x.to(device)
            loss = diffusion_loss(unet, scheduler, x, generator=noise_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(x)
            loss_sum += float(loss.detach()) * len(x)
            if bar is not loader:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        train_loss = loss_sum / max(seen, 1)
        test_loss, denoise_mse = _evaluate(unet, scheduler, held_out, sigma=config.eval_sigma, device=device)
        fields = [f"{lr:.6g}", *(f"{v:.6f}" for v in (train_loss, test_loss, denoise_mse))]
        fields.append(f"{time.perf_counter() - began:.3f}")
        save_checkpoint(
            out, CHECKPOINT, model=unet, optimizer=optimizer, epoch=epoch, identity=identity, log=log, row=fields
        )
        if config.progress:
            print(
                f"epoch {epoch}: loss {train_loss:.4f}, held-out loss {test_loss:.4f}, "
                f"one-shot denoising mse at sigma={config.eval_sigma:g} {denoise_mse:.5f}",
                flush=True,
            )
    if test_loss != test_loss:  # nothing left to train: evaluate the checkpoint
        test_loss, denoise_mse = _evaluate(unet, scheduler, held_out, sigma=config.eval_sigma, device=device)
    last_train_loss: float | None = train_loss
    if start >= config.epochs:  # no epoch ran now: the finished run's record has the last epoch's loss
        last_train_loss = _previous_train_loss(out / META, config.epochs)
    unet.eval()
    save_diffusion(out, unet, scheduler)
    meta = {
        "kind": "diffusion",
        "dataset": config.dataset,
        "input_shape": list(shape),
        "epochs": config.epochs,
        "train_loss": last_train_loss,
        "test_loss": test_loss,
        "eval_sigma": config.eval_sigma,
        "denoise_mse": denoise_mse,
        "train_config": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items() if k != "progress"
        },
        "versions": {**versions(), "diffusers": str(diffusers.__version__)},
    }
    tmp = out / f"{META}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    commit_file(tmp, out / META)
    return meta
