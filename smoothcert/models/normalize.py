"""Per-channel input normalization, the first layer of every model smoothcert builds.

Its own module so that both :mod:`smoothcert.models.architectures` (which registers every
architecture) and :mod:`smoothcert.models.lipschitz` (one of them) import it without a cycle;
``smoothcert.models.architectures.Normalize`` is the same class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Normalize"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the first layer of every model smoothcert builds."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
