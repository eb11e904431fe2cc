"""The smoothed segmenter: one smoothed classifier per output pixel, certified together.

Fischer, Baader & Vechev (ICML 2021), Sec. 4 (SegCertify): guess each pixel's class from ``n0``
draws; count, in ``n`` fresh draws, how often each pixel takes its guess; test ``H0_i: p_i <= tau``
per pixel with the exact binomial test; correct for multiplicity with Holm's method. Certified
pixels keep their class and every one of them is robust at the common radius ``R = sigma
Phi^-1(tau)`` (other noises and norms: :func:`smoothcert.core.segmentation.segmentation_radius`);
the others abstain. Per-pixel PREDICT is corrected with Bonferroni's method (``docs/tasks.md`` §1).
The statistics are in :mod:`smoothcert.core.segmentation`; the sampling is the one engine's
:class:`~smoothcert.smoothing.engine.PixelVotes` reduction.

**Sound mode** (per input, as :meth:`SmoothedModel.input_modes` decides: every input under
``sound=True``, the inputs on the grid under the default ``"auto"``; ``docs/sound.md``,
``docs/tasks.md`` §8): the noise is drawn on the input's grid, on integers; each test then runs at
``alpha - n * tv_bound`` under the ideal law (:func:`smoothcert.core.sound_level.level_after_tv`),
so the certificate holds at ``alpha`` under the sampler's law, for every input on the grid within
the radius. The theorem's centre is the grid point ``round_q(x)``, so the common radius is reduced
by the input's ``grid_offset = ||x - round_q(x)||``. An input in float mode has ``tv_bound = 0``
and ``grid_offset = 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from smoothcert.core import segmentation as seg
from smoothcert.core.checks import check_alpha, check_int
from smoothcert.core.sound_level import level_after_tv
from smoothcert.smoothing.certificates import ABSTAIN
from smoothcert.smoothing.engine import GeneratorArg, PixelVotes
from smoothcert.smoothing.noises import Noise
from smoothcert.smoothing.smoothed import SmoothedModel, SoundArg

__all__ = ["ABSTAIN", "SegmentationCertificate", "SegmentationPrediction", "SmoothedSegmenter", "sound_options"]


def sound_options(sound: SoundArg | None, grid: int | None) -> dict[str, Any]:
    """The ``sound=`` / ``grid=`` keywords to pass on to :class:`SmoothedModel`: those given (not None),
    so that a dense model left without them gets :class:`SmoothedModel`'s own default."""
    out: dict[str, Any] = {}
    if sound is not None:
        out["sound"] = sound
    if grid is not None:
        out["grid"] = grid
    return out


def _frozen(a: NDArray[np.generic]) -> NDArray[np.generic]:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class SegmentationCertificate:
    """Result of segmentation CERTIFY for one input.

    With probability at least ``1 - alpha`` over the sampling, *every* pixel with
    ``labels[i] != ABSTAIN`` satisfies ``g_i(x + delta) = labels[i]`` for all ``||delta|| < radius``
    (in sound mode, every such ``x + delta`` on the grid; the theorem's centre is ``round_q(x)``, and
    ``radius`` is already reduced by ``grid_offset``, so it is a radius about ``x`` itself).

    Attributes:
        labels: ``(H, W)`` int64 certified classes, ``ABSTAIN`` (-1) where not certified.
        selected: ``(H, W)`` the classes guessed from the ``n0`` selection draws.
        counts: ``(H, W)`` votes for the selected class among the ``n`` estimation draws.
        pvalues: ``(H, W)`` one-sided binomial p-values of ``H0: p_i <= tau`` (uncorrected).
        radius: the common radius of the certified pixels: the noise's radius at ``tau``, in sound
            mode less ``grid_offset`` (at least 0), so a radius about ``x`` itself.
        tau: the per-pixel probability threshold.
        abstain_fraction: fraction of pixels that abstain.
        n, n0, alpha, sigma, norm, noise: the settings.
        sound, grid: whether this input was certified in sound mode (noise drawn on the grid
            ``i / grid``; ``grid`` is ``None`` in float mode).
        tv_bound: the sampler's residual total variation per noisy input (0 in float mode); Holm's
            procedure ran at ``alpha - n * tv_bound``.
        grid_offset: sound mode: ``||x - round_q(x)||`` in ``norm``, rounded up, subtracted from the
            radius (0.0 for an input stored exactly on the grid, and in float mode).
    """

    labels: NDArray[np.int64]
    selected: NDArray[np.int64]
    counts: NDArray[np.int64]
    pvalues: NDArray[np.float64]
    radius: float
    tau: float
    abstain_fraction: float
    n: int
    n0: int
    alpha: float
    sigma: float
    norm: str = "l2"
    noise: str = "gaussian"
    sound: bool = False
    grid: int | None = None
    tv_bound: float = 0.0
    grid_offset: float = 0.0


@dataclass(frozen=True)
class SegmentationPrediction:
    """Result of segmentation PREDICT for one input.

    With probability at least ``1 - alpha``, every pixel with ``labels[i] != ABSTAIN`` has
    ``labels[i] = g_i(x)`` (per-pixel PREDICT of Cohen et al. 2019, Sec. 3.2.1, with Bonferroni's
    correction over the pixels: each at level ``alpha / m``; ``docs/tasks.md`` §1).

    Attributes:
        labels: ``(H, W)`` int64 predicted classes, ``ABSTAIN`` where the test did not decide.
        abstain_fraction: fraction of pixels that abstain.
        n, alpha: the settings.
        pvalues: ``(H, W)`` two-sided p-values of each pixel's top class against its runner-up.
        sound, grid, tv_bound: this input's mode, as in :class:`SegmentationCertificate`; the pixels
            were tested at ``(alpha - n * tv_bound) / m``.
    """

    labels: NDArray[np.int64]
    abstain_fraction: float
    n: int
    alpha: float
    pvalues: NDArray[np.float64] | None = None
    sound: bool = False
    grid: int | None = None
    tv_bound: float = 0.0


class SmoothedSegmenter(SmoothedModel):
    """A base segmenter smoothed by noise, with per-pixel CERTIFY and PREDICT.

    Args:
        base_model: maps a batch ``(b, *input_shape)`` to scores ``(b, num_classes, H, W)``.
        num_classes: number of classes (>= 2), background included.
        sigma, noise, norm, device, input_shape, autocast_dtype, channels_last, pass_size:
            as in :class:`smoothcert.smoothing.smoothed.SmoothedModel`.
        output_shape: ``(H, W)`` of the model's score maps; by default the input's last two
            dimensions (fully-convolutional models at the input's resolution).
        sound, grid: sound mode and its grid, passed to :class:`SmoothedModel` as given (left
            out: :class:`SmoothedModel`'s default, ``"auto"``: each input on the grid 255 in sound
            mode, any other in float mode, with a one-time warning).
    """

    def __init__(
        self,
        base_model: Callable[[torch.Tensor], torch.Tensor],
        num_classes: int,
        sigma: float,
        *,
        noise: str | Noise = "gaussian",
        norm: str = "l2",
        device: torch.device | str | None = None,
        input_shape: Sequence[int] | None = None,
        output_shape: Sequence[int] | None = None,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        pass_size: int | Literal["auto"] | None = None,
        sound: SoundArg | None = None,
        grid: int | None = None,
    ) -> None:
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
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.output_shape = tuple(int(d) for d in output_shape) if output_shape is not None else None

    def __repr__(self) -> str:
        return (
            f"SmoothedSegmenter(num_classes={self.num_classes}, sigma={self.sigma}, noise={self.noise.name!r}, "
            f"norm={self.norm!r}, device={self.device}, sound={self.sound!r}"
            + (f", grid={self.grid})" if self.grid is not None else ")")
        )

    def pixel_counts(
        self, xs: torch.Tensor, *, n: int, batch_size: int, generator: GeneratorArg = None
    ) -> NDArray[np.int64]:
        """Per-pixel votes ``(k, H*W, num_classes)`` of the base model on ``n`` noisy copies of each input."""
        counts: NDArray[np.int64] = self.run_engine(
            self._prepare(xs, batch=True), PixelVotes(self.num_classes), n=n, batch_size=batch_size, generator=generator
        )
        return counts

    def _shape(self, xs: torch.Tensor, pixels: int) -> tuple[int, ...]:
        shape = self.output_shape or tuple(xs.shape[-2:])
        if int(np.prod(shape)) != pixels:
            raise ValueError(
                f"the base model returned {pixels} pixels per input, not {'x'.join(map(str, shape))}; "
                "give output_shape= to SmoothedSegmenter"
            )
        return shape

    # ------------------------------------------------------------------ CERTIFY

    def certify(
        self,
        x: torch.Tensor,
        *,
        n0: int,
        n: int,
        alpha: float,
        tau: float,
        batch_size: int,
        generator: GeneratorArg = None,
        correction: str = "holm",
    ) -> SegmentationCertificate:
        """SegCertify (Fischer et al. 2021, Sec. 4) for one input ``x`` of shape ``input_shape``.

        ``correction`` is ``"holm"`` (default) or ``"bonferroni"``; both bound the family-wise
        error by ``alpha``.
        """
        xs = self._prepare(x, batch=False)
        return self._certify(
            xs, n0=n0, n=n, alpha=alpha, taus=[tau], batch_size=batch_size, generator=generator, correction=correction
        )[0][0]

    def certify_taus(
        self,
        x: torch.Tensor,
        *,
        n0: int,
        n: int,
        alpha: float,
        taus: Sequence[float],
        batch_size: int,
        generator: GeneratorArg = None,
        correction: str = "holm",
    ) -> list[SegmentationCertificate]:
        """:meth:`certify` at each threshold of ``taus`` from the same draws (the trade-off between
        radius and abstention at the cost of one run); each certificate holds w.p. ``>= 1 - alpha``."""
        xs = self._prepare(x, batch=False)
        return [
            per_tau[0]
            for per_tau in self._certify(
                xs,
                n0=n0,
                n=n,
                alpha=alpha,
                taus=taus,
                batch_size=batch_size,
                generator=generator,
                correction=correction,
            )
        ]

    def certify_batch(
        self,
        xs: torch.Tensor,
        *,
        n0: int,
        n: int,
        alpha: float,
        tau: float,
        batch_size: int,
        generator: GeneratorArg = None,
        correction: str = "holm",
    ) -> list[SegmentationCertificate]:
        """:meth:`certify` for each input of ``xs``; with one generator per input each result equals
        what :meth:`certify` gives with that generator alone. ``alpha`` holds per input."""
        xs = self._prepare(xs, batch=True)
        return self._certify(
            xs, n0=n0, n=n, alpha=alpha, taus=[tau], batch_size=batch_size, generator=generator, correction=correction
        )[0]

    def _certify(
        self,
        xs: torch.Tensor,
        *,
        n0: int,
        n: int,
        alpha: float,
        taus: Sequence[float],
        batch_size: int,
        generator: GeneratorArg,
        correction: str,
    ) -> list[list[SegmentationCertificate]]:
        """Certificates ``[tau][input]`` from one selection and one estimation run."""
        alpha = check_alpha(alpha)
        taus = [seg.check_tau(t) for t in taus]
        n0 = check_int("n0", n0)
        n = check_int("n", n)
        batch_size = check_int("batch_size", batch_size)
        if len(xs) == 0:
            return [[] for _ in taus]
        dim = int(xs[0].numel())
        modes = self.input_modes(xs)
        # the selection is independent of the estimation draws: given it, only the n estimation
        # draws move the error probability, by at most n * tv (docs/tasks.md §8); per input, as
        # each input's mode gives its tv (0 in float mode)
        levels = [level_after_tv(alpha, n=n, tv_bound=float(t)) for t in modes.tv_bound]
        selection: NDArray[np.int64] = self.run_engine(
            xs, PixelVotes(self.num_classes), n=n0, batch_size=batch_size, generator=generator
        )
        estimation: NDArray[np.int64] = self.run_engine(
            xs, PixelVotes(self.num_classes), n=n, batch_size=batch_size, generator=generator
        )
        shape = self._shape(xs, selection.shape[1])
        selected = selection.argmax(axis=2)
        counts = np.take_along_axis(estimation, selected[:, :, None], axis=2)[:, :, 0]
        out: list[list[SegmentationCertificate]] = []
        for tau in taus:
            common = seg.segmentation_radius(tau, sigma=self.sigma, noise=self.noise.name, norm=self.norm, dim=dim)
            # the radius about round_q(x) less the grid offset is a radius about x (docs/sound.md §2)
            radii = np.maximum(common - modes.offset, 0.0)
            row = []
            for i in range(len(xs)):
                certified, pvalues = seg.certify_pixels(counts[i], n, tau=tau, alpha=levels[i], correction=correction)
                labels = np.where(certified, selected[i], ABSTAIN).astype(np.int64)
                row.append(
                    SegmentationCertificate(
                        labels=_frozen(labels.reshape(shape)),  # type: ignore[arg-type]
                        selected=_frozen(selected[i].astype(np.int64).reshape(shape)),  # type: ignore[arg-type]
                        counts=_frozen(counts[i].astype(np.int64).reshape(shape)),  # type: ignore[arg-type]
                        pvalues=_frozen(pvalues.reshape(shape)),  # type: ignore[arg-type]
                        radius=float(radii[i]),
                        tau=tau,
                        abstain_fraction=float(1.0 - certified.mean()),
                        n=n,
                        n0=n0,
                        alpha=alpha,
                        sigma=self.sigma,
                        norm=self.norm,
                        noise=self.noise.name,
                        **modes.fields(i),
                        grid_offset=float(modes.offset[i]),
                    )
                )
            out.append(row)
        return out

    # ------------------------------------------------------------------ PREDICT

    def predict(
        self, x: torch.Tensor, *, n: int, alpha: float, batch_size: int, generator: GeneratorArg = None
    ) -> SegmentationPrediction:
        """Per-pixel PREDICT: each pixel's top class where it beats the runner-up (two-sided
        binomial test, Cohen et al. 2019, Sec. 3.2.1) at level ``alpha / m`` over the ``m`` pixels
        (Bonferroni), so that with probability ``>= 1 - alpha`` no returned pixel label differs from
        ``g_i(x)``. In sound mode the level is ``(alpha - n * tv_bound) / m``."""
        alpha = check_alpha(alpha)
        n = check_int("n", n)
        xs = self._prepare(x, batch=False)
        modes = self.input_modes(xs)
        level = level_after_tv(alpha, n=n, tv_bound=float(modes.tv_bound[0]))
        counts: NDArray[np.int64] = self.run_engine(
            xs, PixelVotes(self.num_classes), n=n, batch_size=check_int("batch_size", batch_size), generator=generator
        )
        top, keep, pvalues = seg.predict_pixels(counts[0], level)
        shape = self._shape(xs, len(top))
        labels = np.where(keep, top, ABSTAIN).astype(np.int64)
        return SegmentationPrediction(
            labels=_frozen(labels.reshape(shape)),  # type: ignore[arg-type]
            abstain_fraction=float(1.0 - keep.mean()),
            n=n,
            alpha=alpha,
            pvalues=_frozen(pvalues.reshape(shape)),  # type: ignore[arg-type]
            **modes.fields(0),
        )
