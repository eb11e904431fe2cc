"""Small models for the dense tasks: a fully-convolutional segmenter and a box regressor.

Both are sized so that certification with a thousand noise draws per image runs on a laptop
CPU (about 4 M and 2 M multiply-adds per 64x64 image), and both start with
:class:`~smoothcert.models.architectures.Normalize` when built by :func:`build_task_model`, so
that they take ``[0, 1]`` pixels and the noise lives in pixel space, as the classifiers do.

:data:`TASK_ARCHITECTURES` maps each name to ``(num_outputs, in_channels) -> nn.Module`` like
:data:`smoothcert.models.architectures.ARCHITECTURES`; :func:`register_task_architectures` adds
them there, so that :func:`~smoothcert.models.architectures.build_model` (and through it
checkpoint loading) finds them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from smoothcert.models.architectures import ARCHITECTURES, Normalize

__all__ = [
    "TASK_ARCHITECTURES",
    "BoxRegressor",
    "SmallFCN",
    "build_task_model",
    "register_task_architectures",
    "upsample_labels",
]


class SmallFCN(nn.Module):
    """Fully-convolutional segmenter: scores ``(b, num_classes, H/2, W/2)``, one per 2x2 block of pixels.

    Encoder: conv 16 (stride 2), conv 32 (stride 2), two dilated 3x3 convs (dilation 2 and 4,
    receptive field about 60 pixels) at 1/4 resolution. Scores: a 1x1 classifier of the
    half-resolution features plus the bilinearly upsampled 1x1 classifier of the quarter-
    resolution ones. Scoring at half resolution costs a quarter of full-resolution scoring and
    arg-max; a pixel's label is its block's (:func:`upsample_labels`). H and W: multiples of 4.
    """

    def __init__(self, num_classes: int = 11, in_channels: int = 1) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2, 1), nn.ReLU(inplace=True))
        self.enc2 = nn.Sequential(
            nn.Conv2d(16, 32, 3, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 1, 2, dilation=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 1, 4, dilation=4),
            nn.ReLU(inplace=True),
        )
        self.head_fine = nn.Conv2d(16, num_classes, 1)
        self.head_coarse = nn.Conv2d(32, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.enc1(x)
        coarse = self.head_coarse(self.enc2(f1))
        up = nn.functional.interpolate(coarse, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        return self.head_fine(f1) + up


def upsample_labels(labels: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Repeat each label of ``(..., h, w)`` over a ``factor x factor`` block: the full-resolution labels."""
    return labels.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


class BoxRegressor(nn.Module):
    """Box regressor: three stride-2 convs (16, 32, 32), a 64-unit layer and ``num_outputs`` sigmoid outputs.

    The sigmoid keeps box coordinates in ``[0, 1]`` (the scenes' normalized coordinates). The
    flattened map keeps positions, which global pooling would lose. Input 64x64 by default
    (``size`` otherwise, a multiple of 8).
    """

    def __init__(self, num_outputs: int = 4, in_channels: int = 1, size: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 2, 1),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(32 * (size // 8) ** 2, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.features(x))


TASK_ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "small_fcn": lambda k, c: SmallFCN(k, c),
    "box_regressor": lambda k, c: BoxRegressor(k, c),
}


def register_task_architectures() -> None:
    """Add :data:`TASK_ARCHITECTURES` to ``ARCHITECTURES`` (idempotent), for ``build_model`` and ``load_model``."""
    for name, make in TASK_ARCHITECTURES.items():
        ARCHITECTURES.setdefault(name, make)


def build_task_model(
    arch: str, *, num_outputs: int, in_channels: int, mean: Sequence[float], std: Sequence[float]
) -> nn.Module:
    """``Normalize(mean, std)`` followed by the dense-task network ``arch`` (a :data:`TASK_ARCHITECTURES` name)."""
    if arch not in TASK_ARCHITECTURES:
        raise ValueError(f"unknown task arch {arch!r}; choose one of: {', '.join(TASK_ARCHITECTURES)}")
    return nn.Sequential(Normalize(mean, std), TASK_ARCHITECTURES[arch](num_outputs, in_channels))
