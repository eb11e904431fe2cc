"""The smoothed regressor (percentile smoothing) and certified boxes for localization.

Chiang et al. (NeurIPS 2020), "Detection as Regression: Certified Object Detection by Median
Smoothing": the smoothed output is the ``p``-th percentile (the median by default) of the base
model's output under Gaussian noise, and each output coordinate is certified to stay within an
interval for every perturbation within a radius (:mod:`smoothcert.core.percentile`). The
intervals bound the *smoothed* output, the true ``p``-th percentile of the base model's output
under noise at each perturbed input, not the estimate computed from a finite sample there. For a
box ``(x0, y0, x1, y1)`` the four intervals bound the smoothed box at every input within the
radius, and :func:`worst_case_iou` gives the smallest IoU of any box in the intervals with a
reference box, computed exactly (``docs/tasks.md`` §3).

**Sound mode** (per input, as :meth:`SmoothedModel.input_modes` decides: every input under
``sound=True``, the inputs on the grid under the default ``"auto"``; ``docs/tasks.md`` §8): the
noise is drawn on the input's grid, on integers, and the order statistics are chosen at
``alpha - n * tv_bound`` (split over the outputs and the two sides), so the intervals hold at
``alpha`` under the sampler's law. The theorem's centre is the grid point ``round_q(x)``: a ball of
radius ``eps`` about ``x`` lies in the ball of ``eps + grid_offset`` about it
(``grid_offset = ||x - round_q(x)||``), so the percentiles are shifted for ``eps + grid_offset``.
An input in float mode has ``tv_bound = 0`` and ``grid_offset = 0``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from smoothcert.core import percentile as pct
from smoothcert.core.checks import check_alpha, check_int
from smoothcert.core.errors import ConfigError
from smoothcert.core.sound_level import level_after_tv
from smoothcert.smoothing.engine import GeneratorArg, OutputSamples
from smoothcert.smoothing.noises import Noise
from smoothcert.smoothing.segmentation import sound_options
from smoothcert.smoothing.smoothed import SmoothedModel, SoundArg

__all__ = ["RegressionCertificate", "SmoothedRegressor", "box_iou", "worst_case_iou"]


def _frozen(a: NDArray[np.float64]) -> NDArray[np.float64]:
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class RegressionCertificate:
    """Percentile smoothing's certificate for one input; arrays have one entry per output dimension.

    With probability at least ``1 - alpha`` over the sampling, for every ``||delta|| <= radius``
    (in ``norm``) and *every* dimension ``j`` at once: ``lower[j] <= q_p(x + delta)[j] <= upper[j]``,
    where ``q_p`` is the smoothed output, the true ``p``-th percentile under the noise (not a
    sample estimate of it). In sound mode, for every such ``x + delta`` on the grid; the bounds
    were computed for the ball of ``radius + grid_offset`` about ``round_q(x)``, which holds it.

    Attributes:
        estimate: the sample ``percentile`` of each output at ``x`` (an estimate of the smoothed
            prediction ``q_p(x)``, itself not certified to lie in the interval).
        lower, upper: the certified interval per dimension (``-inf`` / ``inf`` if ``n`` is too small).
        radius: the perturbation radius certified, about ``x`` itself.
        percentile: ``p`` (``0.5``: median smoothing).
        alpha: joint failure probability over all dimensions (``alpha / D`` each, split in two sides).
        n: number of draws.
        sigma: noise level.
        lower_index, upper_index: the 1-based order statistics behind ``lower`` and ``upper``.
        norm: the norm of ``radius``.
        sound, grid: whether this input was certified in sound mode (noise drawn on the grid
            ``i / grid``; ``grid`` is ``None`` in float mode).
        tv_bound: the sampler's residual total variation per noisy input (0 in float mode); the
            order statistics were chosen at ``alpha - n * tv_bound``.
        grid_offset: sound mode: ``||x - round_q(x)||`` in ``norm``, rounded up, added to ``radius``
            in the percentile shift (0.0 for an input stored exactly on the grid, and in float mode).
    """

    estimate: NDArray[np.float64]
    lower: NDArray[np.float64]
    upper: NDArray[np.float64]
    radius: float
    percentile: float
    alpha: float
    n: int
    sigma: float
    lower_index: int
    upper_index: int
    norm: str = "l2"
    sound: bool = False
    grid: int | None = None
    tv_bound: float = 0.0
    grid_offset: float = 0.0

    @property
    def width(self) -> NDArray[np.float64]:
        """``upper - lower`` per dimension."""
        return np.asarray(self.upper - self.lower, dtype=np.float64)


class SmoothedRegressor(SmoothedModel):
    """A real-valued base model ``f: (b, *input_shape) -> (b, D)`` smoothed by its ``percentile``.

    Only Gaussian noise is supported (``noise``: "gaussian" or a :class:`~smoothcert.smoothing.noises.Gaussian`,
    e.g. with float64 draws): the bound of Chiang et al. (Thm. 1) rests on the Gaussian
    Lipschitz property of ``Phi^-1`` of smoothed indicator functions. ``norm`` may be ``"l2"``,
    ``"l1"`` (an l1 ball lies in the l2 ball of the same radius) or ``"linf"`` (the l2 radius is
    ``sqrt(d)`` times the linf one). ``sound`` and ``grid`` are passed to :class:`SmoothedModel` as
    given (left out: its default, ``"auto"``). Other arguments as in :class:`SmoothedModel`.
    """

    def __init__(
        self,
        base_model: Callable[[torch.Tensor], torch.Tensor],
        sigma: float,
        *,
        noise: str | Noise = "gaussian",
        norm: str = "l2",
        device: torch.device | str | None = None,
        input_shape: Sequence[int] | None = None,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        pass_size: int | Literal["auto"] | None = None,
        sound: SoundArg | None = None,
        grid: int | None = None,
    ) -> None:
        if (noise.name if isinstance(noise, Noise) else noise) != "gaussian":
            raise ValueError(f"noise must be Gaussian (the bound of Chiang et al. 2020 is Gaussian), got {noise!r}")
        super().__init__(
            base_model,
            sigma,
            noise=noise,
            norm=norm,
            device=device,
            input_shape=input_shape,
            autocast_dtype=autocast_dtype,
            channels_last=channels_last,
            pass_size=pass_size,
            **sound_options(sound, grid),
        )

    def __repr__(self) -> str:
        mode = f", sound={self.sound!r}" + (f", grid={self.grid})" if self.grid is not None else ")")
        return f"SmoothedRegressor(sigma={self.sigma}, norm={self.norm!r}, device={self.device}" + mode

    def samples(
        self, x: torch.Tensor, *, n: int, batch_size: int, generator: GeneratorArg = None
    ) -> NDArray[np.float64]:
        """The base model's outputs on ``n`` noisy copies of ``x``: an ``(n, D)`` float64 array."""
        return self._samples(self._prepare(x, batch=False), n=n, batch_size=batch_size, generator=generator)

    def _samples(self, xs: torch.Tensor, *, n: int, batch_size: int, generator: GeneratorArg) -> NDArray[np.float64]:
        out: list[NDArray[np.float64]] = self.run_engine(
            xs, OutputSamples(), n=check_int("n", n), batch_size=batch_size, generator=generator
        )
        return out[0]

    def _l2_radius(self, radius: float, dim: int) -> float:
        r = pct.check_radius(radius)
        return r * math.sqrt(dim) if self.norm == "linf" else r

    def certify(
        self,
        x: torch.Tensor,
        *,
        n: int,
        alpha: float,
        radius: float,
        percentile: float = 0.5,
        batch_size: int,
        generator: GeneratorArg = None,
    ) -> RegressionCertificate:
        """Estimate and certified interval of the smoothed ``percentile`` per output dimension.

        ``alpha`` is the failure probability of all ``D`` intervals together: each dimension's
        two bounds use ``alpha / (2 D)`` (Bonferroni), so a box's four intervals hold jointly; in
        sound mode ``(alpha - n * tv_bound) / (2 D)``, and the percentiles are shifted for
        ``radius + grid_offset`` (module docstring). The intervals bound the smoothed output (the
        true percentile under the noise) at every input within ``radius``, not a sample estimate.
        """
        return self.certify_radii(
            x, n=n, alpha=alpha, radii=[radius], percentile=percentile, batch_size=batch_size, generator=generator
        )[0]

    def certify_radii(
        self,
        x: torch.Tensor,
        *,
        n: int,
        alpha: float,
        radii: Sequence[float],
        percentile: float = 0.5,
        batch_size: int,
        generator: GeneratorArg = None,
    ) -> list[RegressionCertificate]:
        """:meth:`certify` at each radius of ``radii`` from the same ``n`` draws (each holds w.p. ``>= 1 - alpha``)."""
        alpha = check_alpha(alpha)
        p = pct.check_percentile(percentile)
        rs = [pct.check_radius(r) for r in radii]
        xs = self._prepare(x, batch=False)
        modes = self.input_modes(xs)
        tv, offset = float(modes.tv_bound[0]), float(modes.offset[0])
        level = level_after_tv(alpha, n=n, tv_bound=tv)  # the whole event: docs/tasks.md §8
        y = self._samples(xs, n=n, batch_size=check_int("batch_size", batch_size), generator=generator)
        if y.ndim != 2 or y.shape[1] == 0:
            raise ConfigError(f"the base model must return outputs of shape (batch, D), got samples {y.shape}")
        dim = int(xs[0].numel())
        out = []
        for r in rs:
            # the ball of r about x lies in the ball of r + offset about round_q(x), the theorem's centre
            b = pct.percentile_bounds(
                y, radius=self._l2_radius(r + offset, dim), sigma=self.sigma, alpha=level / y.shape[1], percentile=p
            )
            out.append(
                RegressionCertificate(
                    estimate=_frozen(b.estimate),
                    lower=_frozen(b.lower),
                    upper=_frozen(b.upper),
                    radius=r,
                    percentile=p,
                    alpha=alpha,
                    n=n,
                    sigma=self.sigma,
                    lower_index=b.lower_index,
                    upper_index=b.upper_index,
                    norm=self.norm,
                    **modes.fields(0),
                    grid_offset=offset,
                )
            )
        return out


# ---------------------------------------------------------------------------------------- boxes


def _box(name: str, value: ArrayLike) -> NDArray[np.float64]:
    b = np.asarray(value, dtype=np.float64)
    if b.shape[-1:] != (4,):
        raise ValueError(f"{name} must be boxes (x0, y0, x1, y1) with last dimension 4, got shape {b.shape}")
    return b


def box_iou(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64] | float:
    """Intersection over union of boxes ``(x0, y0, x1, y1)`` (broadcast over leading dimensions).

    A box with ``x1 <= x0`` or ``y1 <= y0`` is empty; the IoU of two empty boxes is 0.
    """
    a, b = _box("a", a), _box("b", b)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih

    def area(x: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None))

    union = area(a) + area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return float(iou) if iou.ndim == 0 else np.asarray(iou)


def worst_case_iou(lower: ArrayLike, upper: ArrayLike, reference: ArrayLike) -> float:
    """The exact minimum of ``IoU(b, reference)`` over all boxes ``b`` with ``lower <= b <= upper``.

    If the intervals admit an empty box (``upper[0] >= lower[2]`` or ``upper[1] >= lower[3]``) the
    minimum is 0. Otherwise every admissible box is non-empty and, with the other three
    coordinates fixed, the IoU is a ratio of affine functions of one coordinate (positive
    denominator) on each piece between the kinks at the reference's two edges on that axis, so it
    is monotone there; moving one coordinate at a time to an end of its piece never raises it.
    Hence the minimum is attained on the grid of interval ends and the reference's edges inside
    each interval (at most 4^4 boxes), which is searched exhaustively. Infinite bounds give 0.
    Derivation: ``docs/tasks.md`` §3.
    """
    lo, hi, ref = _box("lower", lower), _box("upper", upper), _box("reference", reference)
    if lo.ndim != 1 or hi.ndim != 1 or ref.ndim != 1:
        raise ValueError("worst_case_iou takes one box interval and one reference box")
    if np.any(lo > hi):
        raise ValueError(f"lower must be <= upper coordinate-wise, got lower={lo.tolist()}, upper={hi.tolist()}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        return 0.0
    if hi[0] >= lo[2] or hi[1] >= lo[3] or ref[2] <= ref[0] or ref[3] <= ref[1]:
        return 0.0
    candidates = []
    for j in range(4):
        axis_edges = (ref[0], ref[2]) if j in (0, 2) else (ref[1], ref[3])
        candidates.append(sorted({lo[j], hi[j], *(e for e in axis_edges if lo[j] < e < hi[j])}))
    grid = np.array(list(itertools.product(*candidates)), dtype=np.float64)
    return float(np.min(box_iou(grid, ref[None, :])))
