"""Curve mode: every input's largest certified radius, sampling until the reporting grid is settled.

Certified accuracy at every radius of a grid (and ACR) needs each input's largest certified
radius. Every radius decision is a test on one quantity, ``pA``, so one lower bound on ``pA``
that holds uniformly over time (:mod:`smoothcert.core.confseq`) settles them all; the cost is
in the stopping rule (:func:`smoothcert.core.confseq.curve_step`): a run stops when every grid
radius is decided, or when more samples could not change the reported curve by more than a
tolerance, or at ``n_max``. Derivation, validity argument and measurements: ``docs/curve.md`` §1–§6.

The next look of every still-active input shares forward passes (``smoothed.run_engine``), as
in :mod:`smoothcert.smoothing.adaptive`; one generator per input makes results independent of
the grouping.

**Sound mode.** The bounds are about the sampler's law; the smoothing law's ``pA`` is within
``tv_bound`` of it, so lower bounds are reduced, and upper bounds raised, by ``tv_bound`` before
any decision (as in :mod:`smoothcert.smoothing.adaptive`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import stats as _st

from smoothcert.core import confseq
from smoothcert.core.checks import check_int
from smoothcert.core.errors import ConfigError
from smoothcert.smoothing.adaptive import Voter
from smoothcert.smoothing.certificates import ABSTAIN
from smoothcert.smoothing.engine import ClassVotes, GeneratorArg, per_input_generators

__all__ = ["CURVE_PA", "CurveCertificate", "certify_curve", "certify_curve_batch", "default_radii"]

CURVE_PA = float(_st.norm.cdf(2.0))
"""The default cap is the radius at ``pA = Phi(2)``: ``2 sigma`` for Gaussian L2 (the table's cap)."""

GRID_STEPS = 8
RADIUS_RTOL = 0.05
"""Default ``radius_tol``: 5% of the cap (0.05 at cap 1.0, 0.4 of a grid step); see docs/curve.md."""
ACR_RTOL = 0.07
"""Default ``acr_tol``: 7% of the cap; see docs/curve.md."""

_WORDS = {1: "certified", -1: "not_certified", 0: "undecided"}


class CurveVoter(Voter, Protocol):
    """What curve mode needs of a smoothed classifier (``SmoothedClassifier`` is one): what sequential
    CERTIFY needs (:class:`smoothcert.smoothing.adaptive.Voter`), and input preparation."""

    def _prepare(self, x: torch.Tensor, *, batch: bool) -> torch.Tensor: ...


@dataclass(frozen=True, kw_only=True)
class CurveCertificate:
    """Result of curve mode for one input.

    With probability at least ``1 - alpha`` over the sampling, whatever the stopping rule: if
    ``label != ABSTAIN`` then ``g(x + delta) = label`` for every ``||delta|| < radius`` in
    ``norm`` (and so at every grid radius marked ``certified``).

    Attributes:
        label: the certified class, or ``ABSTAIN`` (-1) when ``p_lower <= 1/2``.
        radius: the largest certified radius, ``R(p_lower)`` (0.0 when abstaining; not capped).
        p_lower: time-uniform lower bound on ``pA`` (level ``alpha``), less ``tv_bound``.
        p_upper: time-uniform upper bound on ``pA`` (level ``beta``, futility only), plus ``tv_bound``.
        n_used: every forward pass spent on this input, selection included (``n0 + n``).
        n: estimation draws; count: votes for ``selected`` among them; n0: selection draws.
        reason: why sampling stopped: ``cap`` (certified at the largest grid radius), ``decided``
            (every grid radius decided), ``tolerance`` (more samples could not change the curve
            by more than the tolerances) or ``n_max``.
        radii: the reporting grid; decisions: per grid radius ``certified``, ``not_certified``
            (the upper bound is below its threshold) or ``undecided`` (reported as not certified).
        selected: the class bounded; evaluation: ``True`` when ``label=`` was given (no
            selection; evaluation only, not a deployment procedure).
        alpha, beta, method: the confidence sequence's levels and construction.
        sigma, noise, norm, sound, grid, tv_bound, grid_offset: as in ``Certificate`` (the radius and every
            grid decision are about ``x``: a sound input's grid offset is given up).
    """

    label: int
    radius: float
    p_lower: float
    p_upper: float
    n_used: int
    n: int
    count: int
    n0: int
    reason: str
    radii: tuple[float, ...]
    decisions: tuple[str, ...]
    selected: int
    evaluation: bool
    alpha: float
    beta: float
    method: str
    sigma: float
    noise: str
    norm: str
    sound: bool
    grid: int | None
    tv_bound: float
    grid_offset: float = 0.0

    def certified_at(self, r: float) -> bool:
        """Whether the certificate covers radius ``r`` (``radius > r``, or ``r = 0`` and not abstaining)."""
        return self.label != ABSTAIN and (self.radius > r or r == 0)


def default_radii(smoothed: CurveVoter, dim: int, radius_cap: float | None = None) -> tuple[float, ...]:
    """``GRID_STEPS + 1`` radii evenly from 0 to ``radius_cap`` (default: the radius at ``pA = Phi(2)``)."""
    if radius_cap is None:  # rounded to 12 digits so that Gaussian L2 gives 2 sigma exactly
        radius_cap = float(f"{float(smoothed.radius_of(np.array([CURVE_PA]), dim=dim)[0]):.12g}")
    return tuple(float(f"{radius_cap * j / GRID_STEPS:.12g}") for j in range(GRID_STEPS + 1))


def _check_radii(radii: Sequence[float]) -> tuple[float, ...]:
    try:
        r = tuple(float(v) for v in radii)
    except (TypeError, ValueError):
        raise ConfigError(f"radii must be a sequence of numbers, got {radii!r}") from None
    if not r or not all(math.isfinite(v) and v >= 0 for v in r) or any(b <= a for a, b in itertools.pairwise(r)):
        raise ConfigError(f"radii must be finite, >= 0 and strictly increasing, got {radii!r}")
    return r


def _nonneg(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def certify_curve(
    smoothed: CurveVoter,
    x: torch.Tensor,
    *,
    alpha: float,
    n_max: int,
    batch_size: int,
    radius_cap: float | None = None,
    radii: Sequence[float] | None = None,
    n0: int = 100,
    label: int | None = None,
    beta: float | None = None,
    method: str = "union",
    n_first: int = 32,
    growth: float = 1.25,
    radius_tol: float | None = None,
    acr_tol: float | None = None,
    generator: torch.Generator | None = None,
) -> CurveCertificate:
    """Curve mode for one input ``x``; arguments as in :func:`certify_curve_batch` (``label=`` for ``labels=``)."""
    return _run(
        smoothed,
        smoothed._prepare(x, batch=False),
        labels=None if label is None else [label],
        alpha=alpha,
        n_max=n_max,
        batch_size=batch_size,
        radius_cap=radius_cap,
        radii=radii,
        n0=n0,
        beta=beta,
        method=method,
        n_first=n_first,
        growth=growth,
        radius_tol=radius_tol,
        acr_tol=acr_tol,
        generator=generator,
    )[0]


def certify_curve_batch(
    smoothed: CurveVoter,
    xs: torch.Tensor,
    *,
    alpha: float,
    n_max: int,
    batch_size: int,
    radius_cap: float | None = None,
    radii: Sequence[float] | None = None,
    n0: int = 100,
    labels: Sequence[int] | None = None,
    beta: float | None = None,
    method: str = "union",
    n_first: int = 32,
    growth: float = 1.25,
    radius_tol: float | None = None,
    acr_tol: float | None = None,
    generator: GeneratorArg = None,
) -> list[CurveCertificate]:
    """Curve mode for each input of ``xs``, the next look of every still-active input sharing passes.

    With probability at least ``1 - alpha`` each non-abstaining certificate is correct, whatever
    the stopping rule (``docs/curve.md`` §3). ``alpha``, ``n_max`` (draws per input, selection
    excluded), ``batch_size`` are required. ``radius_cap`` (default: the radius at
    ``pA = Phi(2)``, ``2 sigma`` for Gaussian L2) or ``radii`` sets the reporting grid (default 9
    radii evenly from 0 to the cap). ``n0``: selection draws (deployment). ``labels``:
    evaluation only — bound each true label's probability, no selection. ``beta``: futility
    level (default ``alpha``; cost and power only). ``method``: ``"union"`` (default) or
    ``"betabinomial"``; ``n_first``, ``growth``: the looks. ``radius_tol``, ``acr_tol``: the
    stopping tolerances (default 5% and 7% of the cap; ``docs/curve.md`` §4). ``generator``:
    one, or one per input (then each result equals :func:`certify_curve` with that generator).
    """
    return _run(
        smoothed,
        smoothed._prepare(xs, batch=True),
        labels=labels,
        alpha=alpha,
        n_max=n_max,
        batch_size=batch_size,
        radius_cap=radius_cap,
        radii=radii,
        n0=n0,
        beta=beta,
        method=method,
        n_first=n_first,
        growth=growth,
        radius_tol=radius_tol,
        acr_tol=acr_tol,
        generator=generator,
    )


def _run_group(
    smoothed: CurveVoter,
    xs: torch.Tensor,
    mode: tuple[bool, int | None, float, float],
    *,
    alpha: float,
    n_max: int,
    batch_size: int,
    labels: Sequence[int] | None,
    radius_cap: float | None = None,
    radii: Sequence[float] | None = None,
    n0: int = 100,
    beta: float | None = None,
    method: str = "union",
    n_first: int = 32,
    growth: float = 1.25,
    radius_tol: float | None = None,
    acr_tol: float | None = None,
    generator: GeneratorArg = None,
) -> list[CurveCertificate]:
    seq = confseq.make_confseq(alpha=alpha, beta=beta, n_max=n_max, method=method, n_first=n_first, growth=growth)
    batch_size = check_int("batch_size", batch_size)
    n0 = check_int("n0", n0)
    radius_cap = _nonneg("radius_cap", radius_cap)
    if radius_cap == 0:
        raise ConfigError(f"radius_cap must be > 0, got {radius_cap!r}")
    if radii is not None and radius_cap is not None:
        raise ConfigError(f"give radii or radius_cap, not both (got radii={radii!r}, radius_cap={radius_cap!r})")
    k = len(xs)
    if k == 0:
        return []
    dim = int(xs[0].numel())
    grid = _check_radii(radii) if radii is not None else default_radii(smoothed, dim, radius_cap)
    cap = grid[-1]
    r_tol = _nonneg("radius_tol", radius_tol)
    a_tol = _nonneg("acr_tol", acr_tol)
    r_tol = RADIUS_RTOL * cap if r_tol is None else r_tol
    a_tol = ACR_RTOL * cap if a_tol is None else a_tol
    sound, grid_q, tv, offset = mode
    # a sound input is certified about its grid point round_q(x): radius r about x needs r + offset there
    thresholds = np.where(
        np.asarray(grid) > 0,
        np.asarray(smoothed.noise.threshold(np.asarray(grid) + offset, norm=smoothed.norm, dim=dim), dtype=np.float64),
        0.5,
    )
    gens = per_input_generators(generator, k)
    votes = ClassVotes(smoothed.num_classes)
    if labels is None:
        selected = smoothed.run_engine(xs, votes, n=n0, batch_size=batch_size, generator=generator).argmax(axis=1)
    else:
        if len(labels) != k:
            raise ValueError(f"labels must give one label per input ({k}), got {len(labels)}")
        for c in labels:
            check_int("label", c, 0)
            if c >= smoothed.num_classes:
                raise ValueError(f"label must be < num_classes={smoothed.num_classes}, got {c!r}")
        selected, n0 = np.asarray(labels, dtype=np.int64), 0

    def radius_of(p: NDArray[np.float64]) -> NDArray[np.float64]:  # about x: the grid offset given up
        r = smoothed.radius_of(np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0), dim=dim)
        return np.maximum(r - offset, 0.0)

    count = np.zeros(k, dtype=np.int64)
    lower, upper = np.zeros(k), np.ones(k)  # running intersection of the sequence (it holds at every look)
    results: list[CurveCertificate | None] = [None] * k
    active, drawn = np.arange(k), 0
    for look, size in enumerate(seq.sizes):
        sub_gens = None if gens is None else [gens[i] for i in active]
        new = smoothed.run_engine(
            xs[torch.as_tensor(active)], votes, n=size - drawn, batch_size=batch_size, generator=sub_gens
        )
        count[active] += new[np.arange(len(active)), selected[active]]
        drawn = size
        lo, up = seq.bounds(count[active], look)
        lower[active] = np.maximum(lower[active], np.maximum(lo - tv, 0.0))
        upper[active] = np.minimum(upper[active], np.minimum(up + tv, 1.0))
        stop, reason, dec = confseq.curve_step(
            lower[active],
            upper[active],
            grid,
            thresholds,
            radius_of=radius_of,
            radius_tol=r_tol,
            acr_tol=a_tol,
            last=look == len(seq.sizes) - 1,
        )
        for j in np.flatnonzero(stop):
            i = int(active[j])
            certified = lower[i] > 0.5
            results[i] = CurveCertificate(
                label=int(selected[i]) if certified else ABSTAIN,
                radius=float(radius_of(lower[i : i + 1])[0]) if certified else 0.0,
                p_lower=float(lower[i]),
                p_upper=float(upper[i]),
                n_used=n0 + size,
                n=size,
                count=int(count[i]),
                n0=n0,
                reason=str(reason[j]),
                radii=grid,
                decisions=tuple(_WORDS[int(d)] for d in dec[j]),
                selected=int(selected[i]),
                evaluation=labels is not None,
                alpha=seq.alpha,
                beta=seq.beta,
                method=seq.method,
                sigma=smoothed.sigma,
                noise=smoothed.noise.name,
                norm=smoothed.norm,
                sound=sound,
                grid=grid_q,
                tv_bound=tv,
                grid_offset=offset,
            )
        active = active[~stop]
        if len(active) == 0:
            break
    return [r for r in results if r is not None]


def _run(
    smoothed: CurveVoter,
    xs: torch.Tensor,
    *,
    labels: Sequence[int] | None,
    generator: GeneratorArg = None,
    **settings: Any,
) -> list[CurveCertificate]:
    """Curve mode on a prepared batch: inputs are grouped by how they are certified (sound or float
    mode, residual, grid offset; :meth:`SmoothedModel.input_modes`) and each group is run by
    :func:`_run_group`, so with one generator per input a result never depends on the other inputs."""
    k = len(xs)
    if labels is not None and len(labels) != k:
        raise ValueError(f"labels must give one label per input ({k}), got {len(labels)}")
    if k == 0:
        return _run_group(smoothed, xs, (False, None, 0.0, 0.0), labels=labels, generator=generator, **settings)
    modes = smoothed.input_modes(xs)
    keys = [
        (bool(modes.sound[i]), modes.grid if modes.sound[i] else None, float(modes.tv_bound[i]), float(modes.offset[i]))
        for i in range(k)
    ]
    gens = per_input_generators(generator, k)
    results: list[CurveCertificate | None] = [None] * k
    for key in dict.fromkeys(keys):
        idx = [i for i in range(k) if keys[i] == key]
        sub = _run_group(
            smoothed,
            xs[torch.as_tensor(idx, device=xs.device)] if len(idx) < k else xs,
            key,
            labels=None if labels is None else [labels[i] for i in idx],
            generator=generator if gens is None or isinstance(generator, torch.Generator) else [gens[i] for i in idx],
            **settings,
        )
        for i, c in zip(idx, sub, strict=True):
            results[i] = c
    return [r for r in results if r is not None]
