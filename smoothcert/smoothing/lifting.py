"""Resolution lifting: a smoothed classifier for k x k images reused on sk x sk images (paper App. G, Prop. 7).

Given a smoothed classifier ``g'`` with base ``f'`` and Gaussian noise ``sigma'`` on ``k x k`` inputs,
:func:`lift` builds the smoothed classifier ``g`` on ``sk x sk`` inputs with

* base classifier ``f = f' o AvgPool_s`` (mean over disjoint ``s x s`` blocks), and
* Gaussian noise ``sigma = s * sigma'``.

**Why it is the same classifier.** ``AvgPool_s`` is linear, so ``AvgPool_s(x + eps) = AvgPool_s(x) +
AvgPool_s(eps)``. Each low-resolution pixel of ``AvgPool_s(eps)`` is the mean of ``s^2`` independent
``N(0, (s sigma')^2)`` draws, hence ``N(0, sigma'^2)``; distinct blocks share no draw, so these pixels
are independent. Therefore ``AvgPool_s(eps) ~ N(0, sigma'^2 I)`` exactly and
``g(x) = g'(AvgPool_s(x))``: the lifted classifier predicts at ``x`` what the low-resolution one
predicts at the pooled image, with the same class probabilities.

**Why the radius is s times larger.** The lifted classifier is an ordinary Gaussian smoothed
classifier with ``sigma = s sigma'``, so CERTIFY gives ``s sigma' Phi^-1(p_A)``: ``s`` times the
low-resolution radius at the same ``p_A``. (Consistently, ``AvgPool_s`` has L2 operator norm
``1/s``, so a perturbation of norm ``r`` at high resolution moves the pooled image by at most ``r/s``.)
Certificates of the lifted classifier carry the lifted ``sigma`` and radius; nothing else changes.

:func:`upsample` (nearest neighbour, each pixel repeated ``s x s`` times) is a right inverse of the
pooling, ``AvgPool_s(upsample(x)) = x`` exactly, which is how a 56 px Fashion-MNIST is made from the
28 px one. :func:`render_resolution_figure` draws the paper's Figure 12.

**Sound mode** is carried over (``sound`` and ``grid`` of the low-resolution classifier).
Upsampling repeats pixels, so an image on the grid ``i / q`` stays on it; the lifted classifier
draws its noise on that grid at the high resolution, and its base classifier ``f' o AvgPool_s`` is
a deterministic function of the grid point it is given. So the lifted certificate is a sound-mode
certificate of the lifted smoothed classifier in its own right (``docs/sound.md``; the residual
``tv_bound`` is that of ``s^2`` times as many coordinates). The identity ``g(x) = g'(AvgPool_s x)``
above is one of continuous Gaussians: the mean of ``s^2`` grid-rounded draws is not exactly the
grid-rounded Gaussian of ``sigma'``, so in sound mode the lifted classifier is close to, but not
exactly, the low-resolution one at the pooled image; its own certificate is what holds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from smoothcert.core.checks import check_int, check_sigma
from smoothcert.core.errors import ConfigError
from smoothcert.smoothing.classifier import SmoothedClassifier

__all__ = ["AvgPoolThen", "avg_pool", "lift", "render_resolution_figure", "upsample"]


def _check_factor(factor: int) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ConfigError(f"factor must be an integer >= 1, got {factor!r}")
    return int(factor)


def avg_pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over disjoint ``factor x factor`` blocks of the last two dimensions of ``x`` (``(..., H, W)``).

    ``H`` and ``W`` must be multiples of ``factor``; the result has shape ``(..., H/factor, W/factor)``.
    """
    s = _check_factor(factor)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % s or w % s:
        raise ValueError(f"the image size {h}x{w} must be a multiple of factor={s}")
    lead = x.shape[:-2]
    blocks = x.reshape(*lead, h // s, s, w // s, s)
    return blocks.mean(dim=(-3, -1))


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upsampling of the last two dimensions: each pixel becomes a ``factor x factor`` block.

    ``avg_pool(upsample(x, s), s) == x`` exactly (the mean of ``s^2`` equal numbers).
    """
    s = _check_factor(factor)
    return x.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)


class AvgPoolThen(nn.Module):
    """The lifted base classifier ``f' o AvgPool_s``: pool the ``(B, C, sk, sk)`` batch, then run ``f'``."""

    def __init__(self, base: Callable[[torch.Tensor], torch.Tensor], factor: int) -> None:
        super().__init__()
        if not callable(base):
            raise TypeError(f"base must be callable, got {type(base).__name__}")
        self.factor: int = _check_factor(factor)
        # a Module is registered as a child (so .to(), parameters() and eval() reach it)
        self.base: Callable[[torch.Tensor], torch.Tensor] = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(avg_pool(x, self.factor))


def lift(smoothed: SmoothedClassifier, *, factor: int) -> SmoothedClassifier:
    """The smoothed classifier on ``s`` times larger images equivalent to ``smoothed`` (App. G, Prop. 7).

    Its base classifier is ``smoothed.base_classifier o AvgPool_factor`` and its noise is Gaussian
    with ``sigma = factor * smoothed.sigma``; its threat norm, device and run options are those of
    ``smoothed``. With ``input_shape`` ``(C, k, k)`` the lifted one takes ``(C, s k, s k)``.

    Its prediction at ``x`` is that of ``smoothed`` at ``AvgPool_s(x)`` (the same class
    probabilities), and its certified L2 radius is ``factor`` times as large at the same ``p_A``.
    Only Gaussian noise is closed under averaging, so other noises are refused (ConfigError).
    ``sound`` and ``grid`` are those of ``smoothed`` (module docstring: sound certificates of the
    lifted classifier hold as they stand).
    """
    if not isinstance(smoothed, SmoothedClassifier):
        raise TypeError(f"smoothed must be a SmoothedClassifier, got {type(smoothed).__name__}")
    s = _check_factor(factor)
    if smoothed.noise.name != "gaussian":
        raise ConfigError(
            f"lift needs Gaussian noise (the mean of Gaussian draws is Gaussian), got noise={smoothed.noise.name!r}"
        )
    sigma = check_sigma(s * smoothed.sigma)
    shape = smoothed.input_shape
    lifted_shape = None if shape is None else (*shape[:-2], s * shape[-2], s * shape[-1])
    if shape is not None and len(shape) < 2:
        raise ConfigError(f"lift needs image inputs (..., H, W), got input_shape={shape!r}")
    return SmoothedClassifier(
        AvgPoolThen(smoothed.base_classifier, s),
        smoothed.num_classes,
        sigma,
        noise="gaussian",
        norm=smoothed.norm,
        device=smoothed.device,
        input_shape=lifted_shape,
        autocast_dtype=smoothed.autocast_dtype,
        channels_last=smoothed.channels_last,
        pass_size=smoothed.pass_size,
        sound=smoothed.sound,
        grid=smoothed.grid,
    )


def render_resolution_figure(
    image: torch.Tensor,
    path: str | Path,
    *,
    sigma: float,
    factor: int = 2,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """Figure 12: one image at ``k`` and ``s k`` pixels under the same per-pixel noise ``sigma``.

    ``image`` is ``(C, k, k)`` or ``(k, k)`` in ``[0, 1]`` (one channel is drawn in grey). Columns:
    the clean image, the image plus ``N(0, sigma^2)`` per pixel, and (high resolution only) the
    noisy image pooled back to ``k`` pixels, whose noise is ``sigma / s`` per pixel. Noise is drawn
    from a generator seeded with ``seed``. Written with matplotlib's object API (no global
    backend); returns the path of the PNG/PDF.
    """
    from matplotlib.figure import Figure

    sigma = check_sigma(sigma)
    s = _check_factor(factor)
    check_int("seed", seed, 0)
    img = image.detach().to(torch.float64).cpu()
    if img.ndim == 2:
        img = img.unsqueeze(0)
    if img.ndim != 3:
        raise ValueError(f"image must be (C, H, W) or (H, W), got shape {tuple(image.shape)}")
    gen = torch.Generator().manual_seed(seed)
    low = img
    high = upsample(img, s)
    noisy_low = low + sigma * torch.randn(low.shape, generator=gen, dtype=torch.float64)
    noisy_high = high + sigma * torch.randn(high.shape, generator=gen, dtype=torch.float64)
    pooled = avg_pool(noisy_high, s)

    def show(ax: object, t: torch.Tensor, label: str) -> None:
        arr = t.clamp(0, 1).numpy()
        rgb = arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))
        ax.imshow(rgb, cmap="gray" if arr.shape[0] == 1 else None, vmin=0, vmax=1, interpolation="nearest")  # type: ignore[attr-defined]
        ax.set_title(label, fontsize=8)  # type: ignore[attr-defined]
        ax.set_xticks([])  # type: ignore[attr-defined]
        ax.set_yticks([])  # type: ignore[attr-defined]

    k = low.shape[-1]
    fig = Figure(figsize=(7.5, 5.0))
    axes = fig.subplots(2, 3)
    show(axes[0, 0], low, f"{k} px, clean")
    show(axes[0, 1], noisy_low, f"{k} px, sigma={sigma:g}")
    axes[0, 2].axis("off")
    show(axes[1, 0], high, f"{s * k} px, clean")
    show(axes[1, 1], noisy_high, f"{s * k} px, sigma={sigma:g}")
    show(axes[1, 2], pooled, f"{s * k} px noisy, pooled to {k} px (sigma/{s})")
    fig.suptitle(title or "Same per-pixel noise at two resolutions (App. G, Fig. 12)", fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
