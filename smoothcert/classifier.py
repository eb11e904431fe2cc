"""The smoothed classifier ``g(x) = argmax_c P(f(x + eps) = c)``, eps ~ N(0, sigma^2 I).

:class:`SmoothedClassifier` combines the sampling engine (:mod:`smoothcert.sampling`) with
the exact statistics (:mod:`smoothcert.stats`) into PREDICT and CERTIFY of Cohen, Rosenfeld &
Kolter (ICML 2019), Sec. 3.2.

**Input space.** ``sigma`` is measured in the space the inputs are given in. Give images as
pixels in ``[0, 1]`` and put any per-channel normalization inside the base classifier (as its
first layer): then the certificate is an L2 radius in ``[0, 1]`` pixel space. Noisy inputs are
never clipped to ``[0, 1]``, since clipping would change the smoothing distribution.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from . import stats
from ._checks import check_alpha, check_int, check_sigma
from .sampling import GeneratorArg, sample_counts

__all__ = ["ABSTAIN", "Certificate", "Prediction", "SmoothedClassifier", "SmoothingWarning"]

ABSTAIN: int = -1
"""Label returned when PREDICT or CERTIFY abstains."""


class SmoothingWarning(UserWarning):
    """A setting with which the smoothed classifier can never answer."""


def _warn_once(warned: set[tuple[str, int, float]], kind: str, n: int, alpha: float, message: str) -> None:
    """Warn once per ``(kind, n, alpha)`` and per ``warned`` registry (one per SmoothedClassifier)."""
    key = (kind, n, alpha)
    if key not in warned:
        warned.add(key)
        warnings.warn(message, SmoothingWarning, stacklevel=3)


@dataclass(frozen=True)
class Certificate:
    """Result of CERTIFY for one input.

    With probability at least ``1 - alpha`` over the sampling, if ``label != ABSTAIN`` then
    ``g(x + delta) = label`` for every ``||delta||_2 < radius`` (Cohen et al., Prop. 2).

    Attributes:
        label: the certified class, or ``ABSTAIN`` (-1).
        radius: ``sigma * Phi^-1(p_lower)``; ``0.0`` when abstaining.
        p_lower: one-sided ``1 - alpha`` Clopper–Pearson lower bound on ``pA``.
        count: votes for the selected class among the ``n`` estimation samples.
        n: number of estimation samples.
        n0: number of selection samples.
        alpha: failure probability.
        sigma: noise level.
        selected: the class picked by the ``n0`` selection samples (also when abstaining).
    """

    label: int
    radius: float
    p_lower: float
    count: int
    n: int
    n0: int
    alpha: float
    sigma: float
    selected: int

    @property
    def abstained(self) -> bool:
        """True when CERTIFY abstained (``p_lower <= 1/2``)."""
        return self.label == ABSTAIN


@dataclass(frozen=True)
class Prediction:
    """Result of PREDICT for one input.

    With probability at least ``1 - alpha``, a returned label equals ``g(x)`` (Prop. 1).

    Attributes:
        label: the predicted class, or ``ABSTAIN`` (-1).
        count: votes for the top class among the ``n`` samples.
        runner_up_count: votes for the second class.
        n: number of samples.
        pvalue: two-sided binomial p-value of ``count`` out of ``count + runner_up_count``.
        alpha: significance level; the label is returned iff ``pvalue <= alpha``.
    """

    label: int
    count: int
    runner_up_count: int
    n: int
    pvalue: float
    alpha: float

    @property
    def abstained(self) -> bool:
        """True when PREDICT abstained (``pvalue > alpha``)."""
        return self.label == ABSTAIN


def _model_device(model: Callable[..., object]) -> torch.device | None:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return None


class SmoothedClassifier:
    """A base classifier smoothed by isotropic Gaussian noise, with PREDICT and CERTIFY.

    Args:
        base_classifier: maps a batch ``(b, *input_shape)`` to logits ``(b, num_classes)``.
            Inputs are in the certificate's space (``[0, 1]`` pixels); normalization belongs
            inside it.
        num_classes: number of classes (>= 2).
        sigma: noise standard deviation, > 0.
        device: where noise is drawn and the model runs; by default the device of the
            model's parameters, or of each input when the model has none.
        input_shape: if given, every input must have exactly this shape.
        autocast_dtype: run the base classifier under ``torch.autocast`` with this dtype.
        channels_last: lay 4-d batches out in channels-last memory format.

    Results depend on the generator's seed, ``n0``, ``n``, the batch size when ``n`` exceeds it,
    the device, and the numerics of the base classifier; with these fixed they are
    reproducible. See :mod:`smoothcert.sampling`.
    """

    def __init__(
        self,
        base_classifier: Callable[[torch.Tensor], torch.Tensor],
        num_classes: int,
        sigma: float,
        *,
        device: torch.device | str | None = None,
        input_shape: Sequence[int] | None = None,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> None:
        if not callable(base_classifier):
            raise TypeError(f"base_classifier must be callable, got {type(base_classifier).__name__}")
        self.base_classifier = base_classifier
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.sigma = check_sigma(sigma)
        self.device = torch.device(device) if device is not None else _model_device(base_classifier)
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self._warned: set[tuple[str, int, float]] = set()  # SmoothingWarnings already given by this instance

    def __repr__(self) -> str:
        return f"SmoothedClassifier(num_classes={self.num_classes}, sigma={self.sigma}, device={self.device})"

    # ------------------------------------------------------------------ input handling

    def _prepare(self, x: torch.Tensor, *, batch: bool) -> torch.Tensor:
        name = "xs" if batch else "x"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
        shape = tuple(x.shape[1:]) if batch else tuple(x.shape)
        if self.input_shape is not None and shape != self.input_shape:
            want = ("(batch, " + ", ".join(map(str, self.input_shape)) + ")") if batch else str(self.input_shape)
            hint = "" if batch else "; use certify_batch/predict_batch for a batch"
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}{hint}")
        if x.ndim < (2 if batch else 1):
            raise ValueError(f"{name} has the wrong rank: got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
        if self.device is not None:
            x = x.to(self.device)
        return x if batch else x.unsqueeze(0)

    def sample_counts(
        self, xs: torch.Tensor, *, n: int, batch_size: int, generator: GeneratorArg = None
    ) -> NDArray[np.int64]:
        """Votes of the base classifier on ``n`` noisy copies of each input of the batch ``xs``."""
        xs = self._prepare(xs, batch=True)
        return self._counts(xs, n=n, batch_size=batch_size, generator=generator)

    def _counts(self, xs: torch.Tensor, *, n: int, batch_size: int, generator: GeneratorArg) -> NDArray[np.int64]:
        return sample_counts(
            self.base_classifier,
            xs,
            sigma=self.sigma,
            n=n,
            num_classes=self.num_classes,
            batch_size=batch_size,
            generator=generator,
            autocast_dtype=self.autocast_dtype,
            channels_last=self.channels_last,
        )

    # ------------------------------------------------------------------ PREDICT

    def predict(
        self, x: torch.Tensor, *, n: int, alpha: float, batch_size: int, generator: GeneratorArg = None
    ) -> Prediction:
        """PREDICT (Sec. 3.2.1): the top class if it beats the runner-up at level ``alpha``.

        Returns a class other than ``g(x)`` with probability at most ``alpha``.
        """
        xs = self._prepare(x, batch=False)
        return self._predict(xs, n=n, alpha=alpha, batch_size=batch_size, generator=generator)[0]

    def predict_batch(
        self, xs: torch.Tensor, *, n: int, alpha: float, batch_size: int, generator: GeneratorArg = None
    ) -> list[Prediction]:
        """PREDICT for each input of the batch ``xs``; inputs with small ``n`` share forward passes.

        ``generator`` may be one generator per input, which makes each result independent of
        the others in the batch.
        """
        xs = self._prepare(xs, batch=True)
        return self._predict(xs, n=n, alpha=alpha, batch_size=batch_size, generator=generator)

    def _predict(
        self, xs: torch.Tensor, *, n: int, alpha: float, batch_size: int, generator: GeneratorArg
    ) -> list[Prediction]:
        alpha = check_alpha(alpha)
        n = check_int("n", n)
        batch_size = check_int("batch_size", batch_size)
        least = stats.min_predict_n(alpha)
        if n < least:
            _warn_once(
                self._warned,
                "predict",
                n,
                alpha,
                f"PREDICT with n={n} always abstains at alpha={alpha}: it needs n >= {least}",
            )
        counts = self._counts(xs, n=n, batch_size=batch_size, generator=generator)
        order = np.argsort(-counts, axis=1, kind="stable")
        rows = np.arange(len(counts))
        top, second = order[:, 0], order[:, 1]
        n_top, n_second = counts[rows, top], counts[rows, second]
        pvalues = np.atleast_1d(stats.predict_pvalue(n_top, n_second))
        return [
            Prediction(
                label=int(top[i]) if pvalues[i] <= alpha else ABSTAIN,
                count=int(n_top[i]),
                runner_up_count=int(n_second[i]),
                n=n,
                pvalue=float(pvalues[i]),
                alpha=alpha,
            )
            for i in range(len(counts))
        ]

    # ------------------------------------------------------------------ CERTIFY

    def certify(
        self,
        x: torch.Tensor,
        *,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: GeneratorArg = None,
    ) -> Certificate:
        """CERTIFY (Sec. 3.2.2): pick the class with ``n0`` samples, bound ``pA`` with ``n`` fresh ones.

        With probability at least ``1 - alpha``, a non-abstaining certificate is correct:
        ``g(x + delta) = label`` for all ``||delta||_2 < radius``, ``radius = sigma * Phi^-1(p_lower)``.
        """
        xs = self._prepare(x, batch=False)
        return self._certify(xs, n0=n0, n=n, alpha=alpha, batch_size=batch_size, generator=generator)[0]

    def certify_batch(
        self,
        xs: torch.Tensor,
        *,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: GeneratorArg = None,
    ) -> list[Certificate]:
        """CERTIFY for each input of the batch ``xs``.

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
        least = stats.min_certify_n(alpha)
        if n < least:
            _warn_once(
                self._warned,
                "certify",
                n,
                alpha,
                f"CERTIFY with n={n} always abstains at alpha={alpha}: it needs n >= {least}",
            )
        selection = self._counts(xs, n=n0, batch_size=batch_size, generator=generator)
        selected = selection.argmax(axis=1)
        estimation = self._counts(xs, n=n, batch_size=batch_size, generator=generator)
        count = estimation[np.arange(len(xs)), selected]
        p_lower = np.atleast_1d(stats.clopper_pearson_lower(count, n, alpha))
        certified = p_lower > 0.5
        radius = np.atleast_1d(stats.cohen_radius(p_lower, sigma=self.sigma))
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
            )
            for i in range(len(xs))
        ]
