"""A tiny diffusers model directory for tests: a two-level ``UNet2DModel`` (8, 16 channels) and a
100-step linear ``DDPMScheduler``, in ``DDPMPipeline``'s layout (``smoothcert.io.diffusion.save_diffusion``).
Needs the optional ``diffusers``; callers skip without it (``pytest.importorskip``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def tiny_unet(channels: int = 1, size: int | None = 8, seed: int = 0, **config: Any) -> nn.Module:
    """The tiny UNet for ``channels x size x size`` images, weights from ``seed``; ``config`` overrides
    further ``UNet2DModel`` settings (e.g. ``num_class_embeds``)."""
    import diffusers

    settings: dict[str, Any] = dict(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
    )
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(**{**settings, **config}).eval()


def write_tiny_diffusion(path: Path, *, size: int = 28, channels: int = 1, timesteps: int = 100) -> Path:
    """Write the tiny UNet for ``channels x size x size`` images and its scheduler into ``path``."""
    import diffusers

    from smoothcert.io.diffusion import save_diffusion

    return save_diffusion(path, tiny_unet(channels, size), diffusers.DDPMScheduler(num_train_timesteps=timesteps))


def perturb_diffusion(path: Path, shift: float = 1e-3) -> Path:
    """Move every UNet weight of the diffusion directory ``path`` by ``shift``, in place (another model)."""
    from safetensors.torch import load_file, save_file

    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v + shift if v.is_floating_point() else v for k, v in load_file(weights).items()}, weights)
    return path
