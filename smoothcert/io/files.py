"""Durable file operations: every checkpoint and log file is written to a temporary name,
flushed to disk and renamed over the old one, so a crash leaves either the old or the new file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["commit_file", "sha256_file"]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms that cannot open a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(tmp: Path, dest: Path) -> None:
    """Make ``tmp`` durable, atomically rename it to ``dest``, and make the rename durable."""
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
