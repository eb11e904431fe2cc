"""Sequential CERTIFY: the guarantee of fixed-n CERTIFY, stopping as soon as the data decide.

The stopping rules and their union-bound validity are torch-free (:mod:`smoothcert.core.sequential`;
construction and proof sketch in ``docs/sequential.md``). Here they drive the sampling engine:
:class:`SequentialSettings` holds and checks the settings once, and :func:`certify_sequential`
runs the stages for a batch, the next stage of every still-active input sharing forward passes.

**Max-radius tolerance.** Max-radius mode stops when more samples cannot raise the radius by
more than a tolerance. By default the tolerance is relative: ``radius_rtol`` (1.5%) of the
*attainable* radius ``R_max = R(L_max)``, where ``L_max = CP_lower(n_max, n_max, alpha_K)`` is the
largest lower bound the final stage can give (every vote for the class). An absolute tolerance
in units of ``sigma`` is wrong for L-infinity, whose radii are about ``sqrt(d)`` times smaller
than L2's (uniform noise: ``R_max`` is below ``0.05 sigma`` for ``d`` = 784, so every run stopped
at the first stage). ``radius_tol`` remains as an explicit absolute override.

**Sound mode** (per input, as :meth:`SmoothedModel.input_modes` decides). Each stage's bounds are
about the sampler's law; the smoothing law's ``pA`` is within ``tv_bound`` of it, so lower bounds
are reduced, and upper bounds raised, by ``tv_bound``. The theorem's centre is the grid point
``round_q(x)``, so every radius is reduced by the input's ``grid_offset``: max-radius mode reports
``R(p_lower) - offset``, and decision mode tests ``r + offset`` (its ``p*`` is the threshold of that
radius; a fixed function of the input, fixed before sampling, so the union bound is unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from smoothcert.core import sequential, stats
from smoothcert.core.checks import check_int
from smoothcert.core.errors import ConfigError
from smoothcert.smoothing.certificates import ABSTAIN, AdaptiveCertificate
from smoothcert.smoothing.engine import ClassVotes, GeneratorArg, Reduction, per_input_generators
from smoothcert.smoothing.noises import Noise
from smoothcert.smoothing.smoothed import InputModes

__all__ = ["DEFAULT_RADIUS_RTOL", "SequentialSettings", "Voter", "certify_sequential"]

DEFAULT_RADIUS_RTOL = 0.015
"""Default max-radius tolerance as a fraction of the attainable radius (about ``0.056 sigma`` for
Gaussian L2 at ``n_max`` = 100,000 and ``alpha`` = 0.001, close to the former ``0.05 sigma``)."""


class Voter(Protocol):
    """What sequential CERTIFY needs of a smoothed classifier (``SmoothedClassifier`` is one)."""

    num_classes: int
    sigma: float
    noise: Noise
    norm: str

    def input_modes(self, xs: torch.Tensor) -> InputModes: ...

    def run_engine(
        self,
        xs: torch.Tensor,
        reduction: Reduction,
        *,
        n: int | Sequence[int],
        batch_size: int,
        generator: GeneratorArg,
    ) -> Any: ...

    def radius_of(self, p_lower: Any, *, dim: int) -> np.ndarray: ...


def _nonnegative(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise ConfigError(f"{name} must be >= 0 and finite, got {value!r}")
    return v


@dataclass(frozen=True, kw_only=True)
class SequentialSettings:
    """The settings of sequential CERTIFY, checked when built (so a run can check them before it writes).

    ``radius=r`` selects decision mode (is ``g`` robust at ``r``?), ``radius=None`` max-radius
    mode, which stops at ``radius_cap`` or when more samples cannot raise the radius by more than
    a tolerance: ``radius_tol`` if given (absolute, in the norm's units), else ``radius_rtol``
    times the attainable radius at ``n_max`` (module docstring). ``beta`` (default ``alpha``) is
    the futility level; the stage grid doubles from ``n_first`` to ``n_max``.
    """

    alpha: float
    n_max: int
    batch_size: int
    radius: float | None = None
    n0: int = 100
    beta: float | None = None
    n_first: int = 64
    radius_cap: float | None = None
    radius_tol: float | None = None
    radius_rtol: float = DEFAULT_RADIUS_RTOL

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size))
        object.__setattr__(self, "n0", check_int("n0", self.n0))
        for name in ("radius", "radius_cap", "radius_tol", "radius_rtol"):
            object.__setattr__(self, name, _nonnegative(name, getattr(self, name)))
        self.schedule()  # checks alpha, beta, n_first, n_max

    def schedule(self) -> sequential.Schedule:
        """The stage grid and the per-stage levels, fixed before any sample is drawn."""
        return sequential.make_schedule(n_max=self.n_max, alpha=self.alpha, beta=self.beta, n_first=self.n_first)

    def target(self, smoothed: Voter, dim: int, offset: float = 0.0) -> float | None:
        """``p*``, the ``pA`` at which the noise's radius equals ``radius + offset`` (decision mode), else None.

        ``offset`` is a sound input's grid offset (module docstring). Raises ConfigError when no
        ``pA < 1`` certifies ``radius`` with this noise, norm and ``dim``.
        """
        if self.radius is None:
            return None
        p_star = float(smoothed.noise.threshold(self.radius + offset, norm=smoothed.norm, dim=dim))
        if not p_star < 1:
            raise ConfigError(
                f"radius={self.radius!r} cannot be certified with {smoothed.noise!r} in {smoothed.norm} "
                f"(d = {dim}) at any pA" + (f" (grid offset {offset:.3g} added)" if offset else "")
            )
        return p_star

    def tolerance(
        self, schedule: sequential.Schedule, radius_of: Callable[[NDArray[np.float64]], NDArray[np.float64]]
    ) -> float:
        """The max-radius tolerance: ``radius_tol``, else ``radius_rtol * R(CP_lower(n_max, n_max, alpha_K))``."""
        if self.radius_tol is not None:
            return self.radius_tol
        n = schedule.n_max
        p_max = np.atleast_1d(stats.clopper_pearson_lower(n, n, schedule.alphas[-1]))
        assert self.radius_rtol is not None
        return float(self.radius_rtol * radius_of(np.asarray(p_max, dtype=np.float64))[0])


def certify_sequential(
    smoothed: Voter,
    xs: torch.Tensor,
    settings: SequentialSettings,
    *,
    labels: Sequence[int] | None,
    generator: GeneratorArg,
) -> list[AdaptiveCertificate]:
    """Sequential CERTIFY of each input of the prepared batch ``xs`` (see ``SmoothedClassifier.certify_adaptive``)."""
    schedule = settings.schedule()
    k, dim = len(xs), int(xs[0].numel())
    modes = smoothed.input_modes(xs)
    tv, offset = modes.tv_bound, modes.offset
    gens = per_input_generators(generator, k)
    votes = ClassVotes(smoothed.num_classes)
    if labels is None:
        n0 = settings.n0
        selected = smoothed.run_engine(xs, votes, n=n0, batch_size=settings.batch_size, generator=generator).argmax(
            axis=1
        )
    else:
        if len(labels) != k:
            raise ValueError(f"labels must give one label per input ({k}), got {len(labels)}")
        for c in labels:
            check_int("label", c, 0)
            if c >= smoothed.num_classes:
                raise ValueError(f"label must be < num_classes={smoothed.num_classes}, got {c!r}")
        selected = np.asarray(labels, dtype=np.int64)
        n0 = 0
    # decision mode: p* of radius + offset per input (one value for all exact grid and float inputs)
    p_star = None if settings.radius is None else np.array([settings.target(smoothed, dim, o) for o in offset])

    def radius_of_rows(rows: NDArray[np.intp]) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
        def radius_of(p: NDArray[np.float64]) -> NDArray[np.float64]:
            # bounds on the sampler's pA, moved by the residual to bounds on the smoothing law's pA;
            # the radius about round_q(x) less the grid offset is a radius about x
            r = smoothed.radius_of(np.maximum(np.asarray(p, dtype=np.float64) - tv[rows], 0.0), dim=dim)
            return np.maximum(r - offset[rows], 0.0)

        return radius_of

    def radius_plain(p: NDArray[np.float64]) -> NDArray[np.float64]:  # for the tolerance: no offset
        moved = np.maximum(np.asarray(p, dtype=np.float64) - float(tv.max(initial=0.0)), 0.0)
        return smoothed.radius_of(moved, dim=dim)

    tol = settings.tolerance(schedule, radius_plain)

    count = np.zeros(k, dtype=np.int64)
    best = np.zeros(k)
    results: list[AdaptiveCertificate | None] = [None] * k
    active = np.arange(k)
    drawn = 0
    for stage, size in enumerate(schedule.sizes):
        sub_gens = None if gens is None else [gens[i] for i in active]
        stage_votes = smoothed.run_engine(
            xs[torch.as_tensor(active, device=xs.device)],
            votes,
            n=size - drawn,
            batch_size=settings.batch_size,
            generator=sub_gens,
        )
        count[active] += stage_votes[np.arange(len(active)), selected[active]]
        drawn = size
        if p_star is not None:
            decision, lower, upper = _decide(count[active], stage, schedule, p_star[active] + tv[active])
            stop = decision != sequential.CONTINUE
            rad = np.where(decision == sequential.CERTIFIED, radius_of_rows(active)(lower), 0.0)
        else:
            stop, rad, lower, upper = sequential.max_radius_step(
                count[active],
                stage,
                schedule,
                best[active],
                radius_of=radius_of_rows(active),
                radius_cap=settings.radius_cap,
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
                p_lower=max(float(lower[j]) - float(tv[i]), 0.0),
                p_upper=min(float(upper[j]) + float(tv[i]), 1.0),
                count=int(count[i]),
                n=size,
                n0=n0,
                alpha=schedule.alpha,
                beta=schedule.beta,
                sigma=smoothed.sigma,
                selected=int(selected[i]),
                radius_tested=settings.radius,
                norm=smoothed.norm,
                noise=smoothed.noise.name,
                **modes.fields(i),
                grid_offset=float(offset[i]),
            )
        active = active[~stop]
        if len(active) == 0:
            break
    assert all(r is not None for r in results), "the last stage stops every input"
    return [r for r in results if r is not None]


def _decide(
    count: NDArray[np.int64], stage: int, schedule: sequential.Schedule, p_star: NDArray[np.float64]
) -> tuple[NDArray[np.str_], NDArray[np.float64], NDArray[np.float64]]:
    """:func:`smoothcert.core.sequential.decision_step` with one ``p*`` per input (grouped by value)."""
    values = np.unique(p_star)
    if len(values) == 1:
        return sequential.decision_step(count, stage, schedule, float(values[0]))
    decision = np.empty(len(count), dtype="<U13")
    lower, upper = np.empty(len(count)), np.empty(len(count))
    for v in values:
        rows = p_star == v
        decision[rows], lower[rows], upper[rows] = sequential.decision_step(count[rows], stage, schedule, float(v))
    return decision, lower, upper
