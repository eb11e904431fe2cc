"""Sound smoothing of quantized inputs: integer noise on the input's grid (``docs/sound.md``).

:class:`GridNoise` wraps a :class:`~smoothcert.smoothing.noises.Noise` and a grid ``1 / q``. The
engine calls its :meth:`GridNoise.perturb_`, which never adds floating-point noise: it converts
the input to integers ``i = round(q x)``, draws integer noise ``j`` from the discretized law by
inverse CDF on 62-bit uniform integers against the exact thresholds of
:mod:`smoothcert.core.lattice`, and writes ``h(i + j) = (i + j) / q``: the integer ``i + j``
(``|i + j| < 2^24``, exactly representable) converted to the buffer's float dtype and divided by
``q`` with one IEEE division, a deterministic function of ``i + j``. The base classifier thus
sees a deterministic function of the grid point ``x + j / q``, and the smoothed classifier is
exactly the smoothing of ``f o round_q`` under the continuous noise, up to the sampler's
residual total variation (:meth:`GridNoise.tv_bound`).

**Randomness.** Uniform integers come from ``torch.Tensor.random_(0, 2^k)`` with ``k`` = 16 and
46: torch reduces the generator's raw 32- or 64-bit output modulo ``2^k``, which is exact
because ``2^k`` divides ``2^32`` and ``2^64``. A draw's top 16 bits pick a bucket; in the few
buckets that hold a threshold the remaining 46 bits are drawn and the full 62-bit value is
looked up with ``torch.searchsorted``. The generator's output being uniform and independent
is the only assumption.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from smoothcert.core import lattice
from smoothcert.core.checks import check_int
from smoothcert.smoothing.noises import Noise

__all__ = ["GridNoise"]

_LOW_BITS = lattice.U_BITS - lattice.BUCKET_BITS


class GridNoise:
    """``noise`` rounded to the grid of spacing ``1 / grid``, drawn and added on integers.

    Args:
        noise: the continuous noise (Gaussian, Laplace or uniform) whose rounding is drawn.
        grid: ``q``, the number of grid steps per unit (255 for 8-bit images in ``[0, 1]``).
    """

    def __init__(self, noise: Noise, grid: int = 255) -> None:
        if not isinstance(noise, Noise):
            raise TypeError(f"noise must be a smoothing.noises.Noise, got {type(noise).__name__}")
        self.noise = noise
        self.grid = check_int("grid", grid, 2)
        self.table = lattice.lattice_table(noise.name, noise.sigma, self.grid)
        self._device_tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"GridNoise({self.noise!r}, grid={self.grid})"

    def tv_bound(self, dim: int) -> float:
        """Total variation between the law of one noisy input (``dim`` coordinates) and the target."""
        return self.table.tv_bound(dim)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._device_tables:
            self._device_tables[key] = (
                torch.as_tensor(self.table.buckets, device=device),
                torch.as_tensor(self.table.thresholds, device=device),
            )
        return self._device_tables[key]

    def draw_(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill the int32 tensor ``out`` in place with integer noise ``j``; return ``out``."""
        if out.dtype != torch.int32 or not out.is_contiguous():
            raise TypeError(f"out must be a contiguous int32 tensor, got {out.dtype}")
        buckets, thresholds = self._tables(out.device)
        flat = out.view(-1)
        top = torch.empty_like(flat).random_(0, 2**lattice.BUCKET_BITS, generator=generator)
        torch.index_select(buckets, 0, top, out=flat)
        (pos,) = (flat == lattice.AMBIGUOUS).nonzero(as_tuple=True)
        if pos.numel():
            low = torch.empty(pos.numel(), dtype=torch.int64, device=out.device)
            low.random_(0, 2**_LOW_BITS, generator=generator)
            u = (top[pos].to(torch.int64) << _LOW_BITS) | low
            idx = torch.searchsorted(thresholds, u, right=True, out_int32=True)
            flat[pos] = idx + self.table.low
        return out

    def sample_(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill the float ``out`` with ``j / q`` (the noise alone, for inspection); return ``out``."""
        j = self.draw_(torch.empty(out.shape, dtype=torch.int32, device=out.device), generator)
        return out.copy_(j).div_(self.grid)

    def grid_points(self, x: torch.Tensor, *, name: str = "x") -> torch.Tensor:
        """``i = round(q x)`` as int32 on ``x``'s device, or a ConfigError if ``x`` is off the grid.

        The rule is :func:`smoothcert.core.lattice.require_on_grid` (``|q x - round(q x)| <=
        GRID_TOLERANCE`` in every coordinate); this computes its inputs on the device, in float64,
        with one transfer of four numbers.
        """
        flat = x.detach().reshape(-1).to(torch.float64)
        scaled = flat * self.grid
        ints = torch.round(scaled)
        if scaled.numel():
            dev = (scaled - ints).abs_().nan_to_num_(nan=math.inf)
            k = dev.argmax()
            worst, value, magnitude = torch.stack([dev[k], flat[k], ints.abs().max()]).tolist()
            lattice.require_on_grid(worst, q=self.grid, index=int(k), value=value, magnitude=magnitude, name=name)
        return ints.to(torch.int32).view(x.shape)

    def perturb_(self, out: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill ``out`` (``(s, *x.shape)``, float) with ``(i + j) / q``, ``i = round(q x)``; return ``out``.

        Refuses (ConfigError, one line naming the coordinate, its value and its offset) an ``x`` that
        is off the grid (:meth:`grid_points`): noise is never put on an input that sound mode does
        not cover, whichever public path reached the engine.
        """
        i = self.grid_points(x)
        j = self.draw_(torch.empty(out.shape, dtype=torch.int32, device=out.device), generator)
        j += i
        return out.copy_(j).div_(self.grid)

    def to_dict(self) -> dict[str, Any]:
        return {**self.noise.to_dict(), "grid": self.grid}
