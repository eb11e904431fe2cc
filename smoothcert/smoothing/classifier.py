"""The smoothed classifier ``g(x) = argmax_c P(f(x + eps) = c)``, eps ~ N(0, sigma^2 I) by default.

Other noise distributions (:mod:`smoothcert.smoothing.noises`: Laplace, uniform) and threat norms (L1,
L2, L-infinity) plug in through ``noise=`` and ``norm=``; the certified radius is then the
noise's radius for that norm (:mod:`smoothcert.core.radii`).

:class:`SmoothedClassifier` combines the sampling engine (:mod:`smoothcert.smoothing.engine`) with
the exact statistics (:mod:`smoothcert.core.stats`) into PREDICT and CERTIFY of Cohen, Rosenfeld &
Kolter (ICML 2019), Sec. 3.2.

**Input space.** ``sigma`` is measured in the space the inputs are given in. Give images as
pixels in ``[0, 1]`` and put any per-channel normalization inside the base classifier (as its
first layer): then the certificate is an L2 radius in ``[0, 1]`` pixel space. Noisy inputs are
never clipped to ``[0, 1]``, since clipping would change the smoothing distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray

from smoothcert.core import sequential, stats
from smoothcert.core.checks import check_alpha, check_int, check_sigma
from smoothcert.smoothing.certificates import (
    ABSTAIN,
    AdaptiveCertificate,
    Certificate,
    Prediction,
    SmoothingWarning,
    warn_once,
)
from smoothcert.smoothing.engine import GeneratorArg, sample_counts
from smoothcert.smoothing.noises import Noise, make_noise

__all__ = ["ABSTAIN", "AdaptiveCertificate", "Certificate", "Prediction", "SmoothedClassifier", "SmoothingWarning"]

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
        sigma: noise level: the per-coordinate standard deviation, > 0.
        noise: ``"gaussian"`` (default), ``"laplace"``, ``"uniform"`` or a
            :class:`smoothcert.smoothing.noises.Noise` with this ``sigma``.
        norm: the threat norm of certified radii: ``"l2"`` (default), ``"l1"`` or ``"linf"``;
            it must be one the noise certifies.
        device: where noise is drawn and the model runs; by default the device of the
            model's parameters, or of each input when the model has none.
        input_shape: if given, every input must have exactly this shape.
        autocast_dtype: run the base classifier under ``torch.autocast`` with this dtype.
        channels_last: feed 4-d batches to the model in channels-last memory format.
        pass_size: the largest forward pass: an int, ``"auto"`` (measured once per model,
            input shape and device by :func:`smoothcert.runtime.perf.choose_pass_size`, at most the
            call's ``batch_size``) or ``None`` (the ``batch_size`` of each call). It changes
            speed only, never results.

    An explicit ``device`` moves a ``torch.nn.Module`` base classifier there.

    Results depend on the generator's seed, ``n0``, ``n``, the batch size when ``n`` exceeds it,
    the device, and the numerics of the base classifier; with these fixed they are
    reproducible. See :mod:`smoothcert.smoothing.engine`.
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
        pass_size: int | Literal["auto"] | None = None,
    ) -> None:
        if not callable(base_classifier):
            raise TypeError(f"base_classifier must be callable, got {type(base_classifier).__name__}")
        self.base_classifier = base_classifier
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.sigma = check_sigma(sigma)
        if isinstance(noise, Noise):
            if noise.sigma != self.sigma:
                raise ValueError(f"noise has sigma={noise.sigma!r} but sigma={self.sigma!r} was given")
            self.noise = noise
        elif isinstance(noise, str):
            self.noise = make_noise(noise, self.sigma)
        else:
            raise TypeError(f"noise must be a noise name or a smoothing.noises.Noise, got {type(noise).__name__}")
        self.norm = self.noise.check_norm(norm)
        self.device = torch.device(device) if device is not None else _model_device(base_classifier)
        if device is not None and isinstance(base_classifier, torch.nn.Module):
            base_classifier.to(self.device)
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        if pass_size is not None and pass_size != "auto":
            check_int("pass_size", pass_size)
        self.pass_size = pass_size
        self._warned: set[tuple[str, int, float]] = set()  # SmoothingWarnings already given by this instance

    def __repr__(self) -> str:
        return (
            f"SmoothedClassifier(num_classes={self.num_classes}, sigma={self.sigma}, noise={self.noise.name!r}, "
            f"norm={self.norm!r}, device={self.device})"
        )

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

    def _counts(
        self, xs: torch.Tensor, *, n: int | Sequence[int], batch_size: int, generator: GeneratorArg
    ) -> NDArray[np.int64]:
        pass_size = self.pass_size
        if pass_size == "auto":
            from smoothcert.runtime.perf import choose_pass_size

            pass_size = choose_pass_size(
                self.base_classifier,
                tuple(xs.shape[1:]),
                device=xs.device,
                max_size=batch_size,
                channels_last=self.channels_last,
                autocast_dtype=self.autocast_dtype,
            )
        return sample_counts(
            self.base_classifier,
            xs,
            noise=self.noise,
            n=n,
            num_classes=self.num_classes,
            batch_size=batch_size,
            generator=generator,
            pass_size=pass_size,
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
            warn_once(
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
            warn_once(
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
        radius = self._radius_of(p_lower, xs)
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
            )
            for i in range(len(xs))
        ]

    # ------------------------------------------------------------------ sequential CERTIFY

    def _radius_of(self, p_lower: NDArray[np.float64], xs: torch.Tensor) -> NDArray[np.float64]:
        """The noise's certified radius in ``self.norm`` for lower bounds on ``pA`` (0 where ``<= 1/2``)."""
        r = self.noise.radius(p_lower, norm=self.norm, dim=int(xs[0].numel()))
        return np.atleast_1d(np.asarray(r, dtype=np.float64))

    def certify_adaptive(
        self,
        x: torch.Tensor,
        *,
        alpha: float,
        n_max: int,
        batch_size: int,
        radius: float | None = None,
        n0: int = 100,
        beta: float | None = None,
        n_first: int = 64,
        radius_cap: float | None = None,
        radius_tol: float | None = None,
        label: int | None = None,
        generator: GeneratorArg = None,
    ) -> AdaptiveCertificate:
        """Sequential CERTIFY: the same guarantee as :meth:`certify`, stopping as soon as the data decide.

        **Decision mode** (``radius=r``): tests ``H0: pA <= p*``, ``p*`` the ``pA`` at which the
        noise's radius equals ``r`` (``Phi(r / sigma)`` for Gaussian L2),
        on a doubling stage grid from ``n_first`` to ``n_max``; ``certified`` as soon as the
        stage's lower bound clears ``p*``. **Max-radius mode** (``radius=None``): the largest
        radius the samples support, stopping at ``radius_cap`` or when more samples cannot
        raise it by more than ``radius_tol`` (default ``0.05 * sigma``).

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
        return self._certify_adaptive(
            xs,
            alpha=alpha,
            n_max=n_max,
            batch_size=batch_size,
            radius=radius,
            n0=n0,
            beta=beta,
            n_first=n_first,
            radius_cap=radius_cap,
            radius_tol=radius_tol,
            labels=labels,
            generator=generator,
        )[0]

    def certify_adaptive_batch(
        self,
        xs: torch.Tensor,
        *,
        alpha: float,
        n_max: int,
        batch_size: int,
        radius: float | None = None,
        n0: int = 100,
        beta: float | None = None,
        n_first: int = 64,
        radius_cap: float | None = None,
        radius_tol: float | None = None,
        labels: Sequence[int] | None = None,
        generator: GeneratorArg = None,
    ) -> list[AdaptiveCertificate]:
        """:meth:`certify_adaptive` for each input of ``xs``; the next stage of every still-active
        input shares forward passes, so inputs that stop early never leave passes half empty.

        With one generator per input, each result equals what :meth:`certify_adaptive` gives
        with that generator alone.
        """
        xs = self._prepare(xs, batch=True)
        return self._certify_adaptive(
            xs,
            alpha=alpha,
            n_max=n_max,
            batch_size=batch_size,
            radius=radius,
            n0=n0,
            beta=beta,
            n_first=n_first,
            radius_cap=radius_cap,
            radius_tol=radius_tol,
            labels=labels,
            generator=generator,
        )

    def _certify_adaptive(
        self,
        xs: torch.Tensor,
        *,
        alpha: float,
        n_max: int,
        batch_size: int,
        radius: float | None,
        n0: int,
        beta: float | None,
        n_first: int,
        radius_cap: float | None,
        radius_tol: float | None,
        labels: Sequence[int] | None,
        generator: GeneratorArg,
    ) -> list[AdaptiveCertificate]:
        schedule = sequential.make_schedule(n_max=n_max, alpha=alpha, beta=beta, n_first=n_first)
        batch_size = check_int("batch_size", batch_size)
        k = len(xs)
        if radius is not None:
            radius = _nonnegative("radius", radius)
        if radius_cap is not None:
            radius_cap = _nonnegative("radius_cap", radius_cap)
        tol = 0.05 * self.sigma if radius_tol is None else _nonnegative("radius_tol", radius_tol)
        gens = _per_input(generator, k)
        if labels is None:
            n0 = check_int("n0", n0)
            selected = self._counts(xs, n=n0, batch_size=batch_size, generator=generator).argmax(axis=1)
        else:
            if len(labels) != k:
                raise ValueError(f"labels must give one label per input ({k}), got {len(labels)}")
            for c in labels:
                check_int("label", c, 0)
                if c >= self.num_classes:
                    raise ValueError(f"label must be < num_classes={self.num_classes}, got {c!r}")
            selected = np.asarray(labels, dtype=np.int64)
            n0 = 0
        p_star = (
            float(self.noise.threshold(radius, norm=self.norm, dim=int(xs[0].numel()))) if radius is not None else None
        )
        if p_star is not None and not p_star < 1:
            raise ValueError(f"radius={radius!r} cannot be certified with {self.noise!r} in {self.norm} at any pA")
        count = np.zeros(k, dtype=np.int64)
        best = np.zeros(k)
        results: list[AdaptiveCertificate | None] = [None] * k
        active = np.arange(k)
        drawn = 0
        for stage, size in enumerate(schedule.sizes):
            sub_gens = None if gens is None else [gens[i] for i in active]
            votes = self._counts(xs[torch.as_tensor(active)], n=size - drawn, batch_size=batch_size, generator=sub_gens)
            count[active] += votes[np.arange(len(active)), selected[active]]
            drawn = size
            if p_star is not None:
                decision, lower, upper = sequential.decision_step(count[active], stage, schedule, p_star)
                stop = decision != sequential.CONTINUE
                rad = np.where(decision == sequential.CERTIFIED, self._radius_of(lower, xs), 0.0)
            else:
                stop, rad, lower, upper = sequential.max_radius_step(
                    count[active],
                    stage,
                    schedule,
                    best[active],
                    radius_of=lambda p: self._radius_of(p, xs),
                    radius_cap=radius_cap,
                    radius_tol=tol,
                )
                best[active] = lower
                last = stage == schedule.num_stages - 1
                decision = np.where(
                    rad > 0, sequential.CERTIFIED, sequential.UNDECIDED if last else sequential.NOT_CERTIFIED
                )
            for j in np.flatnonzero(stop):
                i = int(active[j])
                certified = decision[j] == sequential.CERTIFIED
                results[i] = AdaptiveCertificate(
                    label=int(selected[i]) if certified else ABSTAIN,
                    radius=float(rad[j]) if certified else 0.0,
                    decision=str(decision[j]),
                    n_used=n0 + size,
                    stage=stage + 1,
                    p_lower=float(lower[j]),
                    p_upper=float(upper[j]),
                    count=int(count[i]),
                    n=size,
                    n0=n0,
                    alpha=schedule.alpha,
                    beta=schedule.beta,
                    sigma=self.sigma,
                    selected=int(selected[i]),
                    radius_tested=radius,
                    norm=self.norm,
                    noise=self.noise.name,
                )
            active = active[~stop]
            if len(active) == 0:
                break
        assert all(r is not None for r in results), "the last stage stops every input"
        return [r for r in results if r is not None]


def _nonnegative(name: str, value: float) -> float:
    v = float(value)
    if not (v >= 0 and np.isfinite(v)):
        raise ValueError(f"{name} must be >= 0 and finite, got {value!r}")
    return v


def _per_input(generator: GeneratorArg, k: int) -> list[torch.Generator] | None:
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        return [generator] * k
    gens = list(generator)
    if len(gens) != k:
        raise ValueError(f"generator must be one torch.Generator or one per input ({k}), got {len(gens)}")
    return gens

