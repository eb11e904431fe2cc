"""Certified-accuracy analysis of certification logs (docs/statistics.md §6, §7, §11); no torch import.

Reads smoothcert's logs (fixed-n CERTIFY and sequential, :mod:`smoothcert.core.sequential`) and the
2019 reference's (radius to 3 significant digits, time as seconds or ``H:MM:SS.ffffff``, no
extra columns, no sidecar: Gaussian noise, L2). Certified accuracy at ``r`` is the fraction of
*all* logged examples whose prediction is correct with radius ``>= r`` (abstentions count as
failures), as in the reference analysis. The radius is in the log's threat norm (sidecar
``identity.norm``, absent meaning ``l2``); logs of different norms are never put in one table.

**Sequential logs** (sidecar ``identity.adaptive``) come in two modes:

- *decision mode* (``identity.radius = r``): each example was tested at ``r`` only and the run
  stopped as soon as ``r`` was decided, so certified accuracy is reported at ``r`` alone: the
  fraction of examples correct with decision ``certified``. At every other radius it is ``None``
  ("n/a"): above ``r`` the logged radii stop just past ``r`` (they understate what the samples
  could certify), below ``r`` an example given up on at ``r`` may still be certifiable. ACR is
  ``None`` for the same reason.
- *max-radius mode* (``identity.radius`` null): the curve as for a fixed-n log. With a
  ``radius_cap`` the run stopped once the radius reached the cap, so radii above the cap are
  ``None`` and the ACR is of ``min(radius, cap)``.

**Forward passes** per example are ``n_used`` for sequential logs (selection included) and
``n0 + n`` for fixed-n logs; :class:`PassStats` gives their mean, median, 99th percentile
(numpy's linear interpolation) and maximum.

**Paired comparison** (:func:`compare_logs`) of two logs on the examples they share (same
``idx``): at radius ``r`` each example gives ``d_i = 1[A certified correct at r] - 1[B ...]``
in ``{-1, 0, 1}``. The difference of certified accuracies is ``mean(d)`` with standard error
``s_d / sqrt(m)`` (``s_d`` the sample standard deviation, ddof 1, ``m`` examples) and the
*normal (Wald)* 95% interval ``mean(d) +- z_0.975 * SE``, approximate and of zero width when no
example disagrees; beside it the *exact* McNemar test: the two-sided binomial test that the
examples only A certifies are as likely as those only B certifies (``p = 1`` with none).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from smoothcert.core import stats
from smoothcert.io.logs import DEEPFOOL_COLUMNS, read_rows, read_sidecar, read_table

__all__ = [
    "NORM_LABELS",
    "CertifyLog",
    "Comparison",
    "PairedDifference",
    "PassStats",
    "PredictLog",
    "Summary",
    "average_certified_radius",
    "certified_accuracy",
    "check_same_norm",
    "compare_logs",
    "empirical_curve",
    "empirical_robust_accuracy",
    "format_comparison",
    "format_csv",
    "format_json",
    "format_latex",
    "format_markdown",
    "norm_label",
    "paired_difference",
    "parse_radii",
    "parse_time",
    "predict_quality",
    "project_certified_accuracy",
    "read_certify_log",
    "read_predict_log",
    "recompute_radii",
    "summarize",
]


def parse_time(text: str) -> float:
    """Seconds from ``'12.5'`` or from the reference's ``'H:MM:SS.ffffff'``."""
    if ":" in text:
        parts = [float(p) for p in text.split(":")]
        seconds = 0.0
        for p in parts:
            seconds = seconds * 60 + p
        return seconds
    return float(text)


def parse_radii(spec: str) -> NDArray[np.float64]:
    """``'0:1.5:0.25'`` (start:stop:step, stop included) or a comma list ``'0,0.5,1'``."""
    try:
        if ":" in spec:
            start, stop, step = (float(v) for v in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = math.floor((stop - start) / step + 1e-9) + 1
            return np.round(start + step * np.arange(count), 10)
        values = np.array([float(v) for v in spec.split(",") if v.strip()])
        if values.size == 0:
            raise ValueError
        return values
    except ValueError:
        raise ValueError(f"radii must be 'start:stop:step' or a comma list of numbers, got {spec!r}") from None


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    header, rows = read_table(path)  # read-only: a torn last line is ignored, never cut
    if not header:
        raise ValueError(f"log {str(path)!r} is empty")
    return header, rows


def _column(header: list[str], rows: list[list[str]], name: str, kind: Any) -> NDArray[Any] | None:
    if name not in header:
        return None
    j = header.index(name)
    return np.array([kind(r[j]) for r in rows])


def _required(header: list[str], rows: list[list[str]], name: str, kind: Any) -> NDArray[Any]:
    col = _column(header, rows, name, kind)
    if col is None:
        raise ValueError(f"log has no {name!r} column")
    return col


NORM_LABELS = {"l1": "L1", "l2": "L2", "linf": "L∞"}
_LATEX_NORMS = {"l1": "$\\ell_1$", "l2": "$\\ell_2$", "linf": "$\\ell_\\infty$"}


def norm_label(norm: str) -> str:
    """``'L2'``, ``'L1'`` or ``'L∞'`` for a norm name."""
    if norm not in NORM_LABELS:
        raise ValueError(f"norm must be one of {', '.join(NORM_LABELS)}, got {norm!r}")
    return NORM_LABELS[norm]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


@dataclass(frozen=True)
class PassStats:
    """Forward passes per example: mean, median, 99th percentile (linear interpolation), max."""

    mean: float
    median: float
    p99: float
    max: int
    total: int

    @classmethod
    def of(cls, passes: NDArray[np.int64]) -> PassStats:
        if passes.size == 0:
            raise ValueError("passes: no examples")
        return cls(
            mean=float(np.mean(passes)),
            median=float(np.median(passes)),
            p99=float(np.percentile(passes, 99)),
            max=int(np.max(passes)),
            total=int(np.sum(passes)),
        )

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "median": self.median, "p99": self.p99, "max": self.max, "total": self.total}


@dataclass(frozen=True)
class CertifyLog:
    """One certification log as arrays; the extra columns are ``None`` where a log lacks them.

    Fixed-n logs have ``count n n0 p_lower selected``; sequential logs add ``n_used decision
    stage p_upper``; the 2019 reference logs have none of them.
    """

    name: str
    path: str
    idx: NDArray[np.int64]
    label: NDArray[np.int64]
    predict: NDArray[np.int64]
    radius: NDArray[np.float64]
    correct: NDArray[np.bool_]
    time: NDArray[np.float64]
    count: NDArray[np.int64] | None = None
    n: NDArray[np.int64] | None = None
    p_lower: NDArray[np.float64] | None = None
    selected: NDArray[np.int64] | None = None
    sidecar: dict[str, Any] | None = field(default=None, repr=False)
    n0: NDArray[np.int64] | None = None
    n_used: NDArray[np.int64] | None = None
    decision: NDArray[np.str_] | None = None
    stage: NDArray[np.int64] | None = None
    p_upper: NDArray[np.float64] | None = None

    @property
    def examples(self) -> int:
        return len(self.idx)

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self.sidecar.get("identity", {})) if self.sidecar else {}

    @property
    def sigma(self) -> float | None:
        """The certification sigma recorded in the sidecar, if any."""
        return float(self.identity["sigma"]) if "sigma" in self.identity else None

    @property
    def alpha(self) -> float | None:
        return float(self.identity["alpha"]) if "alpha" in self.identity else None

    @property
    def norm(self) -> str:
        """The threat norm of the radius column: the sidecar's ``norm``, ``'l2'`` when absent."""
        return str(self.identity.get("norm", "l2"))

    @property
    def noise(self) -> str:
        """The smoothing noise: the sidecar's ``noise``, ``'gaussian'`` when absent."""
        return str(self.identity.get("noise", "gaussian"))

    @property
    def adaptive(self) -> bool:
        return self.n_used is not None

    @property
    def decision_radius(self) -> float | None:
        """The radius a decision-mode log tested; ``None`` for other logs."""
        r = self.identity.get("radius") if self.adaptive else None
        return None if r is None else float(r)

    @property
    def radius_cap(self) -> float | None:
        """The cap of a max-radius-mode log, above which its radii are not meaningful."""
        cap = self.identity.get("radius_cap") if self.adaptive and self.decision_radius is None else None
        return None if cap is None else float(cap)

    @property
    def mode(self) -> str:
        """``'fixed'`` (fixed-n CERTIFY), ``'decision'`` or ``'max-radius'`` (sequential)."""
        if not self.adaptive:
            return "fixed"
        return "decision" if self.decision_radius is not None else "max-radius"

    @property
    def passes(self) -> NDArray[np.int64] | None:
        """Forward passes per example: ``n_used``, or ``n0 + n`` for fixed-n logs (``None`` for reference logs)."""
        if self.n_used is not None:
            return self.n_used
        if self.n is not None and self.n0 is not None:
            return self.n0 + self.n
        return None

    def meaningful(self, r: float) -> bool:
        """Whether certified accuracy at ``r`` is meaningful for this log (see the module docstring)."""
        if self.decision_radius is not None:
            return _close(r, self.decision_radius)
        cap = self.radius_cap
        return cap is None or r <= cap or _close(r, cap)

    def certified_at(self, r: float, *, radius: NDArray[np.float64] | None = None) -> NDArray[np.bool_] | None:
        """Per example: correct and certified at ``r`` (``None`` where ``r`` is not meaningful)."""
        if not self.meaningful(r):
            return None
        if self.decision is not None and self.decision_radius is not None:
            return self.correct & (self.decision == "certified")
        rad = self.radius if radius is None else radius
        return self.correct & (rad >= r)


def _default_name(path: Path, sidecar: dict[str, Any] | None) -> str:
    if sidecar and "identity" in sidecar:
        model = sidecar.get("model", {})
        ident = sidecar["identity"]
        name = f"{model.get('arch', 'model')} σ={ident['sigma']:g}"
        if ident.get("noise", "gaussian") != "gaussian":
            name += f" {ident['noise']}"
        if ident.get("adaptive"):
            name += f" adaptive r={ident['radius']:g}" if ident.get("radius") is not None else " adaptive"
        return name
    return path.stem


def read_certify_log(path: str | Path, *, name: str | None = None) -> CertifyLog:
    """Read a certify log (smoothcert's fixed-n or sequential, or the 2019 reference's)."""
    p = Path(path)
    header, rows = _read_table(p)
    needed = ["idx", "label", "predict", "radius", "correct", "time"]
    if header[:6] != needed:
        raise ValueError(
            f"{p} is not a certify log: columns {' '.join(header)!r}, expected to start with {' '.join(needed)!r}"
        )
    side = read_sidecar(p)
    col = lambda n, k: _column(header, rows, n, k)  # noqa: E731
    req = lambda n, k: _required(header, rows, n, k)  # noqa: E731
    n_used = col("n_used", int)
    if n_used is not None:
        for extra in ("decision", "stage", "p_upper"):
            if extra not in header:
                raise ValueError(f"{p} has an n_used column but no {extra!r} column: not a sequential certify log")
        if side is None or not side.get("identity", {}).get("adaptive"):
            raise ValueError(
                f"{p} is a sequential certify log without its adaptive sidecar {p.name}.json: "
                "its mode (decision radius or max-radius) is unknown"
            )
    norm = str((side or {}).get("identity", {}).get("norm", "l2"))
    if norm not in NORM_LABELS:
        raise ValueError(f"{p}: sidecar norm must be one of {', '.join(NORM_LABELS)}, got {norm!r}")
    return CertifyLog(
        name=name or _default_name(p, side),
        path=str(p),
        idx=req("idx", int),
        label=req("label", int),
        predict=req("predict", int),
        radius=req("radius", float),
        correct=req("correct", int).astype(bool),
        time=req("time", parse_time),
        count=col("count", int),
        n=col("n", int),
        p_lower=col("p_lower", float),
        selected=col("selected", int),
        sidecar=side,
        n0=col("n0", int),
        n_used=n_used,
        decision=col("decision", str),
        stage=col("stage", int),
        p_upper=col("p_upper", float),
    )


def certified_accuracy(
    log: CertifyLog, radii: Sequence[float] | NDArray[np.float64], *, radius: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """Fraction of all logged examples that are correct with radius ``>= r``, for each ``r``.

    For a sequential log, ``nan`` at radii where it is not meaningful (module docstring); in
    decision mode the value at the decision radius is the fraction correct and ``certified``.
    """
    r = np.asarray(radii, dtype=np.float64)
    if log.examples == 0:
        return np.zeros(r.shape)
    out = np.full(r.shape, np.nan)
    for j, rj in enumerate(r.tolist()):
        ok = log.certified_at(rj, radius=radius)
        if ok is not None:
            out[j] = ok.mean()
    return out


def average_certified_radius(log: CertifyLog, *, radius: NDArray[np.float64] | None = None) -> float | None:
    """ACR: mean over all examples of ``radius * 1[correct]``.

    ``min(radius, cap)`` for a capped max-radius log; ``None`` for a decision-mode log.
    """
    if log.mode == "decision":
        return None
    rad = log.radius if radius is None else radius
    if log.radius_cap is not None:
        rad = np.minimum(rad, log.radius_cap)
    return float(np.mean(np.where(log.correct, rad, 0.0))) if log.examples else 0.0


@dataclass
class Summary:
    """Certified accuracy of one log over a radius grid, with optional extra series.

    ``certified_accuracy[j]`` (and ``acr``) is ``None`` where it is not meaningful for a
    sequential log; ``passes`` is ``None`` for logs without sample counts (the 2019 reference's);
    ``decisions`` counts the outcomes of a sequential log.
    """

    name: str
    path: str
    examples: int
    radii: list[float]
    certified_accuracy: list[float | None]
    acr: float | None
    abstain_rate: float
    extra: dict[str, Any] = field(default_factory=dict)
    norm: str = "l2"
    mode: str = "fixed"
    decision_radius: float | None = None
    radius_cap: float | None = None
    passes: PassStats | None = None
    time_mean: float | None = None
    decisions: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "path": self.path,
            "examples": self.examples,
            "norm": self.norm,
            "mode": self.mode,
            "decision_radius": self.decision_radius,
            "radius_cap": self.radius_cap,
            "radii": self.radii,
            "certified_accuracy": self.certified_accuracy,
            "acr": self.acr,
            "abstain_rate": self.abstain_rate,
            "passes": None if self.passes is None else self.passes.to_json(),
            "time_mean": self.time_mean,
            "decisions": self.decisions,
        }
        out.update(self.extra)
        return out


def check_same_norm(logs: Sequence[CertifyLog] | Sequence[Summary]) -> str:
    """The norm shared by ``logs``; ValueError when they mix norms (one table, one radius axis)."""
    norms = {x.norm for x in logs}
    if len(norms) > 1:
        listing = ", ".join(f"{x.path} ({x.norm})" for x in logs)
        raise ValueError(f"logs of different threat norms cannot share a table or plot: {listing}")
    return norms.pop() if norms else "l2"


def _gaussian_l2(log: CertifyLog, what: str) -> None:
    if log.noise != "gaussian" or log.norm != "l2":
        raise ValueError(f"{what} needs a Gaussian-noise L2 log, got {log.noise} noise, norm {log.norm} ({log.path})")
    if log.adaptive:
        raise ValueError(f"{what} applies to fixed-n logs, got a sequential log ({log.path})")


def recompute_radii(log: CertifyLog, bound: str, *, sigma: float | None = None) -> NDArray[np.float64]:
    """Each example's radius under ``bound`` (cohen, lecuyer, li), from its ``p_lower``.

    Reference logs carry no ``p_lower``; it is recovered as ``Phi(radius / sigma)`` (up to the
    log's 3-digit rounding). Abstentions keep radius 0. Gaussian-noise L2 fixed-n logs only.
    """
    _gaussian_l2(log, f"--bound {bound}")
    s = sigma if sigma is not None else log.sigma
    if s is None:
        raise ValueError(f"sigma is needed to recompute radii for {log.path} (no sidecar): pass --sigma")
    if log.p_lower is not None:
        p = log.p_lower
    else:
        from scipy.stats import norm

        p = norm.cdf(log.radius / s)
    funcs: dict[str, Any] = {"cohen": stats.cohen_radius, "lecuyer": stats.lecuyer_radius, "li": stats.li_radius}
    if bound not in funcs:
        raise ValueError(f"bound must be one of {', '.join(funcs)}, got {bound!r}")
    r = np.asarray(funcs[bound](np.clip(p, 0.0, 1.0), sigma=s), dtype=np.float64)
    return np.where(log.predict >= 0, r, 0.0)


def project_certified_accuracy(
    log: CertifyLog,
    radii: Sequence[float] | NDArray[np.float64],
    *,
    n: int | None = None,
    alpha: float | None = None,
    sigma: float | None = None,
) -> NDArray[np.float64]:
    """Certified accuracy CERTIFY would have reported with ``n`` samples and/or level ``alpha``.

    Keeps each example's vote proportion ``count / n_logged`` (paper Fig. 8): the projected
    count is ``round(n * count / n_logged)``, bounded with Clopper–Pearson at ``alpha``.
    Needs the ``count``, ``n`` and ``selected`` columns of smoothcert's fixed-n Gaussian L2 logs.
    """
    if log.count is None or log.n is None or log.selected is None:
        raise ValueError(f"{log.path} has no count/n/selected columns (a reference log?): projections need them")
    _gaussian_l2(log, "a projection")
    s = sigma if sigma is not None else log.sigma
    a = alpha if alpha is not None else log.alpha
    if s is None or a is None:
        raise ValueError(f"sigma and alpha are needed for {log.path}: pass them or keep the sidecar")
    new_n = np.asarray(log.n if n is None else np.full(log.examples, n))
    k = np.rint(new_n * log.count / log.n).astype(np.int64)
    p = np.asarray(stats.clopper_pearson_lower(k, new_n, a))
    rad = np.asarray(stats.cohen_radius(p, sigma=s))
    correct = (log.selected == log.label) & (p > 0.5)
    r = np.asarray(radii, dtype=np.float64)
    return (correct[None, :] & (rad[None, :] >= r[:, None])).mean(axis=1)


def _grid(logs: Sequence[CertifyLog], radii: Sequence[float] | NDArray[np.float64]) -> list[float]:
    """``radii`` plus every decision-mode log's radius, sorted (the table shows each log's radius)."""
    grid = [float(r) for r in radii]
    for log in logs:
        d = log.decision_radius
        if d is not None and not any(_close(d, r) for r in grid):
            grid.append(d)
    return sorted(grid)


def _optional(values: NDArray[np.float64]) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


def summarize(
    logs: Sequence[CertifyLog],
    radii: Sequence[float] | NDArray[np.float64],
    *,
    high_prob: float | None = None,
    bound: str = "cohen",
    sigma: float | None = None,
) -> list[Summary]:
    """Certified accuracy, ACR, abstention rate and forward passes of each log over ``radii``.

    The grid is ``radii`` plus the radius of every decision-mode log. ``high_prob=gamma`` adds
    ``certified_accuracy_lower``, the bound of paper App. D, Thm 6 that holds with probability
    ``>= 1 - gamma``; ``bound`` recomputes radii with another guarantee (fixed-n Gaussian L2
    logs only). Refuses logs of different norms.
    """
    check_same_norm(logs)
    grid = _grid(logs, radii)
    out = []
    for log in logs:
        rad = None if bound == "cohen" else recompute_radii(log, bound, sigma=sigma)
        acc = certified_accuracy(log, grid, radius=rad)
        passes = log.passes
        decisions = None
        if log.decision is not None:
            names, counts = np.unique(log.decision, return_counts=True)
            decisions = {str(k): int(v) for k, v in zip(names.tolist(), counts.tolist(), strict=True)}
        summary = Summary(
            name=log.name,
            path=log.path,
            examples=log.examples,
            radii=grid,
            certified_accuracy=_optional(acc),
            acr=average_certified_radius(log, radius=rad),
            abstain_rate=float(np.mean(log.predict < 0)) if log.examples else 0.0,
            norm=log.norm,
            mode=log.mode,
            decision_radius=log.decision_radius,
            radius_cap=log.radius_cap,
            passes=PassStats.of(passes) if passes is not None and passes.size else None,
            time_mean=float(np.mean(log.time)) if log.examples else None,
            decisions=decisions,
        )
        if bound != "cohen":
            summary.extra["bound"] = bound
        if high_prob is not None:
            alpha = log.alpha if log.alpha is not None else 0.001
            lower = stats.certified_accuracy_lower_bound(np.nan_to_num(acc), max(log.examples, 1), alpha, high_prob)
            lower = np.where(np.isnan(acc), np.nan, np.atleast_1d(lower))
            summary.extra["certified_accuracy_lower"] = _optional(lower)
            summary.extra["gamma"] = high_prob
        out.append(summary)
    return out


# ----------------------------------------------------------------------------- paired comparison


@dataclass(frozen=True)
class PairedDifference:
    """``mean(d)`` of paired differences ``d_i`` with its standard error and normal 95% interval.

    ``a_only`` / ``b_only``: examples where only A / only B succeeds (the discordant pairs);
    ``mcnemar_p``: the exact two-sided McNemar p-value (binomial test of ``a_only`` among
    ``a_only + b_only`` at 1/2), ``None`` for non-binary differences.
    """

    a: float
    b: float
    difference: float
    se: float
    ci_low: float
    ci_high: float
    a_only: int | None = None
    b_only: int | None = None
    mcnemar_p: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "difference": self.difference,
            "se": self.se,
            "ci95": [self.ci_low, self.ci_high],
            "a_only": self.a_only,
            "b_only": self.b_only,
            "mcnemar_p": self.mcnemar_p,
        }


def paired_difference(
    a: NDArray[Any], b: NDArray[Any], *, confidence: float = 0.95, binary: bool = True
) -> PairedDifference:
    """Paired difference of per-example values ``a_i - b_i`` (normal interval; exact McNemar if binary).

    ``SE = s_d / sqrt(m)`` with ``s_d`` the sample standard deviation (ddof 1; 0 when ``m = 1``);
    interval ``mean(d) +- Phi^-1((1 + confidence) / 2) * SE``.
    """
    from scipy import stats as st

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"a and b must be equal-length non-empty 1-D arrays, got shapes {x.shape} and {y.shape}")
    d = x - y
    m = d.size
    se = float(np.std(d, ddof=1) / math.sqrt(m)) if m > 1 else 0.0
    z = float(st.norm.ppf((1 + confidence) / 2))
    mean = float(d.mean())
    a_only = b_only = None
    p = None
    if binary:
        a_only, b_only = int(np.sum(d > 0)), int(np.sum(d < 0))
        p = float(st.binomtest(a_only, a_only + b_only, 0.5).pvalue) if a_only + b_only else 1.0
    return PairedDifference(
        a=float(x.mean()),
        b=float(y.mean()),
        difference=mean,
        se=se,
        ci_low=mean - z * se,
        ci_high=mean + z * se,
        a_only=a_only,
        b_only=b_only,
        mcnemar_p=p,
    )


@dataclass(frozen=True)
class Comparison:
    """Log A against log B on the examples both logged (same ``idx``).

    ``passes_ratio`` is mean passes of B over mean passes of A (how many times fewer A used;
    ``None`` when either log lacks counts), ``time_ratio`` the same for the logged time per
    example. ``accuracy[j]`` is the paired certified-accuracy difference A − B at ``radii[j]``
    (``None`` where either log is not meaningful at that radius); ``acr`` the paired ACR
    difference (radii capped at the smaller cap; ``None`` when either log is decision-mode).
    """

    name_a: str
    name_b: str
    path_a: str
    path_b: str
    norm: str
    examples: int
    passes_a: PassStats | None
    passes_b: PassStats | None
    passes_ratio: float | None
    time_ratio: float | None
    radii: list[float]
    accuracy: list[PairedDifference | None]
    acr: PairedDifference | None

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.name_a,
            "b": self.name_b,
            "path_a": self.path_a,
            "path_b": self.path_b,
            "norm": self.norm,
            "examples": self.examples,
            "passes_a": None if self.passes_a is None else self.passes_a.to_json(),
            "passes_b": None if self.passes_b is None else self.passes_b.to_json(),
            "passes_ratio": self.passes_ratio,
            "time_ratio": self.time_ratio,
            "radii": self.radii,
            "certified_accuracy": [None if d is None else d.to_json() for d in self.accuracy],
            "acr": None if self.acr is None else self.acr.to_json(),
            "interval": "normal (Wald) on paired differences; McNemar p exact",
        }


def _subset(log: CertifyLog, keep: NDArray[np.int64]) -> CertifyLog:
    from dataclasses import fields, replace

    arrays = {f.name: getattr(log, f.name)[keep] for f in fields(log) if isinstance(getattr(log, f.name), np.ndarray)}
    return replace(log, **arrays)


def compare_logs(
    a: CertifyLog, b: CertifyLog, radii: Sequence[float] | NDArray[np.float64], *, confidence: float = 0.95
) -> Comparison:
    """Compare log ``a`` (e.g. sequential) with log ``b`` (e.g. fixed-n) on their common examples.

    The grid is ``radii`` plus the decision radius of either log. Refuses logs of different
    norms, logs with no example in common, and logs that give a common ``idx`` different labels.
    """
    norm = check_same_norm([a, b])
    common, ia, ib = np.intersect1d(a.idx, b.idx, return_indices=True)
    if common.size == 0:
        raise ValueError(f"{a.path} and {b.path} have no example (idx) in common")
    sa, sb = _subset(a, ia), _subset(b, ib)
    if np.any(sa.label != sb.label):
        bad = int(common[np.argmax(sa.label != sb.label)])
        raise ValueError(f"{a.path} and {b.path} give example idx {bad} different labels: not the same data")
    grid = _grid([a, b], radii)
    acc: list[PairedDifference | None] = []
    for r in grid:
        ca, cb = sa.certified_at(r), sb.certified_at(r)
        acc.append(None if ca is None or cb is None else paired_difference(ca, cb, confidence=confidence))
    acr = None
    if sa.mode != "decision" and sb.mode != "decision":
        caps = [c for c in (sa.radius_cap, sb.radius_cap) if c is not None]
        cap = min(caps) if caps else math.inf
        va = np.where(sa.correct, np.minimum(sa.radius, cap), 0.0)
        vb = np.where(sb.correct, np.minimum(sb.radius, cap), 0.0)
        acr = paired_difference(va, vb, confidence=confidence, binary=False)
    pa, pb = sa.passes, sb.passes
    stats_a = PassStats.of(pa) if pa is not None else None
    stats_b = PassStats.of(pb) if pb is not None else None
    ratio = stats_b.mean / stats_a.mean if stats_a is not None and stats_b is not None and stats_a.mean > 0 else None
    ta, tb = float(np.mean(sa.time)), float(np.mean(sb.time))
    return Comparison(
        name_a=a.name,
        name_b=b.name,
        path_a=a.path,
        path_b=b.path,
        norm=norm,
        examples=int(common.size),
        passes_a=stats_a,
        passes_b=stats_b,
        passes_ratio=ratio,
        time_ratio=tb / ta if ta > 0 else None,
        radii=grid,
        accuracy=acc,
        acr=acr,
    )


# ----------------------------------------------------------------------------- tables


NA = "n/a"


def _best(summaries: Sequence[Summary]) -> list[set[int]]:
    """For each radius, the logs with the highest certified accuracy (rounded to 2 decimals)."""
    best = []
    for j in range(len(summaries[0].radii)):
        vals = {i: round(v, 2) for i, s in enumerate(summaries) if (v := s.certified_accuracy[j]) is not None}
        top = max(vals.values(), default=None)
        best.append({i for i, v in vals.items() if v == top} if len(vals) > 1 else set())
    return best


def _cell(s: Summary, j: int) -> str:
    v = s.certified_accuracy[j]
    if v is None:
        return NA
    text = f"{v:.2f}"
    if "certified_accuracy_lower" in s.extra:
        text += f" (≥{s.extra['certified_accuracy_lower'][j]:.2f})"
    return text


def _acr(s: Summary) -> str:
    return NA if s.acr is None else f"{s.acr:.3f}"


def _num(v: float | None, spec: str = ",.0f") -> str:
    return NA if v is None else format(v, spec)


def _mode_text(s: Summary) -> str:
    if s.mode == "decision":
        return f"decision r = {s.decision_radius:g}"
    if s.mode == "max-radius":
        return "max-radius" + (f", cap {s.radius_cap:g}" if s.radius_cap is not None else "")
    return "fixed n"


def _decisions_text(s: Summary) -> str:
    if not s.decisions:
        return ""
    return ", ".join(f"{k} {v}" for k, v in sorted(s.decisions.items()))


def _notes(summaries: Sequence[Summary]) -> list[str]:
    notes = []
    if any(s.mode == "decision" for s in summaries):
        notes.append(
            "n/a: a decision-mode log tests one radius, so its certified accuracy is given at that radius only"
        )
    if any(s.radius_cap is not None for s in summaries):
        notes.append("a capped max-radius log is n/a above its cap, and its ACR is of min(radius, cap)")
    return notes


def format_markdown(summaries: Sequence[Summary]) -> str:
    """A Markdown table, one row per log, the best log per radius in bold (as in the paper).

    Radii are labelled with the logs' norm; a second table gives forward passes per example
    (and sequential decisions) when any log records them.
    """
    if not summaries:
        return ""
    norm = norm_label(check_same_norm(summaries))
    radii = summaries[0].radii
    best = _best(summaries)
    with_passes = any(s.passes is not None for s in summaries)
    head = (
        "| log | n | "
        + " | ".join(f"{norm} r = {r:g}" for r in radii)
        + " | ACR | abstain |"
        + (" passes (mean) |" if with_passes else "")
    )
    sep = "|---|---:|" + "---:|" * len(radii) + "---:|---:|" + ("---:|" if with_passes else "")
    lines = [head, sep]
    for i, s in enumerate(summaries):
        cells = [f"**{_cell(s, j)}**" if i in best[j] else _cell(s, j) for j in range(len(radii))]
        passes = f" {_num(s.passes.mean if s.passes else None)} |" if with_passes else ""
        lines.append(
            f"| {s.name} | {s.examples} | " + " | ".join(cells) + f" | {_acr(s)} | {s.abstain_rate:.2f} |" + passes
        )
    lines += [f"\n{note}." for note in _notes(summaries)]
    if with_passes:
        lines += [
            "",
            "| log | mode | passes mean | median | p99 | max | time/example (s) | decisions |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for s in summaries:
            p = s.passes
            lines.append(
                f"| {s.name} | {_mode_text(s)} | {_num(p.mean if p else None)} | {_num(p.median if p else None)} | "
                f"{_num(p.p99 if p else None)} | {_num(p.max if p else None)} | {_num(s.time_mean, '.3f')} | "
                f"{_decisions_text(s)} |"
            )
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return (
        text.replace("_", "\\_")
        .replace("%", "\\%")
        .replace("σ", "$\\sigma$")
        .replace("≥", "$\\geq$")
        .replace("∞", "$\\infty$")
    )


def format_latex(summaries: Sequence[Summary]) -> str:
    """A booktabs LaTeX table, best per radius in bold, radii labelled with the norm; passes in a second table."""
    if not summaries:
        return ""
    norm = _LATEX_NORMS[check_same_norm(summaries)]
    radii = summaries[0].radii
    best = _best(summaries)
    with_passes = any(s.passes is not None for s in summaries)
    cols = "l" + "r" * (len(radii) + 2 + with_passes)
    lines = [
        f"\\begin{{tabular}}{{{cols}}}",
        "\\toprule",
        "Log & "
        + " & ".join(f"{norm} $r = {r:g}$" for r in radii)
        + " & ACR & Abstain"
        + (" & Passes (mean)" if with_passes else "")
        + " \\\\",
        "\\midrule",
    ]
    for i, s in enumerate(summaries):
        cells = [f"\\textbf{{{_cell(s, j)}}}" if i in best[j] else _cell(s, j) for j in range(len(radii))]
        passes = f" & {_num(s.passes.mean if s.passes else None, '.0f')}" if with_passes else ""
        lines.append(f"{_tex(s.name)} & " + " & ".join(cells) + f" & {_acr(s)} & {s.abstain_rate:.2f}{passes} \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    lines += [f"% {note}." for note in _notes(summaries)]
    if with_passes:
        lines += [
            "",
            "\\begin{tabular}{llrrrrr}",
            "\\toprule",
            "Log & Mode & Passes mean & Median & p99 & Max & Time/example (s) \\\\",
            "\\midrule",
        ]
        for s in summaries:
            p = s.passes
            vals = [p.mean, p.median, p.p99, p.max] if p else [None] * 4
            lines.append(
                f"{_tex(s.name)} & {_mode_text(s)} & "
                + " & ".join(_num(v, ".0f") for v in vals)
                + f" & {_num(s.time_mean, '.3f')} \\\\"
            )
        lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines).replace("≥", "$\\geq$") + "\n"


def _csv_value(v: float | None) -> Any:
    return "" if v is None else v


def format_csv(summaries: Sequence[Summary]) -> str:
    """Long-format CSV: one row per (log, radius); empty cells where a value is n/a."""
    check_same_norm(summaries)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    lower = any("certified_accuracy_lower" in s.extra for s in summaries)
    w.writerow(
        ["name", "path", "examples", "radius", "certified_accuracy"]
        + (["certified_accuracy_lower"] if lower else [])
        + ["acr", "abstain_rate", "norm", "mode", "passes_mean", "passes_median", "passes_p99", "passes_max"]
        + ["time_mean"]
    )
    for s in summaries:
        p = s.passes
        pass_cells = [p.mean, p.median, p.p99, p.max] if p else [None] * 4
        for j, r in enumerate(s.radii):
            extra = [_csv_value(s.extra["certified_accuracy_lower"][j])] if lower else []
            acc = _csv_value(s.certified_accuracy[j])
            tail = [s.abstain_rate, s.norm, s.mode, *map(_csv_value, pass_cells), _csv_value(s.time_mean)]
            w.writerow([s.name, s.path, s.examples, r, acc, *extra, _csv_value(s.acr), *tail])
    return buf.getvalue()


def format_json(summaries: Sequence[Summary]) -> str:
    check_same_norm(summaries)
    return json.dumps([s.to_json() for s in summaries], indent=2) + "\n"


def _diff_cells(d: PairedDifference) -> list[str]:
    return [
        f"{d.a:.3f}",
        f"{d.b:.3f}",
        f"{d.difference:+.3f}",
        f"{d.se:.3f}",
        f"[{d.ci_low:+.3f}, {d.ci_high:+.3f}]",
        str(d.a_only),
        str(d.b_only),
        f"{d.mcnemar_p:.3g}",
    ]


def format_comparison(comparisons: Sequence[Comparison], fmt: str) -> str:
    """The paired comparisons as ``markdown``, ``latex``, ``csv`` or ``json``.

    One row per pair (examples in common, mean passes, B/A ratios, paired ACR difference), then
    one row per (pair, radius) where both logs are meaningful: accuracies, A − B, its standard
    error, normal 95% interval, discordant counts and exact McNemar p.
    """
    if fmt == "json":
        return json.dumps([c.to_json() for c in comparisons], indent=2) + "\n"
    if fmt not in ("markdown", "latex", "csv"):
        raise ValueError(f"format must be markdown, latex, csv or json, got {fmt!r}")
    if not comparisons:
        return ""
    norms = {c.norm for c in comparisons}
    if len(norms) > 1:
        raise ValueError(f"comparisons of different threat norms cannot share a table: {', '.join(sorted(norms))}")
    norm = norms.pop()
    pair_head = ["A", "B", "common", "passes A (mean)", "passes B (mean)", "B/A passes", "B/A time", "ACR A − B (SE)"]
    diff_head = ["A", "B", f"{norm_label(norm)} r", "acc A", "acc B", "A − B", "SE", "95% CI (normal)"]
    diff_head += ["A only", "B only", "McNemar p (exact)"]
    pair_rows, diff_rows = [], []
    for c in comparisons:
        acr = NA if c.acr is None else f"{c.acr.difference:+.4f} ({c.acr.se:.4f})"
        mean_a = _num(c.passes_a.mean if c.passes_a else None)
        mean_b = _num(c.passes_b.mean if c.passes_b else None)
        ratio = _num(c.passes_ratio, ".1f") + ("×" if c.passes_ratio else "")
        time_ratio = _num(c.time_ratio, ".1f") + ("×" if c.time_ratio else "")
        pair_rows.append([c.name_a, c.name_b, str(c.examples), mean_a, mean_b, ratio, time_ratio, acr])
        for r, d in zip(c.radii, c.accuracy, strict=True):
            if d is not None:
                diff_rows.append([c.name_a, c.name_b, f"{r:g}", *_diff_cells(d)])
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        head_cols = ["a", "b", "norm", "examples", "passes_a_mean", "passes_b_mean", "passes_ratio", "time_ratio"]
        diff_cols = ["acc_a", "acc_b", "difference", "se", "ci95_low", "ci95_high", "a_only", "b_only", "mcnemar_p"]
        w.writerow([*head_cols, "radius", *diff_cols])
        for c in comparisons:
            means = [c.passes_a.mean if c.passes_a else "", c.passes_b.mean if c.passes_b else ""]
            head = [
                c.name_a,
                c.name_b,
                c.norm,
                c.examples,
                *means,
                _csv_value(c.passes_ratio),
                _csv_value(c.time_ratio),
            ]
            for r, d in zip(c.radii, c.accuracy, strict=True):
                if d is not None:
                    w.writerow(
                        [*head, r, d.a, d.b, d.difference, d.se, d.ci_low, d.ci_high, d.a_only, d.b_only, d.mcnemar_p]
                    )
            if c.acr is not None:
                d = c.acr
                w.writerow([*head, "acr", d.a, d.b, d.difference, d.se, d.ci_low, d.ci_high, "", "", ""])
        return buf.getvalue()
    note = (
        "Paired over the examples both logs hold; SE and interval: normal approximation to the mean "
        "of per-example differences; McNemar: exact binomial test on the discordant examples."
    )
    if fmt == "markdown":

        def table(head: list[str], rows: list[list[str]]) -> list[str]:
            align = "|" + "|".join("---" if k < 2 else "---:" for k in range(len(head))) + "|"
            return ["| " + " | ".join(head) + " |", align] + ["| " + " | ".join(r) + " |" for r in rows]

        return "\n".join([*table(pair_head, pair_rows), "", *table(diff_head, diff_rows), "", note]) + "\n"

    def latex(head: list[str], rows: list[list[str]]) -> list[str]:
        return [
            "\\begin{tabular}{ll" + "r" * (len(head) - 2) + "}",
            "\\toprule",
            " & ".join(_tex(x) for x in head) + " \\\\",
            "\\midrule",
            *(" & ".join(_tex(x) for x in r) + " \\\\" for r in rows),
            "\\bottomrule",
            "\\end{tabular}",
        ]

    text = "\n".join([*latex(pair_head, pair_rows), "", *latex(diff_head, diff_rows), f"% {note}"]) + "\n"
    return text.replace("×", "$\\times$").replace("−", "$-$").replace("∞", "$\\infty$")


# ----------------------------------------------------------------------------- empirical (attack) curves


def empirical_robust_accuracy(norms: NDArray[np.float64], radii: Any) -> NDArray[np.float64]:
    """Fraction of examples whose minimal adversarial norm exceeds ``r`` (0 for misclassified ones).

    An empirical *upper* bound on robust accuracy at each radius ``r``.
    """
    n = np.asarray(norms, dtype=np.float64)
    r = np.asarray(radii, dtype=np.float64)
    return (n[None, :] > r[:, None]).mean(axis=1) if n.size else np.zeros(r.shape)


def empirical_curve(
    path: str | Path, radii: NDArray[np.float64] | None = None
) -> tuple[str, NDArray[np.float64], NDArray[np.float64]]:
    """``(label, radii, robust accuracy)`` from a DeepFool log, for a dashed line beside certified curves."""
    rows = read_rows(path, DEEPFOOL_COLUMNS)
    norms = np.array([float(r[4]) for r in rows])
    grid = np.linspace(0.0, 2.5, 501) if radii is None else radii
    side = read_sidecar(path)
    label = "DeepFool (empirical)"
    if side:
        meta = side.get("model", {})
        label = f"DeepFool vs {meta.get('arch', 'model')} trained at σ={meta.get('sigma', '?')}"
    return label, grid, empirical_robust_accuracy(norms, grid)


# ----------------------------------------------------------------------------- PREDICT quality (Table 4)


@dataclass(frozen=True)
class PredictLog:
    name: str
    path: str
    idx: NDArray[np.int64]
    label: NDArray[np.int64]
    predict: NDArray[np.int64]
    n: int | None


def read_predict_log(path: str | Path, *, name: str | None = None) -> PredictLog:
    """Read a predict log (smoothcert's or the reference's); ``n`` from the column, sidecar or file name."""
    p = Path(path)
    header, rows = _read_table(p)
    if header[:5] != ["idx", "label", "predict", "correct", "time"]:
        raise ValueError(f"{p} is not a predict log: columns {' '.join(header)!r}")
    ns = _column(header, rows, "n", int)
    n: int | None = int(ns[0]) if ns is not None and len(ns) else None
    if n is None:
        import re

        m = re.search(r"_N_(\d+)", p.name)
        n = int(m.group(1)) if m else None
    return PredictLog(
        name=name or (f"N = {n:,}" if n else p.stem),
        path=str(p),
        idx=_required(header, rows, "idx", int),
        label=_required(header, rows, "label", int),
        predict=_required(header, rows, "predict", int),
        n=n,
    )


def predict_quality(logs: Sequence[PredictLog], reference: PredictLog) -> list[dict[str, Any]]:
    """Paper Table 4: for each log, the fractions correct/incorrect x accurate/inaccurate, and abstain.

    "correct" means the returned class equals the label; "accurate" that it equals ``g(x)`` as
    estimated by the ``reference`` log (a much larger n). Examples missing from the reference
    are left out.
    """
    ref = dict(zip(reference.idx.tolist(), reference.predict.tolist(), strict=True))
    out = []
    for log in logs:
        keep = np.array([i in ref for i in log.idx.tolist()], dtype=bool)
        pred, label = log.predict[keep], log.label[keep]
        g = np.array([ref[i] for i in log.idx[keep].tolist()])
        answered = pred >= 0
        correct, accurate = pred == label, pred == g
        m = max(int(keep.sum()), 1)
        out.append(
            {
                "name": log.name,
                "n": log.n,
                "examples": int(keep.sum()),
                "correct_accurate": float(np.sum(answered & correct & accurate) / m),
                "correct_inaccurate": float(np.sum(answered & correct & ~accurate) / m),
                "incorrect_accurate": float(np.sum(answered & ~correct & accurate) / m),
                "incorrect_inaccurate": float(np.sum(answered & ~correct & ~accurate) / m),
                "abstain": float(np.sum(~answered) / m),
            }
        )
    return out
