"""Base classifiers whose smoothed class probabilities are known exactly (paper App. B; docs/statistics.md §8)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats as st


class LinearBinary(torch.nn.Module):
    """f(x) = 1[w.x + b > 0] as two logits (paper App. B, Prop. 3): g = f and pA = Phi(|w.x + b| / (sigma ||w||))."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.register_buffer("w", w.flatten().double())
        self.b = b
        self.samples_seen = 0
        self.max_batch = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.samples_seen += z.shape[0]
        self.max_batch = max(self.max_batch, z.shape[0])
        s = z.flatten(1).double() @ self.w + self.b
        return torch.stack([-s, s], dim=1)

    def distance(self, x: torch.Tensor) -> float:
        return abs(float(x.flatten().double() @ self.w) + self.b) / float(self.w.norm())

    def label(self, x: torch.Tensor) -> int:
        return int(float(x.flatten().double() @ self.w) + self.b > 0)


class ThresholdClasses(torch.nn.Module):
    """Classifies by thresholds on the first coordinate: at x = 0, P(f(x + eps) = c) = probs[c]."""

    def __init__(self, probs: list[float], sigma: float) -> None:
        super().__init__()
        cuts = st.norm.ppf(np.cumsum(probs)[:-1]) * sigma
        self.register_buffer("cuts", torch.tensor(cuts, dtype=torch.float64))
        self.num_classes = len(probs)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cls = torch.bucketize(z.flatten(1)[:, 0].double(), self.cuts)
        return torch.nn.functional.one_hot(cls, self.num_classes).float()
