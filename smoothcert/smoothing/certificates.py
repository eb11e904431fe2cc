"""Results of the smoothed models: frozen dataclasses, the abstention label, and the warning for
settings under which a smoothed model can never answer or certifies in float mode unasked."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

__all__ = ["ABSTAIN", "AdaptiveCertificate", "Certificate", "Prediction", "SmoothingWarning", "warn_once"]

ABSTAIN: int = -1
"""Label returned when PREDICT or CERTIFY abstains."""


class SmoothingWarning(UserWarning):
    """A setting with which the smoothed classifier can never answer, or (``sound="auto"``) an input
    off the grid that is certified in float mode."""


def warn_once(warned: set[tuple[str, int, float]], kind: str, n: int, alpha: float, message: str) -> None:
    """Warn once per ``(kind, n, alpha)`` and per ``warned`` registry (one per SmoothedClassifier)."""
    key = (kind, n, alpha)
    if key not in warned:
        warned.add(key)
        warnings.warn(message, SmoothingWarning, stacklevel=3)


@dataclass(frozen=True)
class Certificate:
    """Result of CERTIFY for one input.

    With probability at least ``1 - alpha`` over the sampling, if ``label != ABSTAIN`` then
    ``g(x + delta) = label`` for every ``delta`` with ``||delta|| < radius`` in the certificate's
    ``norm`` (L2, L1 or L-infinity), for its ``noise`` (Gaussian: Cohen et al., Prop. 2; Laplace and
    uniform: ``docs/noises.md``). In sound mode (``sound``), for every such ``x + delta`` on the grid
    ``1 / grid`` (``docs/sound.md`` §2): the theorem certifies the ball about the grid point
    ``round_q(x)``, and ``radius`` is already reduced by ``grid_offset = ||x - round_q(x)||``, so
    it is a radius about ``x`` itself.

    Attributes:
        label: the certified class, or ``ABSTAIN`` (-1).
        radius: the noise's radius in ``norm`` at ``p_lower`` (``sigma * Phi^-1(p_lower)`` for Gaussian
            L2) minus ``grid_offset``, at least 0; ``0.0`` when abstaining.
        p_lower: one-sided ``1 - alpha`` Clopper–Pearson lower bound on ``pA``.
        count: votes for the selected class among the ``n`` estimation samples.
        n: number of estimation samples.
        n0: number of selection samples.
        alpha: failure probability.
        sigma: noise level (per-coordinate standard deviation).
        selected: the class picked by the ``n0`` selection samples (also when abstaining).
        norm: the threat norm the radius is measured in (``l2`` by default).
        noise: the smoothing noise's name (``gaussian`` by default).
        sound: whether the noise was drawn on the input's grid (sound mode, ``docs/sound.md``).
        grid: the grid ``q`` of sound mode (``None`` in float mode).
        tv_bound: total-variation residual per noisy input (0 in float mode); ``p_lower`` is
            already reduced by it (the Clopper–Pearson bound minus ``tv_bound``).
        grid_offset: sound mode: ``||x - round_q(x)||`` in ``norm``, rounded up, subtracted from
            the radius (0.0 for an input stored exactly on the grid, and in float mode).
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
    norm: str = "l2"
    noise: str = "gaussian"
    sound: bool = False
    grid: int | None = None
    tv_bound: float = 0.0
    grid_offset: float = 0.0

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
        alpha: significance level; the label is returned iff ``pvalue <= alpha - n * tv_bound``
            (``pvalue <= alpha`` in float mode).
        sound, grid: as in :class:`Certificate`.
        tv_bound: total-variation residual per noisy input (0 in float mode); the ``n`` samples
            jointly differ from the target law by at most ``n * tv_bound``, which the test's
            level gives up.
    """

    label: int
    count: int
    runner_up_count: int
    n: int
    pvalue: float
    alpha: float
    sound: bool = False
    grid: int | None = None
    tv_bound: float = 0.0

    @property
    def abstained(self) -> bool:
        """True when PREDICT abstained (``pvalue > alpha``)."""
        return self.label == ABSTAIN


@dataclass(frozen=True)
class AdaptiveCertificate:
    """Result of sequential CERTIFY (:meth:`SmoothedClassifier.certify_adaptive`) for one input.

    With probability at least ``1 - alpha`` over the sampling, whatever stopping rule ran: if
    ``label != ABSTAIN`` then ``g(x + delta) = label`` for every ``||delta|| < radius`` in the
    certificate's ``norm``, for its ``noise`` (construction and proof sketch:
    :mod:`smoothcert.core.sequential`); in sound mode as for :class:`Certificate` (grid inputs,
    ``radius`` reduced by ``grid_offset``).

    Attributes:
        label: the certified class, or ``ABSTAIN`` (-1).
        radius: the certified radius (0.0 when abstaining), ``grid_offset`` already subtracted; in
            decision mode it is ``> radius_tested``.
        decision: ``certified``, ``not_certified`` (stopped early: futility) or ``undecided`` (``n_max`` reached).
        n_used: every forward pass spent on this input, selection included.
        stage: the last stage run (1-based).
        p_lower: the lower bound on ``pA`` behind ``radius`` (level ``alpha`` over all stages).
        p_upper: the last stage's futility upper bound on ``pA`` (level ``beta``).
        count: votes for the selected class among the ``n`` estimation samples.
        n: estimation samples drawn.
        n0: selection samples (0 in evaluation mode, ``label=`` given).
        alpha: failure probability of the certificate.
        beta: futility level (affects power only).
        sigma: noise level.
        selected: the class whose probability was bounded.
        radius_tested: the radius ``r`` of decision mode, ``None`` in max-radius mode.
        norm: the threat norm of ``radius``.
        noise: the smoothing noise's name.
        sound, grid: as in :class:`Certificate`.
        tv_bound: total-variation residual per noisy input (0 in float mode); ``p_lower`` is
            reduced by it and ``p_upper`` raised by it.
        grid_offset: as in :class:`Certificate`.
    """

    label: int
    radius: float
    decision: str
    n_used: int
    stage: int
    p_lower: float
    p_upper: float
    count: int
    n: int
    n0: int
    alpha: float
    beta: float
    sigma: float
    selected: int
    radius_tested: float | None
    norm: str = "l2"
    noise: str = "gaussian"
    sound: bool = False
    grid: int | None = None
    tv_bound: float = 0.0
    grid_offset: float = 0.0

    @property
    def abstained(self) -> bool:
        """True when no radius was certified."""
        return self.label == ABSTAIN
