"""1-Lipschitz building blocks: orthonormal dense layers and the MaxMin activation.

A network whose every layer is 1-Lipschitz in L2 is 1-Lipschitz as a whole, so the Lipschitz-margin
certificate (Tsuzuku, Sato & Sugiyama, NeurIPS 2018; :mod:`smoothcert.baselines`) of such a network
is not loosened by a product of large per-layer norms. Following Anil, Lucas & Grosse ("Sorting out
Lipschitz function approximation", ICML 2019):

* :class:`OrthoLinear` keeps a free parameter ``V`` and uses the orthonormal factor of its QR
  decomposition as the weight: orthonormal columns when ``out >= in`` (an isometry), orthonormal
  rows when ``out < in`` (a co-isometry). Either way the spectral norm is 1 (up to float rounding;
  the certifier measures the actual weight's norm in float64 and never assumes it).
* :class:`MaxMin` (GroupSort with groups of 2) sorts each pair of features: a permutation of each
  pair, piecewise, hence norm-preserving on gradients and 1-Lipschitz, unlike ReLU it loses no
  gradient norm.

:func:`lipschitz_mlp` builds ``Normalize -> Flatten -> (OrthoLinear -> MaxMin)* -> OrthoLinear``
for ``[0, 1]`` pixel inputs; its Lipschitz constant is ``1 / min(std)`` (the Normalize layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from smoothcert.core.checks import check_int
from smoothcert.core.errors import ConfigError
from smoothcert.models.normalize import Normalize

__all__ = ["MaxMin", "OrthoLinear", "freeze_orthonormal", "lipschitz_mlp"]


class OrthoLinear(nn.Module):
    """``y = W x + b`` with ``W`` (out x in) the orthonormal QR factor of a free parameter (spectral norm 1).

    The signs of the QR factor are fixed by ``diag(R) >= 0``, so ``W`` is a smooth function of the parameter.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.out_features = check_int("out_features", out_features)
        param = torch.empty(out_features, in_features)
        nn.init.orthogonal_(param)
        self.param = nn.Parameter(param)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def weight(self) -> torch.Tensor:
        """The current orthonormal weight ``W`` (out x in)."""
        tall = self.out_features >= self.in_features
        v = self.param if tall else self.param.T  # (big, small): QR gives orthonormal columns
        q, r = torch.linalg.qr(v)
        signs = torch.sign(torch.diagonal(r))
        signs = torch.where(signs == 0, torch.ones_like(signs), signs)
        q = q * signs
        return q if tall else q.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight(), self.bias)

    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear`` holding the current weight and bias (for fast evaluation; no longer constrained)."""
        w = self.weight().detach()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, dtype=w.dtype, device=w.device)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None and lin.bias is not None:
                lin.bias.copy_(self.bias.detach())
        return lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class MaxMin(nn.Module):
    """GroupSort with groups of 2 along dimension 1: each pair ``(a, b)`` becomes ``(max(a, b), min(a, b))``.

    1-Lipschitz in L2: on each pair it is the identity or the swap, and
    ``(max a - max b)^2 + (min a - min b)^2 <= ||a - b||^2`` pairwise. Needs an even number of features.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c % 2:
            raise ValueError(f"MaxMin needs an even number of features along dim 1, got {c}")
        pairs = x.reshape(x.shape[0], c // 2, 2, *x.shape[2:])
        hi = pairs.max(dim=2).values
        lo = pairs.min(dim=2).values
        return torch.stack([hi, lo], dim=2).reshape(x.shape)


def lipschitz_mlp(
    *,
    in_features: int = 784,
    hidden: Sequence[int] = (512, 512, 256),
    num_classes: int = 10,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
) -> nn.Sequential:
    """``Normalize(mean, std) -> Flatten -> [OrthoLinear -> MaxMin] * len(hidden) -> OrthoLinear``.

    1-Lipschitz after the Normalize layer.

    Hidden widths must be even (MaxMin pairs). The whole network's L2 Lipschitz constant is
    ``1 / min(std)``; on Fashion-MNIST's statistics (std 0.353) that is 2.83.
    """
    check_int("in_features", in_features)
    check_int("num_classes", num_classes, 2)
    layers: list[nn.Module] = [Normalize(mean, std), nn.Flatten()]
    width = in_features
    for h in hidden:
        check_int("hidden width", h)
        if h % 2:
            raise ConfigError(f"hidden widths must be even for MaxMin, got {h}")
        layers += [OrthoLinear(width, h), MaxMin()]
        width = h
    layers.append(OrthoLinear(width, num_classes))
    return nn.Sequential(*layers)


def freeze_orthonormal(model: nn.Module) -> nn.Module:
    """Replace, in place, every :class:`OrthoLinear` inside ``model`` by :meth:`OrthoLinear.to_linear`.

    Returns ``model``.

    The frozen network computes the same function (the QR factor is no longer recomputed per call).
    Only layers of exactly this type are frozen: a subclass may compute something else (an overridden
    ``forward``), so it is left as it is (and :mod:`smoothcert.baselines.bound` refuses it).
    """
    for name, child in list(model.named_children()):
        if type(child) is OrthoLinear:
            setattr(model, name, child.to_linear())
        else:
            freeze_orthonormal(child)
    return model
