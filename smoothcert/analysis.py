"""Certified-accuracy analysis of certification logs (docs/statistics.md §6, §7, §11); no torch import.

Reads smoothcert's logs and the 2019 reference's (radius to 3 significant digits, time as
seconds or ``H:MM:SS.ffffff``, no extra columns). Certified accuracy at ``r`` is the fraction of
*all* logged examples whose prediction is correct with radius ``>= r`` (abstentions count as
failures), as in the reference analysis.
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

from . import stats
from .results import DEEPFOOL_COLUMNS, read_rows, read_sidecar, read_table

__all__ = [
    "CertifyLog",
    "PredictLog",
    "Summary",
    "average_certified_radius",
    "certified_accuracy",
    "empirical_curve",
    "empirical_robust_accuracy",
    "format_csv",
    "format_json",
    "format_latex",
    "format_markdown",
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


@dataclass(frozen=True)
class CertifyLog:
    """One certification log as arrays; the extra columns are ``None`` for reference logs."""

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

    @property
    def examples(self) -> int:
        return len(self.idx)

    @property
    def sigma(self) -> float | None:
        """The certification sigma recorded in the sidecar, if any."""
        if self.sidecar and "identity" in self.sidecar:
            return float(self.sidecar["identity"]["sigma"])
        return None

    @property
    def alpha(self) -> float | None:
        if self.sidecar and "identity" in self.sidecar:
            return float(self.sidecar["identity"]["alpha"])
        return None


def _default_name(path: Path, sidecar: dict[str, Any] | None) -> str:
    if sidecar and "identity" in sidecar:
        model = sidecar.get("model", {})
        return f"{model.get('arch', 'model')} σ={sidecar['identity']['sigma']:g}"
    return path.stem


def read_certify_log(path: str | Path, *, name: str | None = None) -> CertifyLog:
    """Read a certify log (smoothcert's or the 2019 reference's)."""
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
    )


def certified_accuracy(
    log: CertifyLog, radii: Sequence[float] | NDArray[np.float64], *, radius: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """Fraction of all logged examples that are correct with radius ``>= r``, for each ``r``."""
    rad = log.radius if radius is None else radius
    r = np.asarray(radii, dtype=np.float64)
    if log.examples == 0:
        return np.zeros(r.shape)
    ok = log.correct[None, :] & (rad[None, :] >= r[:, None])
    return ok.mean(axis=1)


def average_certified_radius(log: CertifyLog, *, radius: NDArray[np.float64] | None = None) -> float:
    """ACR: mean over all examples of ``radius * 1[correct]``."""
    rad = log.radius if radius is None else radius
    return float(np.mean(np.where(log.correct, rad, 0.0))) if log.examples else 0.0


@dataclass
class Summary:
    """Certified accuracy of one log over a radius grid, with optional extra series."""

    name: str
    path: str
    examples: int
    radii: list[float]
    certified_accuracy: list[float]
    acr: float
    abstain_rate: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "path": self.path,
            "examples": self.examples,
            "radii": self.radii,
            "certified_accuracy": self.certified_accuracy,
            "acr": self.acr,
            "abstain_rate": self.abstain_rate,
        }
        out.update(self.extra)
        return out


def recompute_radii(log: CertifyLog, bound: str, *, sigma: float | None = None) -> NDArray[np.float64]:
    """Each example's radius under ``bound`` (cohen, lecuyer, li), from its ``p_lower``.

    Reference logs carry no ``p_lower``; it is recovered as ``Phi(radius / sigma)`` (up to the
    log's 3-digit rounding). Abstentions keep radius 0.
    """
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
    Needs the ``count``, ``n`` and ``selected`` columns of smoothcert's logs.
    """
    if log.count is None or log.n is None or log.selected is None:
        raise ValueError(f"{log.path} has no count/n/selected columns (a reference log?): projections need them")
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


def summarize(
    logs: Sequence[CertifyLog],
    radii: Sequence[float] | NDArray[np.float64],
    *,
    high_prob: float | None = None,
    bound: str = "cohen",
    sigma: float | None = None,
) -> list[Summary]:
    """Certified accuracy, ACR and abstention rate of each log over ``radii``.

    ``high_prob=gamma`` adds ``certified_accuracy_lower``, the bound of paper App. D, Thm 6 that holds
    with probability ``>= 1 - gamma``; ``bound`` recomputes radii with another guarantee.
    """
    out = []
    for log in logs:
        rad = None if bound == "cohen" else recompute_radii(log, bound, sigma=sigma)
        acc = certified_accuracy(log, radii, radius=rad)
        summary = Summary(
            name=log.name,
            path=log.path,
            examples=log.examples,
            radii=[float(r) for r in radii],
            certified_accuracy=[float(v) for v in acc],
            acr=average_certified_radius(log, radius=rad),
            abstain_rate=float(np.mean(log.predict < 0)) if log.examples else 0.0,
        )
        if bound != "cohen":
            summary.extra["bound"] = bound
        if high_prob is not None:
            alpha = log.alpha if log.alpha is not None else 0.001
            lower = stats.certified_accuracy_lower_bound(acc, max(log.examples, 1), alpha, high_prob)
            summary.extra["certified_accuracy_lower"] = [float(v) for v in np.atleast_1d(lower)]
            summary.extra["gamma"] = high_prob
        out.append(summary)
    return out


# ----------------------------------------------------------------------------- tables


def _best(summaries: Sequence[Summary]) -> list[set[int]]:
    """For each radius, the logs with the highest certified accuracy (rounded to 2 decimals)."""
    best = []
    for j in range(len(summaries[0].radii)):
        vals = [round(s.certified_accuracy[j], 2) for s in summaries]
        top = max(vals)
        best.append({i for i, v in enumerate(vals) if v == top})
    return best


def _cell(s: Summary, j: int) -> str:
    text = f"{s.certified_accuracy[j]:.2f}"
    if "certified_accuracy_lower" in s.extra:
        text += f" (≥{s.extra['certified_accuracy_lower'][j]:.2f})"
    return text


def format_markdown(summaries: Sequence[Summary]) -> str:
    """A Markdown table: one row per log, the best log per radius in bold (as in the paper)."""
    if not summaries:
        return ""
    radii = summaries[0].radii
    best = _best(summaries)
    head = "| log | n | " + " | ".join(f"r = {r:g}" for r in radii) + " | ACR | abstain |"
    sep = "|---|---:|" + "---:|" * len(radii) + "---:|---:|"
    lines = [head, sep]
    for i, s in enumerate(summaries):
        cells = [
            f"**{_cell(s, j)}**" if (i in best[j] and len(summaries) > 1) else _cell(s, j) for j in range(len(radii))
        ]
        lines.append(f"| {s.name} | {s.examples} | " + " | ".join(cells) + f" | {s.acr:.3f} | {s.abstain_rate:.2f} |")
    return "\n".join(lines) + "\n"


def format_latex(summaries: Sequence[Summary]) -> str:
    """A booktabs LaTeX table, best per radius in bold."""
    if not summaries:
        return ""
    radii = summaries[0].radii
    best = _best(summaries)
    cols = "l" + "r" * (len(radii) + 2)
    lines = [
        f"\\begin{{tabular}}{{{cols}}}",
        "\\toprule",
        "Log & " + " & ".join(f"$r = {r:g}$" for r in radii) + " & ACR & Abstain \\\\",
        "\\midrule",
    ]
    for i, s in enumerate(summaries):
        cells = [
            f"\\textbf{{{_cell(s, j)}}}" if (i in best[j] and len(summaries) > 1) else _cell(s, j)
            for j in range(len(radii))
        ]
        name = s.name.replace("_", "\\_").replace("σ", "$\\sigma$")
        lines.append(f"{name} & " + " & ".join(cells) + f" & {s.acr:.3f} & {s.abstain_rate:.2f} \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines).replace("≥", "$\\geq$") + "\n"


def format_csv(summaries: Sequence[Summary]) -> str:
    """Long-format CSV: one row per (log, radius)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    lower = any("certified_accuracy_lower" in s.extra for s in summaries)
    w.writerow(
        ["name", "path", "examples", "radius", "certified_accuracy"]
        + (["certified_accuracy_lower"] if lower else [])
        + ["acr", "abstain_rate"]
    )
    for s in summaries:
        for j, r in enumerate(s.radii):
            extra = [s.extra["certified_accuracy_lower"][j]] if lower else []
            w.writerow([s.name, s.path, s.examples, r, s.certified_accuracy[j], *extra, s.acr, s.abstain_rate])
    return buf.getvalue()


def format_json(summaries: Sequence[Summary]) -> str:
    return json.dumps([s.to_json() for s in summaries], indent=2) + "\n"


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
