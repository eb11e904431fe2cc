"""Analysis of the dense-task logs written by :mod:`smoothcert.runs.tasks` (torch-free).

Segmentation (Fischer et al. 2021, Sec. 6 report the same quantities): per log (one ``tau``,
hence one radius) the certified pixel accuracy (certified and correct pixels over all pixels),
the abstain rate, and the mean IoU over classes from data-set-wide pixel counts, either with
abstentions counted as errors (``miou``) or over certified pixels only (``miou_certified``);
against radius, either one row per log or the envelope over ``tau`` (at each radius the best
log whose radius reaches it). Localization (Chiang et al. 2020, Sec. 5): per log (one radius)
the fraction of images whose worst-case IoU with the ground truth (or with the clean
prediction) is ``>= t``, and the mean certified interval width. Definitions: ``docs/tasks.md`` §7.

Every summary carries ``mode``, the noise the log was certified with (``sound, grid 255`` or
``float``, from its sidecar's identity; logs written before 0.3 have float noise), and
:func:`markdown_table` always shows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from smoothcert.core.errors import ResultFileError
from smoothcert.io.logs import LOCALIZATION_COLUMNS, SEGMENTATION_COLUMNS, read_rows, read_sidecar

__all__ = [
    "LocalizationLog",
    "SegmentationLog",
    "localization_curve",
    "localization_summary",
    "markdown_table",
    "mean_iou",
    "noise_mode",
    "plot_localization",
    "plot_segmentation",
    "read_localization",
    "read_segmentation",
    "segmentation_curve",
    "segmentation_summary",
]


@dataclass(frozen=True)
class SegmentationLog:
    """A segmentation log as arrays, one entry (or row) per image."""

    path: str
    tau: float
    radius: float
    certified_correct: NDArray[np.float64]
    abstain: NDArray[np.float64]
    selected_correct: NDArray[np.float64]
    time: NDArray[np.float64]
    tp: NDArray[np.int64]
    gt: NDArray[np.int64]
    pred: NDArray[np.int64]
    gt_certified: NDArray[np.int64]
    mode: str = "float"


@dataclass(frozen=True)
class LocalizationLog:
    """A localization log as arrays: boxes ``(m, 4)``, IoUs ``(m,)``."""

    path: str
    radius: float
    estimate: NDArray[np.float64]
    lower: NDArray[np.float64]
    upper: NDArray[np.float64]
    truth: NDArray[np.float64]
    iou_clean: NDArray[np.float64]
    iou_truth: NDArray[np.float64]
    est_iou_truth: NDArray[np.float64]
    time: NDArray[np.float64]
    mode: str = "float"


def _single(path: str | Path, name: str, values: NDArray[np.float64]) -> float:
    if len(values) == 0:
        raise ResultFileError(f"{path} has no rows")
    if not np.all(values == values[0]):
        raise ResultFileError(f"{path} mixes several values of {name}: {sorted(set(values.tolist()))}")
    return float(values[0])


def noise_mode(path: str | Path) -> str:
    """The noise a dense-task log was certified with, from its sidecar: ``"sound, grid G"`` or ``"float"``
    (also for a log whose identity records no ``sound``: written before 0.3, with float noise);
    ``"unknown"`` without a sidecar."""
    side = read_sidecar(path)
    if side is None:
        return "unknown"
    identity = side.get("identity", {})
    if identity.get("sound"):
        return f"sound, grid {identity.get('grid')}"
    return "float"


def read_segmentation(path: str | Path) -> SegmentationLog:
    """Read a segmentation log (columns :data:`~smoothcert.io.logs.SEGMENTATION_COLUMNS`)."""
    rows = read_rows(path, SEGMENTATION_COLUMNS)
    col = {name: [r[k] for r in rows] for k, name in enumerate(SEGMENTATION_COLUMNS)}

    def floats(name: str) -> NDArray[np.float64]:
        return np.array([float(v) for v in col[name]], dtype=np.float64)

    def counts(name: str) -> NDArray[np.int64]:
        return np.array([[int(c) for c in v.split(",")] for v in col[name]], dtype=np.int64).reshape(len(rows), -1)

    return SegmentationLog(
        path=str(path),
        tau=_single(path, "tau", floats("tau")),
        radius=_single(path, "radius", floats("radius")),
        certified_correct=floats("certified_correct"),
        abstain=floats("abstain"),
        selected_correct=floats("selected_correct"),
        time=floats("time"),
        tp=counts("tp"),
        gt=counts("gt"),
        pred=counts("pred"),
        gt_certified=counts("gt_certified"),
        mode=noise_mode(path),
    )


def read_localization(path: str | Path) -> LocalizationLog:
    """Read a localization log (columns :data:`~smoothcert.io.logs.LOCALIZATION_COLUMNS`)."""
    rows = read_rows(path, LOCALIZATION_COLUMNS)
    pos = {name: k for k, name in enumerate(LOCALIZATION_COLUMNS)}

    def floats(*names: str) -> NDArray[np.float64]:
        arr = np.array([[float(r[pos[n]]) for n in names] for r in rows], dtype=np.float64).reshape(len(rows), -1)
        return arr[:, 0] if len(names) == 1 else arr

    coords = ("x0", "y0", "x1", "y1")
    return LocalizationLog(
        path=str(path),
        radius=_single(path, "radius", floats("radius")),
        estimate=floats(*(f"est_{c}" for c in coords)),
        lower=floats(*(f"lo_{c}" for c in coords)),
        upper=floats(*(f"hi_{c}" for c in coords)),
        truth=floats(*(f"true_{c}" for c in coords)),
        iou_clean=floats("iou_clean"),
        iou_truth=floats("iou_truth"),
        est_iou_truth=floats("est_iou_truth"),
        time=floats("time"),
        mode=noise_mode(path),
    )


def mean_iou(tp: NDArray[np.int64], truth: NDArray[np.int64], predicted: NDArray[np.int64]) -> float:
    """Mean over classes present (non-empty union) of ``tp / (truth + predicted - tp)``, counts summed over images."""
    tp_s, gt_s, pr_s = (np.asarray(a).sum(axis=0) for a in (tp, truth, predicted))
    union = gt_s + pr_s - tp_s
    present = union > 0
    return float(np.mean(tp_s[present] / union[present])) if present.any() else float("nan")


def segmentation_summary(log: SegmentationLog) -> dict[str, Any]:
    """One log's figures: tau, radius, certified pixel accuracy, abstain rate, mIoUs, time per image, noise mode."""
    return {
        "tau": log.tau,
        "radius": log.radius,
        "images": float(len(log.time)),
        "certified_accuracy": float(log.certified_correct.mean()),
        "abstain": float(log.abstain.mean()),
        "miou": mean_iou(log.tp, log.gt, log.pred),
        "miou_certified": mean_iou(log.tp, log.gt_certified, log.pred),
        "smoothed_accuracy": float(log.selected_correct.mean()),
        "time": float(log.time.mean()),
        "mode": log.mode,
    }


def segmentation_curve(logs: Sequence[SegmentationLog], radii: Sequence[float]) -> list[dict[str, Any]]:
    """Envelope over tau: at each radius ``r`` the summary of the log with ``radius >= r`` and the
    highest certified accuracy (all zeros, abstain 1, where no log reaches ``r``)."""
    summaries = [segmentation_summary(log) for log in logs]
    out: list[dict[str, Any]] = []
    for r in radii:
        reach = [s for s in summaries if s["radius"] >= r]
        if reach:
            best = max(reach, key=lambda s: (s["certified_accuracy"], -s["tau"]))
            out.append({**best, "radius": float(r), "log_radius": best["radius"]})
        else:
            out.append(
                {
                    "radius": float(r),
                    "tau": float("nan"),
                    "certified_accuracy": 0.0,
                    "abstain": 1.0,
                    "miou": 0.0,
                    "mode": ", ".join(sorted({s["mode"] for s in summaries})),
                }
            )
    return out


def localization_summary(log: LocalizationLog, thresholds: Sequence[float] = (0.5, 0.75)) -> dict[str, Any]:
    """One log's figures: radius, certified IoU ``>= t`` with the truth and with the clean prediction,
    the uncertified IoU ``>= t`` of the estimate, mean interval width (box units), time per image,
    noise mode."""
    out: dict[str, Any] = {"radius": log.radius, "images": float(len(log.time))}
    for t in thresholds:
        out[f"certified_iou_truth>={t:g}"] = float(np.mean(log.iou_truth >= t))
        out[f"certified_iou_clean>={t:g}"] = float(np.mean(log.iou_clean >= t))
        out[f"iou_truth>={t:g}"] = float(np.mean(log.est_iou_truth >= t))
    width = log.upper - log.lower
    out["mean_width"] = float(np.mean(width)) if np.all(np.isfinite(width)) else float("inf")
    out["time"] = float(log.time.mean())
    out["mode"] = log.mode
    return out


def localization_curve(logs: Sequence[LocalizationLog], thresholds: Sequence[float] = (0.5,)) -> list[dict[str, Any]]:
    """:func:`localization_summary` of each log, sorted by radius."""
    return [localization_summary(log, thresholds) for log in sorted(logs, key=lambda g: g.radius)]


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, digits: int = 3) -> str:
    """A Markdown table of ``rows`` with the given ``columns`` (numbers rounded to ``digits``).

    Rows that carry ``mode`` (the summaries above) get a ``mode`` column even where ``columns``
    leaves it out, so that a table always says which noise its figures were certified with.
    """
    if any("mode" in r for r in rows) and "mode" not in columns:
        columns = [*columns, "mode"]

    def fmt(v: object) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def plot_segmentation(runs: Mapping[str, Sequence[SegmentationLog]], path: str | Path) -> Path:
    """Certified pixel accuracy (solid) and abstain rate (dashed) against radius, one curve per run
    (e.g. per sigma), each point one tau: the paper-style tau trade-off (Fischer et al. 2021, Fig. 3)."""
    from smoothcert.evaluation.plotting import new_figure, save_figure

    fig, ax = new_figure(figsize=(6.4, 4.2))
    for label, logs in runs.items():
        rows = sorted((segmentation_summary(g) for g in logs), key=lambda r: r["radius"])
        r = [row["radius"] for row in rows]
        line = ax.plot(r, [row["certified_accuracy"] for row in rows], "o-", label=f"{label}: certified accuracy")[0]
        ax.plot(r, [row["abstain"] for row in rows], "s--", color=line.get_color(), label=f"{label}: abstain")
        for row in rows:
            ax.annotate(f"{row['tau']:g}", (row["radius"], row["certified_accuracy"]), fontsize=7)
    ax.set_xlabel("radius (L2)")
    ax.set_ylabel("fraction of pixels")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_localization(
    runs: Mapping[str, Sequence[LocalizationLog]], path: str | Path, *, threshold: float = 0.5
) -> Path:
    """Fraction of scenes with certified IoU ``>= threshold`` with the truth against radius, one curve per run."""
    from smoothcert.evaluation.plotting import new_figure, save_figure

    fig, ax = new_figure(figsize=(6.4, 4.2))
    key = f"certified_iou_truth>={threshold:g}"
    for label, logs in runs.items():
        rows = localization_curve(logs, thresholds=(threshold,))
        ax.plot([row["radius"] for row in rows], [row[key] for row in rows], "o-", label=label)
    ax.set_xlabel("radius (L2)")
    ax.set_ylabel(f"certified IoU >= {threshold:g}")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
