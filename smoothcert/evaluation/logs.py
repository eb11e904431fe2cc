"""Certify, predict and DeepFool logs read into typed, frozen objects; no torch import.

Reads smoothcert's logs (fixed-n CERTIFY and sequential, :mod:`smoothcert.core.sequential`) and the
2019 reference's (radius to 3 significant digits, time as seconds or ``H:MM:SS.ffffff``, no
extra columns, no sidecar: Gaussian noise, L2). Only :mod:`smoothcert.io.logs` splits the TSV
lines and knows the column schemas; here every column is read by its *name*. The radius is in
the log's threat norm (sidecar ``identity.norm``, absent meaning ``l2``).

Every reader refuses, with one line naming the file, a log that cannot be analysed: an empty
file, a header with no rows (an empty split, or a run that has not finished an example), a
missing column, a non-finite or negative radius, or a ``p_lower`` outside ``[0, 1]``. A radius
of ``nan`` or ``inf`` would make the ACR ``nan``/``inf`` and silently count the example as not
certified at every radius, so the whole log is refused rather than summarised over its finite
rows: such a radius means the run went wrong, and any figure from the log would hide it.

**Curve logs** (``certify --curve``, sidecar ``identity.curve``) read like max-radius logs capped
at the reporting grid's largest radius (``identity.curve_radii``); their ``reason`` column says why
each example stopped. **Sequential logs** (sidecar ``identity.adaptive``) come in two modes,
*decision* (``identity.radius = r``: each example tested at ``r`` only) and *max-radius*
(``identity.radius`` null, optionally with a ``radius_cap``); see
:mod:`smoothcert.evaluation.metrics` for what each reports. A sequential log written with
``--eval-label`` (``identity.eval_label``) bounded each example's *true* label without
selecting a class: :attr:`CertifyLog.eval_label` marks it, and every table names the mode.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from smoothcert.core.errors import ConfigError, ResultFileError
from smoothcert.io.logs import DEEPFOOL_COLUMNS, read_rows, read_sidecar, read_table

__all__ = [
    "NORM_LABELS",
    "CertifyLog",
    "DeepFoolLog",
    "PredictLog",
    "check_same_norm",
    "close",
    "front_end_label",
    "norm_label",
    "parse_radii",
    "parse_time",
    "radius_grid",
    "read_certify_log",
    "read_deepfool_log",
    "read_predict_log",
    "smoothing_label",
    "subset",
]

NORM_LABELS = {"l1": "L1", "l2": "L2", "linf": "L∞"}
CERTIFY_REQUIRED = ("idx", "label", "predict", "radius", "correct", "time")
PREDICT_REQUIRED = ("idx", "label", "predict", "correct", "time")
SEQUENTIAL_EXTRA = ("decision", "stage", "p_upper")
CURVE_EXTRA = ("reason", "decisions", "p_upper")


def parse_time(text: str) -> float:
    """Seconds from ``'12.5'`` or from the reference's ``'H:MM:SS.ffffff'``."""
    if ":" in text:
        seconds = 0.0
        for part in text.split(":"):
            seconds = seconds * 60 + float(part)
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
        raise ConfigError(f"radii must be 'start:stop:step' or a comma list of numbers, got {spec!r}") from None


def norm_label(norm: str) -> str:
    """``'L2'``, ``'L1'`` or ``'L∞'`` for a norm name."""
    if norm not in NORM_LABELS:
        raise ConfigError(f"norm must be one of {', '.join(NORM_LABELS)}, got {norm!r}")
    return NORM_LABELS[norm]


def close(a: float, b: float) -> bool:
    """``a`` and ``b`` equal up to a relative 1e-9 (radii parsed from text and from a sidecar)."""
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


class _Columns:
    """The rows of one log, read column by column by name."""

    def __init__(self, path: Path, kind: str, required: Sequence[str]) -> None:
        header, rows = read_table(path)  # read-only: a torn last line is ignored, never cut
        if not header:
            raise ResultFileError(f"log {str(path)!r} is empty: nothing to analyze")
        missing = [c for c in required if c not in header]
        if missing:
            raise ResultFileError(
                f"{path} is not a {kind} log: columns {' '.join(header)!r} lack {' '.join(missing)!r}"
            )
        if not rows:
            raise ResultFileError(
                f"log {str(path)!r} has a header but no rows: nothing to analyze "
                "(an empty split, or a run that has not finished an example yet)"
            )
        self.path, self.header, self.rows = path, header, rows

    def get(self, name: str, kind: Callable[[str], Any]) -> NDArray[Any] | None:
        if name not in self.header:
            return None
        j = self.header.index(name)
        try:
            return np.array([kind(r[j]) for r in self.rows])
        except ValueError as e:
            raise ResultFileError(f"{self.path}: column {name!r} holds a value that is not a number ({e})") from None

    def need(self, name: str, kind: Callable[[str], Any]) -> NDArray[Any]:
        col = self.get(name, kind)
        if col is None:
            raise ResultFileError(f"{self.path} has no {name!r} column")
        return col


def _check_values(path: Path, idx: NDArray[np.int64], radius: NDArray[np.float64], p_lower: Any) -> None:
    bad = ~np.isfinite(radius) | (radius < 0)
    if np.any(bad):
        where = ", ".join(str(i) for i in idx[bad][:5].tolist())
        raise ResultFileError(
            f"{path}: radius is not a finite number >= 0 for {int(bad.sum())} of {len(radius)} examples "
            f"(idx {where}{', ...' if bad.sum() > 5 else ''}): ACR and certified accuracy would be undefined; "
            "re-certify those examples"
        )
    if p_lower is not None:
        badp = ~((p_lower >= 0) & (p_lower <= 1))  # nan fails both comparisons
        if np.any(badp):
            raise ResultFileError(
                f"{path}: p_lower is outside [0, 1] for {int(badp.sum())} examples (idx {int(idx[badp][0])} first)"
            )


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
    reason: NDArray[np.str_] | None = None

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
        """Sequential or curve mode: the number of passes varies per example (an ``n_used`` column)."""
        return self.n_used is not None

    @property
    def curve(self) -> bool:
        """Written by ``certify --curve`` (sidecar ``identity.curve``)."""
        return bool(self.identity.get("curve", False))

    @property
    def smoothing(self) -> str:
        """Which noise ran (:func:`smoothing_label`): ``'sound (grid Q)'``, ``'float'`` or ``'deterministic'``."""
        return smoothing_label(self.sidecar)

    @property
    def front_end(self) -> str | None:
        """The denoiser or diffusion model in front of the classifier (:func:`front_end_label`), or None."""
        return front_end_label(self.sidecar)

    @property
    def eval_label(self) -> bool:
        """Written with ``--eval-label``: the true label was bounded, no class was selected (no n0 draws)."""
        return bool(self.identity.get("eval_label", False))

    @property
    def label_mode(self) -> str:
        """``'eval-label'`` (the true label was certified, evaluation only) or ``'selected'`` (CERTIFY's)."""
        return "eval-label" if self.eval_label else "selected"

    @property
    def decision_radius(self) -> float | None:
        """The radius a decision-mode log tested; ``None`` for other logs."""
        r = self.identity.get("radius") if self.adaptive and not self.curve else None
        return None if r is None else float(r)

    @property
    def radius_cap(self) -> float | None:
        """The cap of a max-radius- or curve-mode log, above which its radii are not meaningful."""
        if self.curve:
            return float(self.identity["curve_radii"][-1])
        cap = self.identity.get("radius_cap") if self.adaptive and self.decision_radius is None else None
        return None if cap is None else float(cap)

    @property
    def mode(self) -> str:
        """``'fixed'`` (fixed-n CERTIFY), ``'decision'`` or ``'max-radius'`` (sequential), ``'curve'``."""
        if not self.adaptive:
            return "fixed"
        if self.curve:
            return "curve"
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
        """Whether certified accuracy at ``r`` is meaningful for this log (:mod:`~smoothcert.evaluation.metrics`)."""
        if self.decision_radius is not None:
            return close(r, self.decision_radius)
        cap = self.radius_cap
        return cap is None or r <= cap or close(r, cap)

    def certified_at(self, r: float, *, radius: NDArray[np.float64] | None = None) -> NDArray[np.bool_] | None:
        """Per example: correct and certified at ``r`` (``None`` where ``r`` is not meaningful)."""
        if not self.meaningful(r):
            return None
        if self.decision is not None and self.decision_radius is not None:
            return self.correct & (self.decision == "certified")
        rad = self.radius if radius is None else radius
        return self.correct & (rad >= r)


class _HasNorm(Protocol):
    @property
    def norm(self) -> str: ...

    @property
    def path(self) -> str: ...


def check_same_norm(logs: Sequence[_HasNorm]) -> str:
    """The norm shared by ``logs`` (or summaries); ConfigError when they mix norms (one table, one axis)."""
    norms = {x.norm for x in logs}
    if len(norms) > 1:
        listing = ", ".join(f"{x.path} ({x.norm})" for x in logs)
        raise ConfigError(f"logs of different threat norms cannot share a table or plot: {listing}")
    return norms.pop() if norms else "l2"


def radius_grid(logs: Sequence[CertifyLog], radii: Sequence[float] | NDArray[np.float64]) -> list[float]:
    """``radii`` plus every decision-mode log's radius, sorted (a table shows each log's radius)."""
    grid = [float(r) for r in radii]
    for log in logs:
        d = log.decision_radius
        if d is not None and not any(close(d, r) for r in grid):
            grid.append(d)
    return sorted(grid)


def subset(log: CertifyLog, keep: NDArray[np.int64]) -> CertifyLog:
    """The log restricted to the rows ``keep`` (positions), every per-example array alike."""
    arrays = {f.name: getattr(log, f.name)[keep] for f in fields(log) if isinstance(getattr(log, f.name), np.ndarray)}
    return replace(log, **arrays)


def smoothing_label(sidecar: dict[str, Any] | None) -> str:
    """How a log's certificates were computed, for tables and plots to say.

    ``'sound (grid Q)'`` for a sound-mode log (``identity.sound``), ``'deterministic'`` for a
    deterministic certifier's log (``smoothcert baseline``: no sigma), else ``'float'`` (float-mode
    noise: a log written with ``--float-noise``, by 0.2 without ``--sound``, or by the 2019 reference).
    """
    ident = dict((sidecar or {}).get("identity", {}))
    if ident.get("sound"):
        return f"sound (grid {ident.get('grid') or 255})"
    if sidecar is not None and "identity" in sidecar and ident.get("sigma") is None:
        return "deterministic"
    return "float"


def front_end_label(sidecar: dict[str, Any] | None) -> str | None:
    """What runs in front of the classifier in a log's base classifier, for tables and plots to say, or None.

    ``'diffusion t=144 (1a2b3c4d)'`` for ``certify --diffusion`` (identity ``diffusion_t`` and the first 8
    hex digits of ``diffusion_sha256``), ``'denoiser dncnn stability (1a2b3c4d)'`` for ``--denoiser``
    (the sidecar's denoiser record: arch and objective; ``denoiser_sha256``).
    """
    side = sidecar or {}
    ident = dict(side.get("identity", {}))
    if ident.get("diffusion_sha256"):
        return f"diffusion t={ident.get('diffusion_t')} ({str(ident['diffusion_sha256'])[:8]})"
    if ident.get("denoiser_sha256"):
        den = dict(side.get("denoiser") or {})
        words = ["denoiser", *(str(den[k]) for k in ("arch", "objective") if den.get(k))]
        return f"{' '.join(words)} ({str(ident['denoiser_sha256'])[:8]})"
    return None


def _default_name(path: Path, sidecar: dict[str, Any] | None) -> str:
    if sidecar and "identity" in sidecar:
        model = sidecar.get("model", {})
        ident = sidecar["identity"]
        if ident.get("sigma") is None:  # a deterministic certifier's log (smoothcert baseline)
            return f"{model.get('arch', 'model')} {ident.get('method', path.stem)}"
        name = f"{model.get('arch', 'model')} σ={ident['sigma']:g}"
        if ident.get("sound"):
            name += " sound"
        if ident.get("noise", "gaussian") != "gaussian":
            name += f" {ident['noise']}"
        if ident.get("adaptive"):
            name += f" adaptive r={ident['radius']:g}" if ident.get("radius") is not None else " adaptive"
        if ident.get("curve"):
            name += " curve"
        front = front_end_label(sidecar)
        if front is not None:
            name += f" + {front}"
        return name
    return path.stem


def read_certify_log(path: str | Path, *, name: str | None = None) -> CertifyLog:
    """Read a certify log (smoothcert's fixed-n or sequential, or the 2019 reference's)."""
    p = Path(path)
    cols = _Columns(p, "certify", CERTIFY_REQUIRED)
    side = read_sidecar(p)
    n_used = cols.get("n_used", int)
    is_curve = bool((side or {}).get("identity", {}).get("curve"))
    if n_used is not None and is_curve:
        for extra in CURVE_EXTRA:
            if extra not in cols.header:
                raise ResultFileError(f"{p} has a curve sidecar but no {extra!r} column: not a curve certify log")
        if not (side or {}).get("identity", {}).get("curve_radii"):
            raise ResultFileError(f"{p}: the curve sidecar {p.name}.json records no reporting grid (curve_radii)")
    elif n_used is not None:
        for extra in SEQUENTIAL_EXTRA:
            if extra not in cols.header:
                raise ResultFileError(f"{p} has an n_used column but no {extra!r} column: not a sequential certify log")
        if side is None or not side.get("identity", {}).get("adaptive"):
            raise ResultFileError(
                f"{p} is a sequential certify log without its adaptive sidecar {p.name}.json: "
                "its mode (decision radius or max-radius) is unknown"
            )
    norm = str((side or {}).get("identity", {}).get("norm", "l2"))
    if norm not in NORM_LABELS:
        raise ResultFileError(f"{p}: sidecar norm must be one of {', '.join(NORM_LABELS)}, got {norm!r}")
    idx, radius, p_lower = cols.need("idx", int), cols.need("radius", float), cols.get("p_lower", float)
    _check_values(p, idx, radius, p_lower)
    return CertifyLog(
        name=name or _default_name(p, side),
        path=str(p),
        idx=idx,
        label=cols.need("label", int),
        predict=cols.need("predict", int),
        radius=radius,
        correct=cols.need("correct", int).astype(bool),
        time=cols.need("time", parse_time),
        count=cols.get("count", int),
        n=cols.get("n", int),
        p_lower=p_lower,
        selected=cols.get("selected", int),
        sidecar=side,
        n0=cols.get("n0", int),
        n_used=n_used,
        decision=cols.get("decision", str),
        stage=cols.get("stage", int),
        p_upper=cols.get("p_upper", float),
        reason=cols.get("reason", str),
    )


@dataclass(frozen=True)
class PredictLog:
    """One PREDICT log: per-example label and prediction; ``n`` from its column, sidecar or file name."""

    name: str
    path: str
    idx: NDArray[np.int64]
    label: NDArray[np.int64]
    predict: NDArray[np.int64]
    n: int | None
    smoothing: str = "float"


def read_predict_log(path: str | Path, *, name: str | None = None) -> PredictLog:
    """Read a predict log (smoothcert's or the reference's); ``n`` from the column, sidecar or file name."""
    p = Path(path)
    cols = _Columns(p, "predict", PREDICT_REQUIRED)
    ns = cols.get("n", int)
    n: int | None = int(ns[0]) if ns is not None else None
    if n is None:
        n = (read_sidecar(p) or {}).get("identity", {}).get("n")
    if n is None:
        m = re.search(r"_N_(\d+)", p.name)
        n = int(m.group(1)) if m else None
    return PredictLog(
        name=name or (f"N = {n:,}" if n else p.stem),
        path=str(p),
        idx=cols.need("idx", int),
        label=cols.need("label", int),
        predict=cols.need("predict", int),
        n=n,
        smoothing=smoothing_label(read_sidecar(p)),
    )


@dataclass(frozen=True)
class DeepFoolLog:
    """A DeepFool log (``smoothcert attack --deepfool``): each example's minimal adversarial L2 norm."""

    path: str
    label: str
    norms: NDArray[np.float64]


def read_deepfool_log(path: str | Path) -> DeepFoolLog:
    """Read a DeepFool log; its label names the attacked model when the sidecar says which."""
    rows = read_rows(path, DEEPFOOL_COLUMNS)  # checks the header is exactly the schema
    if not rows:
        raise ResultFileError(f"log {str(path)!r} has no rows: nothing to analyze")
    j = DEEPFOOL_COLUMNS.index("deepfool_norm")
    side = read_sidecar(path)
    label = "DeepFool (empirical)"
    if side:
        meta = side.get("model", {})
        label = f"DeepFool vs {meta.get('arch', 'model')} trained at σ={meta.get('sigma', '?')}"
    return DeepFoolLog(path=str(path), label=label, norms=np.array([float(r[j]) for r in rows]))
