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

**Randomness.** Bucket codes come from 64-bit words (``random_(-2^63, None)``, each word one raw
64-bit output of the generator): the word's four 16-bit fields, read as unsigned integers, are
the codes of four coordinates. They are independent and uniform because the word's 64 bits are.
A code picks a bucket (the top 16 bits of the coordinate's 62-bit uniform ``u``) through a fixed
permutation that lists the buckets holding a threshold last, so one integer comparison finds
them; those coordinates draw their 46 low bits with ``random_(0, 2^46)`` (exact: torch reduces a
64-bit output modulo a power of two) and the full ``u`` is looked up with ``torch.searchsorted``.
The generator's output being uniform and independent is the only assumption.

**Input check.** :meth:`GridNoise.perturb_`, the only method that puts noise on an input, refuses
an input off the grid (:meth:`GridNoise.grid_points`, the rule in
:func:`smoothcert.core.lattice.require_on_grid`), once per call, whichever public path called it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from smoothcert.core import lattice
from smoothcert.core.checks import check_int
from smoothcert.smoothing.noises import Noise, positions_at_least, random_bits64_

__all__ = ["GridNoise"]

_LOW_BITS = lattice.U_BITS - lattice.BUCKET_BITS
_PER_WORD = 64 // lattice.BUCKET_BITS  # bucket indices per 64-bit random word
assert lattice.BUCKET_BITS == 16  # the uint16 view of the random words


class _Tables(NamedTuple):
    values: torch.Tensor  # j of the bucket order[r], per code r (AMBIGUOUS from ``first`` on)
    order: torch.Tensor  # int64: the bucket of each code
    first: int  # codes >= first need the refinement
    thresholds: torch.Tensor  # int64


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
        self._device_tables: dict[str, _Tables] = {}

    def __repr__(self) -> str:
        return f"GridNoise({self.noise!r}, grid={self.grid})"

    def tv_bound(self, dim: int) -> float:
        """Total variation between the law of one noisy input (``dim`` coordinates) and the target."""
        return self.table.tv_bound(dim)

    def _tables(self, device: torch.device, dtype: torch.dtype) -> _Tables:
        """The bucket tables on ``device``, ``j`` in ``dtype`` (cached).

        Buckets are read through a fixed permutation ``order`` of ``[0, 2^16)`` that lists the
        buckets without a threshold first: a uniform 16-bit code ``r`` picks bucket ``order[r]``
        (uniform, as ``order`` is one-to-one), whose ``j`` is ``values[r]`` when ``r < first`` and
        needs the refinement otherwise. So one integer comparison on the codes finds the
        refinements. Every ``j`` is an integer below ``2^23`` in magnitude, exact in float32.
        """
        key = f"{device}/{dtype}"
        if key not in self._device_tables:
            buckets = self.table.buckets
            ambiguous = buckets == lattice.AMBIGUOUS
            order = np.concatenate([np.flatnonzero(~ambiguous), np.flatnonzero(ambiguous)])
            self._device_tables[key] = _Tables(
                values=torch.as_tensor(buckets[order], device=device).to(dtype),
                order=torch.as_tensor(order.astype(np.int64), device=device),
                first=int((~ambiguous).sum()),
                thresholds=torch.as_tensor(self.table.thresholds, device=device),
            )
        return self._device_tables[key]

    def _fill_(self, flat: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Fill the 1-d ``flat`` (int32, float32 or float64) with integer noise ``j``; return it.

        One 64-bit word from the generator gives four bucket codes: its four 16-bit fields, read
        as unsigned integers, are independent and uniform on ``[0, 2^16)`` because the word's 64
        bits are (:func:`~smoothcert.smoothing.noises.random_bits64_`). The code's bucket
        ``b = order[r]`` (:meth:`_tables`) is the top 16 bits of the coordinate's 62-bit uniform
        ``u``. Coordinates whose bucket holds a threshold draw the 46 low bits of ``u`` afresh
        (``random_(0, 2^46)``, exact) and are looked up with ``torch.searchsorted`` on the full
        ``u``. Each coordinate's ``u`` is thus uniform on ``[0, 2^62)`` and independent of the
        others, as with one draw of 62 bits per coordinate.
        """
        t = self._tables(flat.device, flat.dtype)
        count = flat.numel()
        words = random_bits64_(torch.empty(-(-count // _PER_WORD), dtype=torch.int64, device=flat.device), generator)
        codes = words.view(torch.uint16)[:count].to(torch.int32)
        torch.index_select(t.values, 0, codes, out=flat)
        pos = positions_at_least(codes, t.first)
        if pos.numel():
            low = torch.empty(pos.numel(), dtype=torch.int64, device=flat.device)
            low.random_(0, 2**_LOW_BITS, generator=generator)
            top = torch.index_select(t.order, 0, torch.index_select(codes, 0, pos))
            idx = torch.searchsorted(t.thresholds, (top << _LOW_BITS) | low, right=True, out_int32=True)
            flat.index_copy_(0, pos, idx.add_(self.table.low).to(flat.dtype))
        return flat

    def draw_(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill the int32 tensor ``out`` in place with integer noise ``j``; return ``out``."""
        if out.dtype != torch.int32 or not out.is_contiguous():
            raise TypeError(f"out must be a contiguous int32 tensor, got {out.dtype}")
        self._fill_(out.view(-1), generator)
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
        if out.dtype in (torch.float32, torch.float64) and out.is_contiguous():
            # j drawn directly as floats: i + j is an integer below 2^24 in magnitude, exact in
            # float32, so (i + j) / q is the same correctly rounded quotient as from the int32 sum
            self._fill_(out.view(-1), generator)
            out.view(out.shape[0], -1).add_(i.view(1, -1).to(out.dtype))
            return out.div_(self.grid)
        j = self.draw_(torch.empty(out.shape, dtype=torch.int32, device=out.device), generator)
        j += i
        return out.copy_(j).div_(self.grid)

    def to_dict(self) -> dict[str, Any]:
        return {**self.noise.to_dict(), "grid": self.grid}
