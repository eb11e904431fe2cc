"""Resuming logs written by an earlier smoothcert: which identity keys they lack, and which of them
this version refuses to continue (the one home of that rule for ``certify`` and ``predict``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smoothcert.core.errors import ConfigError
from smoothcert.io.logs import read_sidecar
from smoothcert.smoothing.noises import Gaussian, Noise

__all__ = [
    "FLOAT32_SAMPLER",
    "FLOAT64_SAMPLER",
    "LEGACY",
    "SOUND_RADII",
    "check_legacy_resume",
    "float64_stream_refusal",
    "float_sampler_version",
]

# Identity keys a log written before they were recorded lacks, with the value they then had:
# 0.2 recorded "sound"/"grid" only in sound mode, so a 0.2 identity without them is float mode.
LEGACY = {"sound": False, "grid": None}
# The version of sound-mode radii the rows hold: 2 since 0.3 (the grid offset is subtracted from
# the radius); a 0.2 sound-mode log (no "sound_radii") holds the earlier radii and is not resumed.
SOUND_RADII = 2
# The identity's "sampler": 2 for 0.2's float64 samplers, which sound mode's stream leaves alone
# too; 3 for float mode's float32 Gaussian draws (0.3, Gaussian(draws="float32")).
FLOAT64_SAMPLER, FLOAT32_SAMPLER = 2, 3


def float_sampler_version(noise: Noise, *, sound: bool) -> int:
    """The ``"sampler"`` a log's identity records for ``noise`` in sound or float mode."""
    if not sound and isinstance(noise, Gaussian) and noise.draws == "float32":
        return FLOAT32_SAMPLER
    return FLOAT64_SAMPLER


def float64_stream_refusal(out: Path, old: dict[str, Any], identity: dict[str, Any]) -> str | None:
    """Why a float-mode log of float64 Gaussian draws cannot be continued by ``identity``, or None.

    A float-mode log holds 0.2's float64 stream when its identity records ``"sampler": 2`` (certify,
    predict) or no ``"sampler"`` at all (the dense tasks, which record it only for float32 draws);
    a run recording :data:`FLOAT32_SAMPLER` would append rows of another stream. The message names
    the flags that continue it (one home for certify, predict and the dense tasks).
    """
    if old.get("sound") is True or old.get("sampler", FLOAT64_SAMPLER) != FLOAT64_SAMPLER:
        return None
    if identity.get("sampler") != FLOAT32_SAMPLER:
        return None
    return (
        f"{out} was written in float mode with float64 Gaussian draws (0.2's stream), and float mode now draws "
        "them in float32: pass --float-noise --float-draws float64 to continue it with its noise stream, or "
        "--overwrite / another --out"
    )


def check_legacy_resume(out: Path, identity: dict[str, Any]) -> None:
    """Refuse, naming the flag that continues it, a log of an earlier version whose rows this run would not write.

    A 0.2 float-mode log (its identity has no ``"sound"``) continues only in float mode with float64
    draws (``--float-noise --float-draws float64``, under which :data:`LEGACY` makes the identities
    equal), as does a 0.3 float-mode log (``"sampler": 2``); a 0.2 sound-mode
    log (``"sound"`` but no ``"sound_radii"``) holds radii computed without the grid offset and is
    not continued. Other differences are :func:`~smoothcert.io.logs.read_resumable`'s to report.
    """
    old = (read_sidecar(out) or {}).get("identity") if out.exists() else None
    if not isinstance(old, dict) or old.get("command") not in ("certify", "predict"):
        return
    if "sound" not in old and identity.get("sound"):
        raise ConfigError(
            f"{out} was written in float mode by smoothcert 0.2 (its identity has no 'sound'), and certify and "
            "predict now run in sound mode by default: pass --float-noise --float-draws float64 to continue it in "
            "float mode with its noise stream, or --overwrite / another --out for a sound-mode log"
        )
    refusal = float64_stream_refusal(out, old, identity)
    if refusal is not None:
        raise ConfigError(refusal)
    if old.get("sound") is True and "sound_radii" not in old and identity.get("sound"):
        raise ConfigError(
            f"{out} was written in sound mode by smoothcert 0.2, whose sound radii did not subtract the grid "
            "offset; its rows would mix with this version's: pass --overwrite or choose another --out"
        )
