"""Resuming logs written by an earlier smoothcert: which identity keys they lack, and which of them
this version refuses to continue (the one home of that rule for ``certify`` and ``predict``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smoothcert.core.errors import ConfigError
from smoothcert.io.logs import read_sidecar

__all__ = ["LEGACY", "SOUND_RADII", "check_legacy_resume"]

# Identity keys a log written before they were recorded lacks, with the value they then had:
# 0.2 recorded "sound"/"grid" only in sound mode, so a 0.2 identity without them is float mode.
LEGACY = {"sound": False, "grid": None}
# The version of sound-mode radii the rows hold: 2 since 0.3 (the grid offset is subtracted from
# the radius); a 0.2 sound-mode log (no "sound_radii") holds the earlier radii and is not resumed.
SOUND_RADII = 2


def check_legacy_resume(out: Path, identity: dict[str, Any]) -> None:
    """Refuse, naming the flag that continues it, a log of an earlier version whose rows this run would not write.

    A 0.2 float-mode log (its identity has no ``"sound"``) continues only in float mode
    (``--float-noise``, under which :data:`LEGACY` makes the identities equal); a 0.2 sound-mode
    log (``"sound"`` but no ``"sound_radii"``) holds radii computed without the grid offset and is
    not continued. Other differences are :func:`~smoothcert.io.logs.read_resumable`'s to report.
    """
    old = (read_sidecar(out) or {}).get("identity") if out.exists() else None
    if not isinstance(old, dict) or old.get("command") not in ("certify", "predict"):
        return
    if "sound" not in old and identity.get("sound"):
        raise ConfigError(
            f"{out} was written in float mode by smoothcert 0.2 (its identity has no 'sound'), and certify and "
            "predict now run in sound mode by default: pass --float-noise to continue it in float mode, or "
            "--overwrite / another --out for a sound-mode log"
        )
    if old.get("sound") is True and "sound_radii" not in old and identity.get("sound"):
        raise ConfigError(
            f"{out} was written in sound mode by smoothcert 0.2, whose sound radii did not subtract the grid "
            "offset; its rows would mix with this version's: pass --overwrite or choose another --out"
        )
