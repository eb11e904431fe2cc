"""The smoothed classifier ``g(x) = argmax_c P(f(x + eps) = c)``, eps ~ N(0, sigma^2 I) by default.

Other noise distributions (:mod:`smoothcert.smoothing.noises`: Laplace, uniform) and threat norms
(L1, L2, L-infinity) plug in through ``noise=`` and ``norm=``; the certified radius is then the
noise's radius for that norm (:mod:`smoothcert.core.radii`).

:class:`SmoothedClassifier` applies the exact statistics (:mod:`smoothcert.core.stats`) to the
engine's class votes: PREDICT and CERTIFY of Cohen, Rosenfeld & Kolter (ICML 2019), Sec. 3.2,
and sequential CERTIFY (:mod:`smoothcert.smoothing.adaptive`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from smoothcert.core import stats
from smoothcert.core.checks import check_alpha, check_int
from smoothcert.core.errors import ConfigError
from smoothcert.smoothing import curve as _curve
from smoothcert.smoothing.adaptive import SequentialSettings, certify_sequential
from smoothcert.smoothing.certificates import (
    ABSTAIN,
    AdaptiveCertificate,
    Certificate,
    Prediction,
    SmoothingWarning,
    warn_once,
)
from smoothcert.smoothing.engine import ClassVotes, GeneratorArg
from smoothcert.smoothing.noises import Noise
from smoothcert.smoothing.smoothed import InputModes, SmoothedModel, SoundArg

__all__ = ["ABSTAIN", "AdaptiveCertificate", "Certificate", "Prediction", "SmoothedClassifier", "SmoothingWarning"]


class SmoothedClassifier(SmoothedModel):
    """A base classifier smoothed by noise (isotropic Gaussian by default), with PREDICT and CERTIFY.

    Args:
        base_classifier: maps a batch ``(b, *input_shape)`` to logits ``(b, num_classes)``.
        num_classes: number of classes (>= 2).
        sigma, noise, norm, device, input_shape, autocast_dtype, channels_last, pass_size, sound, grid:
            as in :class:`smoothcert.smoothing.smoothed.SmoothedModel`.

    **Sound mode** (``docs/sound.md``): by default (``sound="auto"``, ``grid=255``) every input
    on the grid ``i / grid`` is certified in sound mode: the noise is drawn on the grid, on
    integers, and a certificate holds for every input on the same grid within ``radius`` of
    ``x``, the generator's randomness the only assumption; the sampler's residual total
    variation ``tv_bound`` (about ``2e-13`` for 784 pixels) is subtracted from ``p_lower``, and
    the tolerance offset ``grid_offset = ||x - round_q(x)||`` from the radius. An input off the
    grid is certified in float mode (the model sees ``fl(x + fl(eps))``, whose law is not the one
    the radius formulas assume), with a :class:`SmoothingWarning` the first time. ``sound=True``
    refuses inputs off the grid; ``sound=False`` is float mode for all (the 0.2 default). Each
    result records its input's mode (``sound``, ``grid``, ``tv_bound``); a batch is split per
    input (:class:`~smoothcert.smoothing.smoothed.SmoothedModel`).

    Certificates hold in the chosen ``norm`` for the chosen ``noise``. Results depend on the
    generator's seed, ``n0``, ``n``, the batch size when ``n`` exceeds it, the device, and the
    numerics of the base classifier; with these fixed they are reproducible.
    """

    def __init__(
        self,
        base_classifier: Callable[[torch.Tensor], torch.Tensor],
        num_classes: int,
        sigma: float,
        *,
        noise: str | Noise = "gaussian",
        norm: str = "l2",
        device: torch.device | str | None = None,
        input_shape: Sequence[int] | None = None,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        pass_size: int | Literal["auto"] | None = "auto",
        sound: SoundArg = "auto",
        grid: int | None = None,
    ) -> None:
        if not callable(base_classifier):
            raise TypeError(f"base_classifier must be callable, got {type(base_classifier).__name__}")
        super().__init__(
            base_classifier,
            sigma,
            noise=noise,
            norm=norm,
            device=device,
            input_shape=input_shape,
            autocast_dtype=autocast_dtype,
            channels_last=channels_last,
            pass_size=pass_size,
            sound=sound,
            grid=grid,
        )
        self.num_classes = check_int("num_classes", num_classes, 2)
        self._warned: set[tuple[str, int, float]] = set()  # SmoothingWarnings already given by this instance

    @property
    def base_classifier(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The base classifier (the smoothed model's ``base_model``)."""
        return self.base_model

    def __repr__(self) -> str:
        return (
            f"SmoothedClassifier(num_classes={self.num_classes}, sigma={self.sigma}, noise={self.noise.name!r}, "
            f"norm={self.norm!r}, device={self.device}, sound={self.sound!r}"
            + (f", grid={self.grid})" if self.grid is not None else ")")
        )

    def sample_counts(
        self, xs: torch.Tensor, *, n: int, batch_size: int, generator: GeneratorArg = None
    ) -> NDArray[np.int64]:
        """Votes of the base classifier on ``n`` noisy copies of each input of the batch ``xs``."""
        return self._counts(self._prepare(xs, batch=True), n=n, batch_size=batch_size, generator=generator)

    def _counts(
        self, xs: torch.Tensor, *, n: int | Sequence[int], batch_size: int, generator: GeneratorArg
    ) -> NDArray[np.int64]:
        counts: NDArray[np.int64] = self.run_engine(
            xs, ClassVotes(self.num_classes), n=n, batch_size=batch_size, generator=generator
        )
        return counts

    def _warn_if_hopeless(self, kind: str, n: int, alpha: float, least: int) -> None:
        if n < least:
            what = "PREDICT" if kind == "predict" else "CERTIFY"
            warn_once(
                self._warned,
                kind,
                n,
                alpha,
                f"{what} with n={n} always abstains at alpha={alpha}: it needs n >= {least}",
            )

    # ------------------------------------------------------------------ PREDICT

    def predict(
        self, x: torch.Tensor, *, n: int, alpha: float, batch_size: int, generator: GeneratorArg = None
    ) -> Prediction:
        """PREDICT (Sec. 3.2.1): the top class if it beats the runner-up at level ``alpha``.

        Returns a class other than ``g(x)`` with probability at most ``alpha``. In sound mode the
        binomial test runs at level ``alpha - n * tv_bound``, since the ``n`` draws jointly differ
        from the target law by at most ``n * tv_bound`` in total variation (``g(x)`` is then the
        smoothed classifier at the grid point ``round_q(x)``, which sound mode defines as ``g(x)``).
        """
        return self._predict(
            self._prepare(x, batch=False), n=n, alpha=alpha, batch_size=batch_size, generator=generator
        )[0]

    def predict_batch(
        self, xs: torch.Tensor, *, n: int, alpha: float, batch_size: int, generator: GeneratorArg = None
    ) -> list[Prediction]:
        """PREDICT for each input of the batch ``xs``; inputs with small ``n`` share forward passes.

        ``generator`` may be one generator per input, which makes each result independent of
        the others in the batch.
        """
        return self._predict(
            self._prepare(xs, batch=True), n=n, alpha=alpha, batch_size=batch_size, generator=generator
        )

    def _predict(
        self, xs: torch.Tensor, *, n: int, alpha: float, batch_size: int, generator: GeneratorArg
    ) -> list[Prediction]:
        alpha = check_alpha(alpha)
        n = check_int("n", n)
        batch_size = check_int("batch_size", batch_size)
        self._warn_if_hopeless("predict", n, alpha, stats.min_predict_n(alpha))
        modes = self.input_modes(xs)
        counts = self._counts(xs, n=n, batch_size=batch_size, generator=generator)
        order = np.argsort(-counts, axis=1, kind="stable")
        rows = np.arange(len(counts))
        top, second = order[:, 0], order[:, 1]
        n_top, n_second = counts[rows, top], counts[rows, second]
        pvalues = np.atleast_1d(stats.predict_pvalue(n_top, n_second))
        level = alpha - n * modes.tv_bound
        return [
            Prediction(
                label=int(top[i]) if pvalues[i] <= level[i] else ABSTAIN,
                count=int(n_top[i]),
                runner_up_count=int(n_second[i]),
                n=n,
                pvalue=float(pvalues[i]),
                alpha=alpha,
                **modes.fields(i),
            )
            for i in range(len(counts))
        ]

    # ------------------------------------------------------------------ CERTIFY

    def certify(
        self, x: torch.Tensor, *, n0: int, n: int, alpha: float, batch_size: int, generator: GeneratorArg = None
    ) -> Certificate:
        """CERTIFY (Sec. 3.2.2): pick the class with ``n0`` samples, bound ``pA`` with ``n`` fresh ones.

        With probability at least ``1 - alpha``, a non-abstaining certificate is correct:
        ``g(x + delta) = label`` for every ``delta`` with ``||delta|| < radius`` in the
        classifier's ``norm`` (for Gaussian L2, ``radius = sigma * Phi^-1(p_lower)``); in sound
        mode, for every such ``x + delta`` on the grid, with ``p_lower`` the Clopper–Pearson bound
        minus ``tv_bound`` and the radius reduced by ``grid_offset`` (the theorem's centre is
        ``round_q(x)``).
        """
        xs = self._prepare(x, batch=False)
        return self._certify(xs, n0=n0, n=n, alpha=alpha, batch_size=batch_size, generator=generator)[0]

    def certify_batch(
        self, xs: torch.Tensor, *, n0: int, n: int, alpha: float, batch_size: int, generator: GeneratorArg = None
    ) -> list[Certificate]:
        """CERTIFY for each input of the batch ``xs`` (an empty batch gives ``[]``).

        The selection draws of all inputs come first, then the estimation draws. With one
        generator per input, each certificate equals the one :meth:`certify` gives with
        that generator alone.
        """
        xs = self._prepare(xs, batch=True)
        return self._certify(xs, n0=n0, n=n, alpha=alpha, batch_size=batch_size, generator=generator)

    def _certify(
        self, xs: torch.Tensor, *, n0: int, n: int, alpha: float, batch_size: int, generator: GeneratorArg
    ) -> list[Certificate]:
        alpha = check_alpha(alpha)
        n0 = check_int("n0", n0)
        n = check_int("n", n)
        batch_size = check_int("batch_size", batch_size)
        self._warn_if_hopeless("certify", n, alpha, stats.min_certify_n(alpha))
        if len(xs) == 0:
            return []
        selection = self._counts(xs, n=n0, batch_size=batch_size, generator=generator)
        estimation = self._counts(xs, n=n, batch_size=batch_size, generator=generator)
        return self.certificates_from_counts(selection, estimation, n0=n0, n=n, alpha=alpha, xs=xs)

    def certificates_from_counts(
        self,
        selection: NDArray[np.int64],
        estimation: NDArray[np.int64],
        *,
        n0: int,
        n: int,
        alpha: float,
        dim: int | None = None,
        xs: torch.Tensor | None = None,
    ) -> list[Certificate]:
        """CERTIFY's decision from vote counts ``(k, num_classes)``: the class with the most of the ``n0``
        selection votes, its Clopper–Pearson bound from the ``n`` estimation votes, the radius.

        For callers that count votes themselves (e.g. several classifiers voting on one shared set of
        draws, through :meth:`run_engine`). ``xs`` is the batch the votes were drawn at: one input
        per row of the counts, or a batch of one input for every row. It decides each row's mode
        (sound or float, as :meth:`run_engine` chose it), residual and grid offset, and is
        required unless ``sound=False``; ``dim`` (the input's number of coordinates) is then
        taken from it, and is required without it.
        """
        alpha = check_alpha(alpha)
        selection, estimation = np.asarray(selection), np.asarray(estimation)
        if selection.ndim != 2 or selection.shape != estimation.shape:
            raise ValueError(
                f"selection and estimation must be (k, num_classes) arrays of one shape, "
                f"got {selection.shape} and {estimation.shape}"
            )
        k = len(selection)
        modes, dim = self._modes_of_rows(xs, k, dim)
        selected = selection.argmax(axis=1)
        count = estimation[np.arange(k), selected]
        p_lower = np.maximum(np.atleast_1d(stats.clopper_pearson_lower(count, n, alpha)) - modes.tv_bound, 0.0)
        certified = p_lower > 0.5
        radius = np.maximum(self.radius_of(p_lower, dim=dim) - modes.offset, 0.0)
        return [
            Certificate(
                label=int(selected[i]) if certified[i] else ABSTAIN,
                radius=float(radius[i]) if certified[i] else 0.0,
                p_lower=float(p_lower[i]),
                count=int(count[i]),
                n=n,
                n0=n0,
                alpha=alpha,
                sigma=self.sigma,
                selected=int(selected[i]),
                norm=self.norm,
                noise=self.noise.name,
                **modes.fields(i),
                grid_offset=float(modes.offset[i]),
            )
            for i in range(k)
        ]

    def _modes_of_rows(self, xs: torch.Tensor | None, k: int, dim: int | None) -> tuple[InputModes, int]:
        """The :class:`InputModes` of ``k`` rows of counts drawn at ``xs`` (one row, or one per count row)."""
        if xs is None:
            if self.sound is not False:
                raise ConfigError(
                    f"certificates_from_counts needs xs= (the inputs the votes were drawn at) with "
                    f"sound={self.sound!r}: each input's mode and grid offset depend on it"
                )
            if dim is None:
                raise ConfigError("certificates_from_counts needs dim= (the input's number of coordinates) or xs=")
            z = np.zeros(k)
            return InputModes(sound=np.zeros(k, dtype=bool), grid=None, tv_bound=z, offset=z), check_int("dim", dim)
        if not isinstance(xs, torch.Tensor) or xs.ndim < 2 or len(xs) not in (1, k):
            shape = tuple(xs.shape) if isinstance(xs, torch.Tensor) else type(xs).__name__
            raise ValueError(f"xs must be a batch of 1 or {k} inputs (one per row of counts), got {shape}")
        d = int(xs[0].numel())
        if dim is not None and dim != d:
            raise ValueError(f"dim={dim!r} but the inputs xs have {d} coordinates")
        modes = self.input_modes(xs)
        return (modes.take(np.zeros(k, dtype=np.intp)) if len(xs) == 1 and k != 1 else modes), d

    # ------------------------------------------------------------------ sequential CERTIFY

    def certify_adaptive(
        self, x: torch.Tensor, *, label: int | None = None, generator: GeneratorArg = None, **settings: Any
    ) -> AdaptiveCertificate:
        """Sequential CERTIFY: the same guarantee as :meth:`certify`, stopping as soon as the data decide.

        ``settings`` are the keywords of :class:`~smoothcert.smoothing.adaptive.SequentialSettings`:
        ``alpha``, ``n_max``, ``batch_size`` (required), ``radius``, ``n0``, ``beta``, ``n_first``,
        ``radius_cap``, ``radius_tol``.

        **Decision mode** (``radius=r``): tests ``H0: pA <= p*``, ``p*`` the ``pA`` at which the
        noise's radius equals ``r`` (``Phi(r / sigma)`` for Gaussian L2), on a doubling stage grid
        from ``n_first`` to ``n_max``; ``certified`` as soon as the stage's lower bound clears
        ``p*``. **Max-radius mode** (``radius=None``): the largest radius the samples support,
        stopping at ``radius_cap`` or when more samples cannot raise it by more than ``radius_tol``.

        With probability at least ``1 - alpha`` a non-abstaining result is correct, whatever
        the stopping rule (union bound over the grid, :mod:`smoothcert.core.sequential`). ``beta``
        (default ``alpha``) only sets how often a certifiable input is given up on early.

        The class is selected with ``n0`` separate samples that never enter the bound.
        ``label=c`` (evaluation mode) skips selection and asks "is ``g`` robustly ``c`` here?":
        right for certified accuracy, where only the true label's certificate counts; not for
        deployment, where the label is unknown.
        """
        xs = self._prepare(x, batch=False)
        labels = None if label is None else [label]
        return certify_sequential(self, xs, SequentialSettings(**settings), labels=labels, generator=generator)[0]

    def certify_adaptive_batch(
        self,
        xs: torch.Tensor,
        *,
        labels: Sequence[int] | None = None,
        generator: GeneratorArg = None,
        **settings: Any,
    ) -> list[AdaptiveCertificate]:
        """:meth:`certify_adaptive` for each input of ``xs``; the next stage of every still-active
        input shares forward passes, so inputs that stop early never leave passes half empty.

        With one generator per input, each result equals what :meth:`certify_adaptive` gives
        with that generator alone.
        """
        xs = self._prepare(xs, batch=True)
        return certify_sequential(self, xs, SequentialSettings(**settings), labels=labels, generator=generator)

    def certify_curve(
        self, x: torch.Tensor, *, label: int | None = None, generator: torch.Generator | None = None, **settings: Any
    ) -> _curve.CurveCertificate:
        """Curve mode (``docs/curve.md``): the largest certified radius from one time-uniform lower
        bound on ``pA``, sampling until the reporting grid (default ``0, cap/8, ..., cap``; cap
        ``2 sigma`` for Gaussian L2) is settled. ``settings`` (keyword-only): ``alpha``, ``n_max``,
        ``batch_size`` (required), ``radius_cap`` or ``radii``, ``n0``, ``beta``, ``method``,
        ``n_first``, ``growth``, ``radius_tol``, ``acr_tol``. ``label=`` bounds that class without
        selection: evaluation only, like :meth:`certify_adaptive`'s.
        """
        return _curve.certify_curve(self, x, label=label, generator=generator, **settings)

    def certify_curve_batch(
        self,
        xs: torch.Tensor,
        *,
        labels: Sequence[int] | None = None,
        generator: GeneratorArg = None,
        **settings: Any,
    ) -> list[_curve.CurveCertificate]:
        """:meth:`certify_curve` for each input of ``xs``; the next look of every active input shares
        forward passes. With one generator per input each result equals the one-input call."""
        return _curve.certify_curve_batch(self, xs, labels=labels, generator=generator, **settings)
