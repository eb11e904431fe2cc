"""Result logs: TSV files that can be resumed, repaired after a crash, and never lost.

A log starts with the 2019 reference's columns (``idx label predict radius correct time`` for
certify, ``idx label predict correct time`` for predict) followed by smoothcert's extra
columns. Beside ``FILE`` lives ``FILE.json``: the full configuration, model metadata and
versions. Re-running the same command appends after the last complete row; a configuration
that would change the rows is refused; an existing file is only replaced with ``overwrite``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from smoothcert.core.errors import ResultFileError

__all__ = [
    "ADAPTIVE_COLUMNS",
    "ATTACK_COLUMNS",
    "BASELINE_COLUMNS",
    "CERTIFY_COLUMNS",
    "CURVE_COLUMNS",
    "DEEPFOOL_COLUMNS",
    "LOCALIZATION_COLUMNS",
    "PREDICT_COLUMNS",
    "SCHEMAS",
    "SEGMENTATION_COLUMNS",
    "ResultFileError",
    "ResultWriter",
    "as_recorded",
    "format_row",
    "identity_diff",
    "merge_parts",
    "part_path",
    "read_resumable",
    "read_rows",
    "read_sidecar",
    "read_table",
    "sidecar_path",
]

# The column schemas of every log smoothcert writes (their one home).
CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "count", "n", "n0", "p_lower", "selected")
ADAPTIVE_COLUMNS = (
    *("idx", "label", "predict", "radius", "correct", "time"),
    *("n_used", "decision", "stage", "p_upper", "count", "n", "n0", "p_lower", "selected"),
)
# Curve mode (certify --curve): each example's largest certified radius, sampled until the reporting
# grid is settled; reason says why it stopped, decisions lists each grid radius's verdict (c, n, u).
CURVE_COLUMNS = (
    *("idx", "label", "predict", "radius", "correct", "time"),
    *("n_used", "reason", "decisions", "p_upper", "count", "n", "n0", "p_lower", "selected"),
)
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time", "count", "runner_up_count", "n", "pvalue")
ATTACK_COLUMNS = ("idx", "label", "radius", "attack_radius", "delta_norm", "predict", "success", "multiple")
DEEPFOOL_COLUMNS = ("idx", "label", "predict", "correct", "deepfool_norm", "success")
# Dense tasks (smoothcert.runs.tasks): one row per image. Segmentation: fractions of all pixels;
# tp, gt, pred, gt_certified are comma-separated per-class pixel counts (certified and correct,
# true class, certified as the class, true class and certified). Localization: one row per image
# at the log's radius; boxes (x0, y0, x1, y1) in [0, 1].
SEGMENTATION_COLUMNS = (
    *("idx", "certified_correct", "abstain", "radius", "tau", "n", "n0", "time"),
    *("selected_correct", "pixels", "tp", "gt", "pred", "gt_certified"),
)
LOCALIZATION_COLUMNS = (
    *("idx", "radius", "est_x0", "est_y0", "est_x1", "est_y1"),
    *("lo_x0", "lo_y0", "lo_x1", "lo_y1", "hi_x0", "hi_y0", "hi_x1", "hi_y1"),
    *("true_x0", "true_y0", "true_x1", "true_y1", "iou_clean", "iou_truth", "est_iou_truth", "n", "time"),
)
# A deterministic certifier's log (smoothcert baseline): the 2019 reference's certify columns.
BASELINE_COLUMNS = CERTIFY_COLUMNS[:6]
SCHEMAS: dict[str, tuple[str, ...]] = {
    "certify": CERTIFY_COLUMNS,
    "adaptive": ADAPTIVE_COLUMNS,
    "curve": CURVE_COLUMNS,
    "predict": PREDICT_COLUMNS,
    "attack": ATTACK_COLUMNS,
    "deepfool": DEEPFOOL_COLUMNS,
    "segmentation": SEGMENTATION_COLUMNS,
    "localization": LOCALIZATION_COLUMNS,
    "baseline": BASELINE_COLUMNS,
}


def format_row(row: Mapping[str, Any], columns: Sequence[str]) -> str:
    """One TSV line (with its newline) of ``row``, a mapping from column name to value, in the order of ``columns``.

    The row must name exactly the schema's columns: a missing or extra name is a bug in the
    caller (a ``ValueError``, deliberately not a :class:`~smoothcert.core.errors.SmoothcertError`),
    never a silently shifted column. Values are written with ``str`` (a Python float's shortest
    round-trip form), so callers format only what they want rounded (e.g. ``time``).
    """
    if len(row) != len(columns) or any(c not in row for c in columns):
        missing = [c for c in columns if c not in row]
        extra = [k for k in row if k not in columns]
        raise ValueError(f"row does not match the log schema: missing {missing}, unexpected {extra}")
    return "\t".join(str(row[c]) for c in columns) + "\n"


def sidecar_path(path: str | Path) -> Path:
    """``FILE.json`` beside ``FILE``: the configuration a log was written with."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The sidecar of the log at ``path`` as a dict, or None when there is none."""
    side = sidecar_path(path)
    return dict(json.loads(side.read_text())) if side.exists() else None


def _repair(path: Path) -> None:
    """Cut a half-written last line (no trailing newline) left by a crash. Only before appending."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        data = path.read_bytes()
        fh.truncate(data.rfind(b"\n") + 1)


def read_table(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """Header and complete rows of a TSV log; never writes to the file.

    Every row is newline-terminated when written, so a last line without a newline is a row
    torn by a crash (or still being written) and is ignored. Blank lines are skipped.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"log {str(p)!r} does not exist")
    text = p.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if not lines:
        return [], []
    header = lines[0].split("\t")
    rows = [ln.split("\t") for ln in lines[1:]]
    for k, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ResultFileError(f"{p} line {k} has {len(row)} fields, the header has {len(header)}")
    return header, rows


def read_rows(path: str | Path, columns: Sequence[str]) -> list[list[str]]:
    """Rows of a result file after checking its header is ``columns``; read-only (see :func:`read_table`)."""
    header, rows = read_table(path)
    if not header:
        return []
    if tuple(header) != tuple(columns):
        raise ResultFileError(f"{path} has columns {' '.join(header)!r}, expected {' '.join(columns)!r}")
    return rows


_MISSING = object()  # a key absent from one identity differs from the key present with None


def as_recorded(identity: Mapping[str, Any]) -> dict[str, Any]:
    """``identity`` as its sidecar records it: through a JSON round trip (a tuple becomes a list, a path a string).

    Identities are compared in this form only, so a setting held as a tuple compares equal to
    the JSON list a sidecar read back holds (the one home of identity comparison: :func:`identity_diff`).
    """
    return dict(json.loads(json.dumps(dict(identity), sort_keys=True, default=str)))


def identity_diff(old: Mapping[str, Any], new: Mapping[str, Any], *, absent: Mapping[str, Any] | None = None) -> str:
    """The keys on which a recorded identity ``old`` and a run's ``new`` differ (``''`` when equal).

    Both sides are compared as recorded (:func:`as_recorded`). ``absent`` gives the value a key
    missing from ``old`` had when the key was not yet recorded (e.g. ``{"sound": False}`` for
    logs written before sound mode was recorded): such a key compares as that value.
    """
    a = as_recorded({**as_recorded(absent or {}), **old} if absent else old)
    b = as_recorded(new)
    keys = sorted(set(a) | set(b))
    return ", ".join(
        f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in keys if a.get(k, _MISSING) != b.get(k, _MISSING)
    )


def read_resumable(
    path: str | Path, columns: Sequence[str], identity: dict[str, Any], *, absent: Mapping[str, Any] | None = None
) -> list[list[str]]:
    """Rows of an existing result file that may be continued with ``identity``.

    Raises :class:`ResultFileError` when the file has no sidecar or was written with another
    identity (compared by :func:`identity_diff`, with ``absent`` for keys older logs lack).
    """
    p = Path(path)
    meta = sidecar_path(p)
    if not meta.exists():
        raise ResultFileError(
            f"{p} exists without its {meta.name} sidecar; refusing to append to it "
            "(pass --overwrite to replace it, or choose another --out)"
        )
    old = (read_sidecar(p) or {}).get("identity", {})
    diff = identity_diff(old, identity, absent=absent)
    if diff:
        raise ResultFileError(
            f"{p} was written with a different configuration ({diff}); "
            "pass --overwrite to replace it, or choose another --out"
        )
    return read_rows(p, columns)


def _write_sidecar(path: Path, sidecar: dict[str, Any]) -> None:
    """Write ``path``'s sidecar atomically (temporary file, then rename)."""
    meta = sidecar_path(path)
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(meta)


class ResultWriter:
    """Appends rows to a result file, resuming it when it was written with the same ``identity``.

    ``identity`` holds every setting that changes the rows (model, data, sigma, n, seed, ...);
    ``sidecar`` is everything recorded in ``FILE.json`` (it must contain ``identity``);
    ``absent`` as in :func:`identity_diff`.
    """

    def __init__(
        self,
        path: str | Path,
        columns: Sequence[str],
        *,
        sidecar: dict[str, Any],
        overwrite: bool = False,
        absent: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        identity = sidecar["identity"]
        self.rows: list[list[str]] = []
        if self.path.exists() and not overwrite:
            self.rows = read_resumable(self.path, self.columns, identity, absent=absent)
            _repair(self.path)  # only now, appending to a file known to be ours and compatible
            self._fh = self.path.open("a")
            if self.path.stat().st_size == 0:
                self._fh.write("\t".join(self.columns) + "\n")
        else:
            # the old rows go first, then the old sidecar: a crash in between leaves an empty log
            # under the old identity (refused on resume), never old rows under the new identity
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("w")
            self._fh.write("\t".join(self.columns) + "\n")
            self._fh.flush()
            _write_sidecar(self.path, sidecar)
        self.done = {int(r[0]) for r in self.rows}

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows (each a mapping from column name to value, see :func:`format_row`) in one
        write and flush them, so a crash leaves at most one torn line."""
        text = "".join(format_row(row, self.columns) for row in rows)
        self._fh.write(text)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def part_path(path: str | Path, rank: int, world_size: int) -> Path:
    """The part file rank ``rank`` of ``world_size`` writes for the log ``path`` under torchrun."""
    p = Path(path)
    return p.with_name(f"{p.name}.part{rank}-of-{world_size}")


def merge_parts(
    path: str | Path, parts: Sequence[Path], columns: Sequence[str], order: Sequence[int], sidecar: dict[str, Any]
) -> int:
    """Merge per-rank part files (and any rows already in ``path``) into ``path``, ordered as ``order``.

    Written to a temporary file and renamed, so ``path`` is never left half-written; part
    files are removed afterwards. Returns the number of rows written.
    """
    final = Path(path)
    by_idx: dict[int, list[str]] = {}
    sources = ([final] if final.exists() else []) + [p for p in parts if p.exists()]
    for src in sources:
        for row in read_rows(src, columns):
            by_idx.setdefault(int(row[0]), row)
    position = {idx: i for i, idx in enumerate(order)}
    ordered = sorted(by_idx.values(), key=lambda r: (position.get(int(r[0]), len(order)), int(r[0])))
    tmp = final.with_name(final.name + ".tmp")
    tmp.write_text("\t".join(columns) + "\n" + "".join("\t".join(r) + "\n" for r in ordered))
    tmp.replace(final)
    _write_sidecar(final, sidecar)
    for p in parts:
        if p.exists():
            p.unlink()
        side = sidecar_path(p)
        if side.exists():
            side.unlink()
    return len(ordered)
