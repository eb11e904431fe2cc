"""Diffusion denoised smoothing (Carlini et al., ICLR 2023): one call of a diffusion model as the denoiser.

:class:`DiffusionDenoiser` maps a noisy input ``z = x + delta`` in ``[0, 1]`` pixels (``delta`` drawn
by the smoothing engine with standard deviation ``sigma``) to an estimate of ``x``, following
``docs/diffusion.md`` §2:

1. ``2z - 1`` is in the model's ``[-1, 1]`` range, where the noise has standard deviation ``2 sigma``;
2. the timestep ``t`` is the one whose noise-to-signal ratio ``sqrt((1 - abar_t) / abar_t)`` is
   nearest to ``2 sigma`` (:func:`choose_timestep`, §3);
3. ``x_t = sqrt(abar_t) (2z - 1)``, one network call at ``t``, and the clean estimate from its output
   (noise, clean sample or velocity, as the scheduler's ``prediction_type`` says; §2), clipped to
   ``[-1, 1]`` and mapped back to ``[0, 1]``.

It is deterministic: a fixed part of the base classifier ``f(D(.))``, so the certificate of the
smoothed classifier does not depend on how well ``t`` matches ``sigma`` (§4). The network is any
module called as ``net(x_t, t)`` returning a tensor or an object with ``.sample`` (a diffusers
``UNet2DModel``); nothing here imports diffusers (:mod:`smoothcert.io.diffusion` loads one).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from smoothcert.core.errors import ConfigError

__all__ = ["PREDICTION_TYPES", "DiffusionDenoiser", "choose_timestep", "noise_to_signal"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def noise_to_signal(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``sqrt((1 - abar_t) / abar_t)`` for every timestep, in float64 (``docs/diffusion.md`` §2)."""
    a = alphas_cumprod.detach().to(torch.float64).cpu()
    return torch.sqrt((1 - a) / a)


def choose_timestep(alphas_cumprod: torch.Tensor, sigma: float) -> int:
    """The timestep whose noise-to-signal ratio is nearest to ``2 sigma`` (ties: the smaller ``t``).

    ``sigma`` is the smoothing noise in ``[0, 1]`` pixels; ``2 sigma`` is its level in the model's
    ``[-1, 1]`` range. Raises :class:`ConfigError` when ``2 sigma`` exceeds the schedule's largest
    ratio (``docs/diffusion.md`` §3).
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"sigma must be a finite number > 0, got {sigma!r}")
    ratios = noise_to_signal(alphas_cumprod)
    if ratios.ndim != 1 or len(ratios) == 0:
        raise ConfigError(f"alphas_cumprod must be a non-empty vector, got shape {list(alphas_cumprod.shape)}")
    largest = float(ratios.max())
    if 2 * sigma > largest:
        raise ConfigError(
            f"sigma={sigma:g} is beyond the diffusion schedule: its noise-to-signal ratio 2*sigma={2 * sigma:g} "
            f"exceeds the largest, {largest:.4g} at t={int(ratios.argmax())} (sigma up to {largest / 2:.4g})"
        )
    return int(torch.argmin((ratios - 2 * sigma).abs()))  # argmin returns the first of equal minima


class DiffusionDenoiser(nn.Module):
    """One-shot denoiser from a diffusion model's network (``docs/diffusion.md`` §2).

    Args:
        net: called as ``net(x_t, timesteps)`` with ``x_t`` of shape ``(b, c, h, w)`` and ``timesteps``
            a ``(b,)`` long tensor; returns a tensor (or an object with ``.sample``) with ``c`` channels,
            or ``2c`` (a learned variance, whose second half is ignored).
        alphas_cumprod: the scheduler's ``abar_t`` for ``t = 0 .. T-1``.
        sigma: the smoothing noise level in ``[0, 1]`` pixels; fixes the timestep.
        prediction_type: what ``net`` predicts: ``epsilon`` (the noise), ``sample`` (the clean image)
            or ``v_prediction`` (``sqrt(abar) eps - sqrt(1 - abar) x0``).
        timestep: use this timestep instead of :func:`choose_timestep`'s.
    """

    def __init__(
        self,
        net: nn.Module,
        alphas_cumprod: torch.Tensor,
        *,
        sigma: float,
        prediction_type: str = "epsilon",
        timestep: int | None = None,
    ) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
        chosen = choose_timestep(alphas_cumprod, sigma)
        if timestep is not None:
            if not (isinstance(timestep, int) and 0 <= timestep < len(alphas_cumprod)):
                raise ConfigError(f"timestep must be an int in [0, {len(alphas_cumprod) - 1}], got {timestep!r}")
            chosen = timestep
        self.net = net
        self.sigma = float(sigma)
        self.prediction_type = prediction_type
        self.timestep = chosen
        abar = float(alphas_cumprod[chosen])  # float32 in diffusers; the same value the network was trained with
        self.abar = abar
        self.noise_to_signal = math.sqrt((1 - abar) / abar)

    def extra_repr(self) -> str:
        return (
            f"sigma={self.sigma:g}, timestep={self.timestep}, prediction_type={self.prediction_type!r}, "
            f"noise_to_signal={self.noise_to_signal:.4g}"
        )

    def info(self) -> dict[str, Any]:
        """The settings that fix this denoiser's function (besides the network's weights), for records."""
        return {
            "timestep": self.timestep,
            "alpha_bar": self.abar,
            "noise_to_signal": self.noise_to_signal,
            "sigma": self.sigma,
            "prediction_type": self.prediction_type,
        }

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(abar_t) (2z - 1)``: the noisy pixels as the network's input at ``t``."""
        return math.sqrt(self.abar) * (2 * z - 1)

    def decode(self, x_t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The clean estimate in ``[-1, 1]`` from the network's output, before clipping."""
        a, s = math.sqrt(self.abar), math.sqrt(1 - self.abar)
        if self.prediction_type == "epsilon":
            return (x_t - s * out) / a
        if self.prediction_type == "sample":
            return out
        return a * x_t - s * out  # v_prediction: v = a eps - s x0 and x_t = a x0 + s eps

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x_t = self.encode(z)
        t = torch.full((len(z),), self.timestep, dtype=torch.long, device=z.device)
        out = self.net(x_t, t)
        out = getattr(out, "sample", out)
        if out.shape[1] == 2 * z.shape[1]:  # a learned variance: the prediction is the first half
            out = out[:, : z.shape[1]]
        return (self.decode(x_t, out).clamp(-1, 1) + 1) / 2
