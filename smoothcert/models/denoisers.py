"""Denoisers for denoised smoothing (Salman et al., NeurIPS 2020)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DnCNN", "compose"]


class DnCNN(nn.Module):
    """The DnCNN denoiser (Zhang et al. 2017), as used for denoised smoothing (Salman et al. 2020, Sec. 3).

    ``depth`` 3x3 convolutions of ``width`` channels: conv + ReLU, ``depth - 2`` times conv + BN + ReLU,
    then a conv back to ``channels``; it predicts the noise, so ``D(z) = z - net(z)`` (residual
    learning). Works in pixel space, in front of a classifier that normalizes its own input.
    """

    def __init__(self, channels: int = 1, *, depth: int = 17, width: int = 64) -> None:
        super().__init__()
        if depth < 3:
            raise ValueError(f"depth must be >= 3 for a DnCNN, got {depth}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.net(x)


def compose(denoiser: nn.Module, classifier: nn.Module) -> nn.Module:
    """``z -> classifier(denoiser(z))``, the base classifier of denoised smoothing (Salman et al. 2020)."""
    return nn.Sequential(denoiser, classifier)
