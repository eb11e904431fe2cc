"""Model files: a directory holding ``model.safetensors`` (the weights) and ``model.json``
(architecture, data set, training sigma, normalization, accuracies, versions).

Nothing here unpickles: weights are safetensors, metadata JSON, and pickle/``torch.save`` files
are recognised by their first bytes and refused with the way to convert them.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable, Mapping
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothcert.core.errors import CheckpointError, ConfigError
from smoothcert.io.files import commit_file, sha256_file
from smoothcert.models.architectures import build_model, upgrade_legacy_keys
from smoothcert.models.denoisers import DnCNN

__all__ = [
    "CheckpointError",
    "check_compatible",
    "checkpoint_sha256",
    "load_denoiser",
    "load_model",
    "save_model",
    "state_dict_problems",
    "versions",
]


def versions() -> dict[str, str]:
    """Versions of the software that produced a result, for provenance records.

    Read from the installed distributions' metadata, not by importing them (importing torchvision
    alone took about a second of every CLI run's start-up); ``"not installed"`` when absent.
    """
    import numpy
    import scipy

    from smoothcert import __version__

    try:
        vision = _metadata.version("torchvision")
    except _metadata.PackageNotFoundError:
        vision = "not installed"
    return {
        "smoothcert": __version__,
        "torch": torch.__version__,
        "torchvision": vision,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }


def save_model(directory: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory`` (atomically, via rename).

    ``meta`` must be strict JSON (no NaN or infinity): :class:`CheckpointError` otherwise, raised
    before anything is written.
    """
    from safetensors.torch import save_model as _save

    try:  # strict JSON: a NaN or infinity would make model.json unreadable by other tools
        text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False)
    except ValueError:
        bad = sorted(k for k, v in meta.items() if isinstance(v, float) and not math.isfinite(v))
        fields = ", ".join(bad) or "nested"
        raise CheckpointError(f"model.json cannot hold non-finite values (fields: {fields})") from None
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "model.safetensors.tmp"
    _save(model, str(tmp), force_contiguous=True)  # channels-last weights are saved in standard layout
    commit_file(tmp, d / "model.safetensors")
    meta_tmp = d / "model.json.tmp"
    meta_tmp.write_text(text + "\n")
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


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def state_dict_problems(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *, optional: tuple[str, ...] = ()
) -> list[str]:
    """What keeps ``source`` from loading into a model whose state dict is ``target``, one phrase each.

    Missing keys (absent from ``source``; keys ending in one of ``optional`` may be), unexpected keys
    (absent from ``target``) and shape mismatches, each with a count and the first three names.
    Empty when ``source`` fits exactly.
    """
    missing = sorted(k for k in target if k not in source and not k.endswith(optional))
    unexpected = sorted(k for k in source if k not in target)
    mismatched = sorted(k for k in source if k in target and tuple(source[k].shape) != tuple(target[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key{'s' * (len(missing) > 1)} ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key{'s' * (len(unexpected) > 1)} ({_names(unexpected)})")
    if mismatched:
        shapes = [f"{k} (checkpoint {list(source[k].shape)}, model {list(target[k].shape)})" for k in mismatched]
        problems.append(f"{len(mismatched)} shape mismatch{'es' * (len(mismatched) > 1)}: {_names(shapes)}")
    return problems


def _load_weights(
    model: nn.Module,
    weights: Path,
    device: torch.device | str,
    upgrade: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None,
) -> None:
    """Load ``weights`` into ``model`` exactly, then put it on ``device`` in eval mode.

    A file safetensors cannot read, or whose tensors do not fit the model (missing or unexpected
    keys, other shapes), raises :class:`CheckpointError` listing what differs.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"corrupt checkpoint {str(weights)!r}: {first}") from None
    if upgrade is not None:
        state = upgrade(state)
    problems = state_dict_problems(state, model.state_dict())
    if problems:
        raise CheckpointError(f"checkpoint {str(weights)!r} does not fit its model.json: " + "; ".join(problems))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # e.g. a dtype torch cannot copy
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"corrupt checkpoint {str(weights)!r}: {first}") from None
    model.to(device).eval()


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint directory written by :func:`save_model`; returns ``(model, meta)`` in eval mode.

    Reads only JSON and safetensors: nothing is unpickled.
    """
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
            arch_params=meta.get("arch_params"),
        )
    except (json.JSONDecodeError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise CheckpointError(f"corrupt model.json in {str(path)!r}: {e}") from None
    _load_weights(model, weights, device, lambda state: upgrade_legacy_keys(str(meta["arch"]), state))
    return model, meta


def load_denoiser(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a denoiser written by :func:`smoothcert.training.denoiser.train_denoiser`, in eval mode.

    Returns ``(denoiser, meta)``.
    """
    weights, meta_path = _checkpoint_paths(path)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("kind") != "denoiser":
            raise CheckpointError(f"{str(path)!r} is not a denoiser (train one with 'smoothcert train-denoiser')")
        model = DnCNN(int(meta["input_shape"][0]), depth=int(meta["depth"]), width=int(meta["width"]))
    except (json.JSONDecodeError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise CheckpointError(f"corrupt model.json in {str(path)!r}: {e}") from None
    _load_weights(model, weights, device, None)
    return model, meta


def check_compatible(denoiser_meta: dict[str, Any], classifier_meta: dict[str, Any]) -> None:
    """Raise ConfigError unless the denoiser's output shape is the classifier's input shape."""
    d, c = list(denoiser_meta["input_shape"]), list(classifier_meta["input_shape"])
    if d != c:
        raise ConfigError(
            f"the denoiser takes inputs of shape {d} but the classifier takes {c}; they cannot be composed"
        )
