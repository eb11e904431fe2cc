"""Crash-safe training checkpoints, shared by the classifier loop and the denoiser loop.

One checkpoint is one file, ``checkpoint.safetensors``, holding the weights (``model.<name>``), the
optimizer's per-parameter state (``optim.<index>.<name>``: SGD's momentum buffers, Adam's moments
and step) and, in the safetensors metadata under a key of the run's kind, one JSON object:
``{"epoch", <identity field>, "log", "param_groups"}``. The identity holds the settings that change
the trained weights, and the log holds every row written so far.

Saving (:func:`save_checkpoint`) writes ``checkpoint.safetensors.tmp`` and renames it over the old
file (:func:`smoothcert.io.files.commit_file`): that rename is the commit point. ``train_log.tsv``
is then rewritten from the checkpoint's rows, so after a crash at any step the log, rewritten
again on resume (:func:`write_log`), holds each finished epoch exactly once.

Resuming (:func:`resume`) refuses a checkpoint whose identity differs from the run's, naming each
differing field with both values. Identity fields that older checkpoints lack take the value they
implied (``CheckpointFormat.added_later``). A checkpoint written by smoothcert <= 0.1 (weights
without metadata, plus ``checkpoint.json``; log rows from ``train_log.tsv``, the last row of an
epoch written twice winning) is read too, and its ``checkpoint.json`` is removed at the next save.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothcert.core.checks import check_int, check_positive
from smoothcert.core.errors import CheckpointError
from smoothcert.io.files import commit_file

__all__ = [
    "CheckpointFormat",
    "check_run_settings",
    "read_checkpoint",
    "resume",
    "save_checkpoint",
    "write_log",
]

_NAME = "checkpoint.safetensors"
_LEGACY = "checkpoint.json"  # smoothcert <= 0.1 kept the metadata beside the weights
_LOG = "train_log.tsv"


@dataclass(frozen=True)
class CheckpointFormat:
    """What distinguishes one kind of run's checkpoints from another's.

    Attributes:
        key: the safetensors metadata key holding the JSON object.
        identity_field: the JSON field holding the identity (``"config"`` for training runs).
        log_header: the header line of ``train_log.tsv`` (tab-separated column names).
        what: the kind of run, for messages (``"training run"``).
        added_later: identity fields that older checkpoints lack, with the value they implied.
    """

    key: str
    identity_field: str
    log_header: str
    what: str
    added_later: Mapping[str, Any] = field(default_factory=dict)


def check_run_settings(config: Any) -> None:
    """Validate the settings every checkpointed run has: ``epochs``, ``batch``, ``lr_step`` (ints >= 1),
    ``workers``, ``seed`` (ints >= 0), ``train_limit`` (None or an int >= 1) and ``lr`` (> 0)."""
    for name in ("epochs", "batch", "lr_step"):
        check_int(name, getattr(config, name), 1)
    check_int("workers", config.workers, 0)
    check_int("seed", config.seed, 0)
    if config.train_limit is not None:
        check_int("train_limit", config.train_limit, 1)
    check_positive("lr", config.lr)


def write_log(out: Path, fmt: CheckpointFormat, rows: list[str]) -> None:
    """Replace ``out/train_log.tsv`` with the header and ``rows``, atomically."""
    tmp = out / f"{_LOG}.tmp"
    tmp.write_text("\n".join([fmt.log_header, *rows]) + "\n")
    commit_file(tmp, out / _LOG)


def save_checkpoint(
    out: Path,
    fmt: CheckpointFormat,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    identity: Mapping[str, Any],
    log: list[str],
    row: Sequence[str] | None = None,
) -> None:
    """Commit the checkpoint of ``epoch`` (one rename), then rewrite the log from its rows.

    ``row``, when given, holds the finished epoch's formatted log fields after the epoch number;
    the row is appended to ``log`` (in place) before saving.
    """
    from safetensors.torch import save_file

    if row is not None:
        log.append("\t".join([str(epoch), *row]))

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    for i, per_param in state["state"].items():
        for key, value in per_param.items():
            if value is not None:
                tensors[f"optim.{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {"epoch": epoch, fmt.identity_field: dict(identity), "log": log, "param_groups": state["param_groups"]}
    tmp = out / f"{_NAME}.tmp"
    save_file(tensors, str(tmp), metadata={fmt.key: json.dumps(meta)})
    commit_file(tmp, out / _NAME)
    (out / _LEGACY).unlink(missing_ok=True)  # a legacy checkpoint's metadata, stale from now on
    write_log(out, fmt, log)


def read_checkpoint(out: Path, fmt: CheckpointFormat) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """``(meta, tensors)`` of the checkpoint in ``out``, or None when there is none."""
    from safetensors import SafetensorError, safe_open

    path = out / _NAME
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            stored = (fh.metadata() or {}).get(fmt.key)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint ({e}); use another --out") from None
    if stored is not None:
        return dict(json.loads(stored)), tensors
    legacy = out / _LEGACY
    if not legacy.exists():
        raise CheckpointError(
            f"{str(path)!r} is not a smoothcert {fmt.what} checkpoint (no {fmt.key!r} metadata); use another --out"
        )
    meta = dict(json.loads(legacy.read_text()))
    rows: dict[int, str] = {}
    log_path = out / _LOG
    if log_path.exists():
        for line in log_path.read_text().splitlines()[1:]:
            first = line.partition("\t")[0]  # the epoch field of a legacy log row
            if first.isdigit() and int(first) <= int(meta["epoch"]):
                rows[int(first)] = line
    meta["log"] = [rows[e] for e in sorted(rows)]
    return meta, tensors


def resume(
    out: Path,
    fmt: CheckpointFormat,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    identity: Mapping[str, Any],
    epochs: int,
    upgrade: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> tuple[int, list[str]]:
    """Restore the last finished epoch from ``out`` into ``model`` and ``optimizer``.

    Returns ``(epoch, log rows)``, ``(0, [])`` when there is no checkpoint. ``upgrade`` maps the
    stored weight names onto the model's (for renamed layers). Raises
    :class:`~smoothcert.core.errors.CheckpointError` when the checkpoint belongs to another
    configuration or holds more than ``epochs`` epochs.
    """
    found = read_checkpoint(out, fmt)
    if found is None:
        return 0, []
    meta, tensors = found
    stored = dict(meta.get(fmt.identity_field) or {})
    keys = list(identity) + [k for k in stored if k not in identity]
    old = {k: stored.get(k, fmt.added_later.get(k)) for k in keys}
    diff = {k: (old[k], identity.get(k)) for k in keys if old[k] != identity.get(k)}
    if diff:
        details = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise CheckpointError(f"{out} holds a {fmt.what} with a different configuration ({details}); use another --out")
    epoch = int(meta["epoch"])
    if epoch > epochs:
        raise CheckpointError(f"{out} already holds {epoch} trained epochs, more than epochs={epochs}")
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(upgrade(weights) if upgrade is not None else weights)
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, key = k.split(".", 2)
            per_param.setdefault(int(i), {})[key] = v
    groups = meta.get("param_groups") or optimizer.state_dict()["param_groups"]  # older files: the run's own
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    return epoch, [str(r) for r in meta["log"]]
