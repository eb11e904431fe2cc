"""Model files: a directory holding ``model.safetensors`` (the weights) and ``model.json``
(architecture, data set, training sigma, normalization, accuracies, versions).

Nothing here unpickles: weights are safetensors, metadata JSON, and pickle/``torch.save`` files
are recognised by their first bytes and refused with the way to convert them.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothcert.core.errors import CheckpointError
from smoothcert.io.files import commit_file, sha256_file
from smoothcert.models.architectures import build_model, upgrade_legacy_keys
from smoothcert.models.denoisers import DnCNN

__all__ = ["CheckpointError", "checkpoint_sha256", "load_denoiser", "load_model", "save_model", "versions"]


def versions() -> dict[str, str]:
    """Versions of the software that produced a result, for provenance records."""
    import numpy
    import scipy
    import torchvision

    from smoothcert import __version__

    return {
        "smoothcert": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }


def save_model(directory: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory`` (atomically, via rename)."""
    from safetensors.torch import save_model as _save

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "model.safetensors.tmp"
    _save(model, str(tmp), force_contiguous=True)  # channels-last weights are saved in standard layout
    commit_file(tmp, d / "model.safetensors")
    meta_tmp = d / "model.json.tmp"
    meta_tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    commit_file(meta_tmp, d / "model.json")
    return d


_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, torch.save's zip container


def _checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.is_dir():
        weights, meta = p / "model.safetensors", p / "model.json"
    else:
        weights, meta = p, p.with_name("model.json")
    if not weights.exists():
        if not p.exists():
            raise CheckpointError(f"model {str(path)!r} does not exist")
        raise CheckpointError(f"no model.safetensors in {str(path)!r} (train one with 'smoothcert train')")
    with weights.open("rb") as fh:
        head = fh.read(4)
    if head[:1] == _PICKLE_MAGIC[0] or head == _PICKLE_MAGIC[1]:
        raise CheckpointError(
            f"{str(weights)!r} is a pickle/torch.save file; smoothcert never unpickles checkpoints. "
            "Convert it safely with 'smoothcert import FILE --out DIR' (torch.load with weights_only=True)"
        )
    if not meta.exists():
        raise CheckpointError(f"no model.json beside {str(weights)!r}")
    return weights, meta


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of the weights file that :func:`load_model` reads for ``path`` (a directory or a file)."""
    weights, _ = _checkpoint_paths(path)
    return sha256_file(weights)


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint directory written by :func:`save_model`; returns ``(model, meta)`` in eval mode.

    Reads only JSON and safetensors: nothing is unpickled.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, meta_path = _checkpoint_paths(path)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("kind") == "denoiser":
            raise CheckpointError(
                f"{str(path)!r} is a denoiser, not a classifier; pass it with --denoiser (Python: load_denoiser)"
            )
        model = build_model(
            meta["arch"],
            num_classes=int(meta["num_classes"]),
            in_channels=int(meta["input_shape"][0]),
            mean=meta["mean"],
            std=meta["std"],
        )
    except (json.JSONDecodeError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"corrupt model.json in {str(path)!r}: {e}") from None
    try:
        state = upgrade_legacy_keys(str(meta["arch"]), load_file(str(weights), device=str(device)))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"corrupt checkpoint {str(weights)!r}: {first}") from None
    model.to(device).eval()
    return model, meta


def load_denoiser(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a denoiser written by :func:`smoothcert.training.denoiser.train_denoiser`, in eval mode.

    Returns ``(denoiser, meta)``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, meta_path = _checkpoint_paths(path)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("kind") != "denoiser":
            raise CheckpointError(f"{str(path)!r} is not a denoiser (train one with 'smoothcert train-denoiser')")
        model = DnCNN(int(meta["input_shape"][0]), depth=int(meta["depth"]), width=int(meta["width"]))
    except (json.JSONDecodeError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise CheckpointError(f"corrupt model.json in {str(path)!r}: {e}") from None
    try:
        model.load_state_dict(load_file(str(weights), device=str(device)), strict=True)
    except (SafetensorError, RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"corrupt checkpoint {str(weights)!r}: {first}") from None
    model.to(device).eval()
    return model, meta
