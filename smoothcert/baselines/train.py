"""Lipschitz-margin training (Tsuzuku, Sato & Sugiyama, NeurIPS 2018): make the certified margin large.

LMT adds ``sqrt(2) L epsilon`` to every logit but the label's before the cross-entropy,
``CE(t (z + sqrt(2) L epsilon (1 - onehot(y))), y) / t``, so that the loss is only small once
the label beats every other class by the margin that certifies radius ``epsilon``
(:func:`smoothcert.baselines.bound.margin_radius`). With 1-Lipschitz layers
(:mod:`smoothcert.models.lipschitz`) ``L`` does not change during training, so it is computed once
(:func:`smoothcert.baselines.bound.lipschitz_bound`) and passed in; LMT's differentiable bound for
unconstrained layers is not implemented. ``t`` (the temperature, the inverse of the paper's
softmax scale) sharpens the loss for the small logits that norm-preserving networks produce.

A short self-contained loop (Adam, shuffled minibatches from one seeded generator); the full
training stack (:mod:`smoothcert.training`) is for smoothed base classifiers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from smoothcert.core.checks import check_int, check_sigma

__all__ = ["EpochStats", "lmt_loss", "train_lipschitz_margin"]


@dataclass(frozen=True)
class EpochStats:
    """One epoch: mean ``loss``, training ``accuracy`` and the fraction ``certified`` at ``epsilon``
    (on the training batches, as trained)."""

    epoch: int
    loss: float
    accuracy: float
    certified: float


def lmt_loss(logits: torch.Tensor, y: torch.Tensor, *, offset: float, temperature: float) -> torch.Tensor:
    """``CE(t (z + offset (1 - onehot(y))), y) / t``, mean over the batch; ``offset = sqrt(2) L epsilon``."""
    shifted = logits + offset * (1.0 - F.one_hot(y, logits.shape[1]).to(logits.dtype))
    return F.cross_entropy(temperature * shifted, y) / temperature


def train_lipschitz_margin(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lipschitz: float,
    epsilon: float,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    temperature: float = 4.0,
    seed: int = 0,
) -> list[EpochStats]:
    """Train ``model`` on ``(x, y)`` with :func:`lmt_loss` at radius ``epsilon`` (Adam, ``lr``).

    Returns each epoch's stats.

    ``lipschitz`` must bound the model's Lipschitz constant throughout training (true of
    :func:`smoothcert.models.lipschitz.lipschitz_mlp` with its ``1 / min(std)``).
    """
    check_sigma(lipschitz, "lipschitz")
    check_sigma(epsilon, "epsilon")
    check_sigma(temperature, "temperature")
    check_int("epochs", epochs)
    check_int("batch_size", batch_size)
    offset = math.sqrt(2.0) * lipschitz * epsilon
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x), generator=gen)
        total = correct = certified = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            logits = model(xb)
            loss = lmt_loss(logits, yb, offset=offset, temperature=temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                top2 = logits.topk(2, dim=1)
                ok = top2.indices[:, 0] == yb
                total += float(loss) * len(idx)
                correct += float(ok.sum())
                certified += float((ok & (top2.values[:, 0] - top2.values[:, 1] > offset)).sum())
        history.append(EpochStats(epoch, total / len(x), correct / len(x), certified / len(x)))
    model.eval()
    return history
