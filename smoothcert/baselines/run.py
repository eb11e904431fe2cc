"""Certify a data set with the Lipschitz-margin baseline: rows in the certify log's first six columns.

:func:`certify_dataset` returns one :class:`BaselineRow` per example with the 2019 reference's
certify columns ``idx label predict radius correct time`` (``predict`` is never an abstention: the
certificate is deterministic, and ``radius`` may be 0), so that a log written from them is read by
``smoothcert analyze`` beside smoothing logs. ``time`` is the example's share of its batch's
forward pass; the one-off cost of the bound is reported separately (:attr:`BaselineRun.bound_seconds`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from smoothcert.baselines.bound import LipschitzBound, double_copy, lipschitz_bound, margin_radius
from smoothcert.core.checks import check_int

__all__ = ["BaselineRow", "BaselineRun", "certify_dataset"]


@dataclass(frozen=True)
class BaselineRow:
    """One example: the certify log's ``idx label predict radius correct time``."""

    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    time: float

    def values(self) -> dict[str, object]:
        """The row as written, by column name (time as ``H:MM:SS.ffffff`` like the reference's logs)."""
        return {
            "idx": self.idx,
            "label": self.label,
            "predict": self.predict,
            "radius": repr(float(self.radius)),
            "correct": self.correct,
            "time": _hms(self.time),
        }


@dataclass(frozen=True)
class BaselineRun:
    """The rows, the Lipschitz bound used (with its per-layer factors) and the seconds it took."""

    rows: tuple[BaselineRow, ...]
    bound: LipschitzBound
    bound_seconds: float


def _hms(seconds: float) -> str:
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h)}:{int(m):02d}:{s:09.6f}"


def certify_dataset(
    model: nn.Module,
    xs: torch.Tensor,
    ys: torch.Tensor,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 256,
    bound: LipschitzBound | None = None,
) -> BaselineRun:
    """Lipschitz-margin certificates (``margin / (sqrt(2) L)``) of ``model`` evaluated in float64 at each ``xs[i]``.

    ``indices`` (default ``0..len(xs)-1``) label the rows; ``bound`` (default: computed here for
    ``xs``'s shape by :func:`lipschitz_bound`) must be a sound bound for ``model``.
    """
    check_int("batch_size", batch_size)
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys must have the same length, got {len(xs)} and {len(ys)}")
    idx = list(range(len(xs))) if indices is None else [int(i) for i in indices]
    if len(idx) != len(xs):
        raise ValueError(f"indices must give one index per example ({len(xs)}), got {len(idx)}")
    t0 = time.perf_counter()
    if bound is None:
        bound = lipschitz_bound(model, tuple(xs.shape[1:]))
    bound_seconds = time.perf_counter() - t0
    net = double_copy(model)
    rows = []
    with torch.no_grad():
        for start in range(0, len(xs), batch_size):
            t = time.perf_counter()
            xb = xs[start : start + batch_size].double()
            predict, radius = margin_radius(net(xb), bound.value)
            per = (time.perf_counter() - t) / len(xb)
            for j in range(len(xb)):
                label = int(ys[start + j])
                rows.append(
                    BaselineRow(
                        idx[start + j], label, int(predict[j]), float(radius[j]), int(int(predict[j]) == label), per
                    )
                )
    return BaselineRun(tuple(rows), bound, bound_seconds)
