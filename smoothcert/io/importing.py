"""Import published base classifiers into smoothcert's checkpoint format, without unpickling code.

Sources understood:

``cohen2019``
    What the 2019 reference's training script saves (``checkpoint.pth.tar``), also used by its
    descendants: a dict with ``arch`` (``cifar_resnet20``, ``cifar_resnet110``, ``resnet50``),
    ``epoch``, ``optimizer`` and ``state_dict`` of ``Sequential(NormalizeLayer, net)``, so every
    key starts with ``1.``, and ``module.`` follows wherever ``DataParallel`` wrapped the network.
``torch-state-dict``
    A plain ``state_dict`` of a network (any torchvision classifier, or smoothcert's own), or a dict
    holding one under ``state_dict``, ``model_state_dict``, ``model`` or ``net``.
``safetensors``
    A ``.safetensors`` file of such a ``state_dict``.
``torchvision-weights``
    ``--weights NAME`` (``IMAGENET1K_V2``...): torchvision's pretrained file, read from torch's
    local cache (``torch.hub.get_dir()/checkpoints``, moved by ``TORCH_HOME``); never downloaded.

Files are read with safetensors or ``torch.load(weights_only=True)`` only: a file that needs
more (arbitrary Python objects, which could run code while being unpickled) is refused.
Every tensor of the source must be used and every parameter and buffer of the network must come
from it with the same shape (BatchNorm's ``num_batches_tracked`` counter, unused in evaluation,
may be absent). The normalization layer is rebuilt from the data set's mean and std, as the
2019 reference did (its ``NormalizeLayer`` holds no saved tensors).
"""

from __future__ import annotations

import math
import pickle
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from smoothcert.core.checks import check_sigma
from smoothcert.core.errors import CheckpointError, ConfigError
from smoothcert.io.checkpoints import save_model, state_dict_problems, versions
from smoothcert.io.files import sha256_file
from smoothcert.models.architectures import RepeatChannels, build_model, upgrade_legacy_keys

__all__ = ["FORMATS", "cached_weights_path", "import_checkpoint"]

FORMATS = ("cohen2019", "torch-state-dict", "safetensors", "torchvision-weights")

_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net")
_SCALAR_INFO = ("arch", "epoch", "dataset", "sigma", "noise_sd")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's convention: NAME-<sha256 prefix>.EXT


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length, then a JSON object."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def _read(path: Path) -> Any:
    """The file's content via safetensors or ``torch.load(weights_only=True)``; never a full unpickle."""
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {_first_line(e)}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # every failure of the restricted reader becomes one line
        text = " ".join(str(e).split())
        if isinstance(e, pickle.UnpicklingError) or "weights only load failed" in text.lower():
            found = re.search(r"(Unsupported (?:global: GLOBAL|class|operand) [\w.]+)", text)
            reason = found.group(1) if found else "it holds Python objects other than tensors and plain containers"
            raise CheckpointError(
                f"{str(path)!r} cannot be read with torch.load(weights_only=True) ({reason}); smoothcert never "
                "unpickles it unsafely. If you trust the file, re-save just its tensors: "
                "torch.save(checkpoint['state_dict'], 'weights.pth')"
            ) from None
        raise CheckpointError(f"{str(path)!r} is not a readable torch checkpoint: {_first_line(e)}") from None


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _find_state(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """``(state_dict, scalar info such as arch and epoch, format)`` of a loaded checkpoint."""
    if _is_tensor_dict(obj):
        return dict(obj), {}, "torch-state-dict"
    if isinstance(obj, Mapping):
        for key in _STATE_KEYS:
            if key in obj and _is_tensor_dict(obj[key]):
                info = {
                    k: obj[k]
                    for k in _SCALAR_INFO
                    if k in obj and isinstance(obj[k], (str, int, float)) and not isinstance(obj[k], bool)
                }
                fmt = "cohen2019" if key == "state_dict" and isinstance(obj.get("arch"), str) else "torch-state-dict"
                return dict(obj[key]), info, fmt
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointError(f"{str(path)!r} holds no state dict of tensors (top-level keys: {keys})")
    raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict of tensors")


def _strip_wrappers(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Network-relative keys: drop ``module.`` (DataParallel) and the ``1.`` of ``Sequential(Normalize, net)``.

    Returns ``(network tensors, normalization-layer tensors)``; the latter are the ``0.*`` tensors of
    a wrapped model (smoothcert's own ``0.mean``/``0.std``; the 2019 layer saved none).
    """
    state = {re.sub(r"(^|\.)module\.", r"\1", k): v for k, v in state.items()}
    wrapper = {k for k in state if not k.startswith("1.")}
    if wrapper <= {"0.mean", "0.std"} and len(wrapper) < len(state):
        norm = {k[2:]: v for k, v in state.items() if k.startswith("0.")}
        return {k[2:]: v for k, v in state.items() if k.startswith("1.")}, norm
    return state, {}


def _match(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """``source`` cast to ``target``'s dtypes, after checking it supplies exactly ``target``'s tensors."""
    problems = state_dict_problems(source, target, optional=("num_batches_tracked",))
    if problems:
        raise CheckpointError(f"the checkpoint does not fit {what}: " + "; ".join(problems))
    out = {k: v.to(target[k].dtype) for k, v in source.items()}
    for k in target:
        out.setdefault(k, target[k])  # only num_batches_tracked, unused in eval mode
    return out


def _hash_prefix(path: Path) -> str | None:
    found = _HASH_IN_NAME.search(path.name)
    return found.group(1) if found and found.group(1) else None


def cached_weights_path(arch: str, weights: str) -> tuple[Path, Any]:
    """Where torch's cache keeps torchvision's pretrained ``weights`` of ``arch``, and the weights enum.

    The cache is ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``); the file name
    is the last part of the weights' download URL. Nothing is downloaded.
    """
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise ConfigError(
            f"arch {arch!r} has no torchvision pretrained weights (--weights needs a torchvision model)"
        ) from None
    short = weights.rsplit(".", 1)[-1]
    if short == "DEFAULT":
        w = enum.DEFAULT
    elif short in enum.__members__:
        w = enum[short]
    else:
        raise ConfigError(f"unknown weights {weights!r} for {arch}; choose one of: {', '.join(enum.__members__)}")
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(w.url).path).name, w


def _recorded_sigma(info: Mapping[str, Any], path: Path) -> float | None:
    """The training noise level the checkpoint records (``sigma`` or ``noise_sd``), validated.

    A finite number >= 0 (0: trained without noise, as ``smoothcert train --sigma 0`` does); anything
    else (NaN, a negative or infinite value, a string) raises :class:`CheckpointError` naming the field.
    """
    for name in ("sigma", "noise_sd"):
        if name in info:
            value = info[name]
            try:
                v = float(value)
            except (TypeError, ValueError):
                v = math.nan
            if not (math.isfinite(v) and v >= 0):
                raise CheckpointError(
                    f"{str(path)!r} records {name} = {value!r}, not a noise level (a finite number >= 0); "
                    "fix the file or re-save its state dict alone and pass --sigma"
                )
            return v
    return None


def _hint(path: Path | None, pattern: str) -> str:
    """A value the source's path suggests (the 2019 release's ``models/cifar10/resnet110/noise_0.25/``)."""
    if path is None:
        return ""
    for part in reversed(path.resolve().parts):
        found = re.fullmatch(pattern, part)
        if found:
            return f" (the path suggests {found.group(1)})"
    return ""


def import_checkpoint(
    src: str | Path | None,
    out: str | Path,
    *,
    arch: str | None = None,
    dataset: str | None = None,
    sigma: float | None = None,
    weights: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert a published checkpoint into a smoothcert model directory (``model.safetensors`` + ``model.json``).

    ``src`` is a ``torch.save`` file (2019 reference format or a plain ``state_dict``) or a
    ``.safetensors`` file; or pass ``weights`` (with ``arch``) for torchvision's pretrained weights
    from torch's local cache instead. ``arch``, ``dataset`` and ``sigma`` (the training noise level,
    certify's default) supply what the checkpoint does not record; where it does, they must agree.
    The model is built as ``Normalize(dataset mean, std)`` then ``arch``, so it takes ``[0, 1]``
    pixels like every smoothcert model. Returns the ``model.json`` content, which records the
    source's sha256 and format. Raises :class:`~smoothcert.core.errors.CheckpointError` (a ValueError)
    for a file that needs unsafe unpickling or that does not fit the architecture exactly.
    """
    from smoothcert.io.data import get_spec

    if src is not None and weights is not None:
        raise ConfigError(f"give a checkpoint file or --weights, not both (got {str(src)!r} and {weights!r})")
    if src is None and weights is None:
        raise ConfigError("nothing to import: give a checkpoint file or --weights NAME")
    if sigma is not None:
        sigma = check_sigma(sigma)
    out_dir = Path(out)
    if (out_dir / "model.safetensors").exists() and not overwrite:
        raise ConfigError(f"{str(out_dir)!r} already holds a model; pass --overwrite to replace it")

    weights_enum: Any = None
    if weights is not None:
        if arch is None:
            raise ConfigError("--weights needs --arch (the torchvision model the weights belong to)")
        path, weights_enum = cached_weights_path(arch, weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"{weights_enum} is not in torch's cache: download {weights_enum.url} yourself and put it at "
                f"{path} (set TORCH_HOME to use another cache); smoothcert never downloads"
            )
    else:
        path = Path(str(src))
        if path.is_dir():
            raise ConfigError(
                f"checkpoint {str(src)!r} is a directory: give the checkpoint file (e.g. checkpoint.pth.tar)"
            )
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(src)!r} does not exist")

    digest = sha256_file(path)
    if weights_enum is not None:
        prefix = _hash_prefix(path)
        if prefix and not digest.startswith(prefix):
            raise CheckpointError(
                f"{str(path)!r} has sha256 {digest[:16]}..., not the {prefix} its name promises: "
                f"a corrupt or different file; replace it with {weights_enum.url}"
            )
    state, info, fmt = _find_state(_read(path), path)
    if fmt == "torch-state-dict" and _is_safetensors(path):
        fmt = "safetensors"
    if weights_enum is not None:
        fmt = "torchvision-weights"

    def agree(name: str, given: Any, recorded: Any) -> Any:
        if given is not None and recorded is not None and given != recorded:
            raise ConfigError(f"the checkpoint says {name} {recorded!r} but --{name} is {given!r}")
        return given if given is not None else recorded

    arch = agree("arch", arch, info.get("arch"))
    if arch is None:
        raise ConfigError("the checkpoint does not say its architecture: pass --arch (e.g. cifar_resnet110, resnet50)")
    if dataset is None and weights_enum is not None and str(weights_enum.name).startswith("IMAGENET1K"):
        dataset = "imagenet"
    dataset = agree("dataset", dataset, info.get("dataset"))
    if dataset is None:
        hint = _hint(path, r"(cifar10|imagenet)")
        raise ConfigError(f"the checkpoint does not say its data set: pass --dataset{hint}")
    sigma = agree("sigma", sigma, _recorded_sigma(info, path))
    if sigma is None:
        raise ConfigError(
            "the checkpoint does not say its training noise level: pass --sigma" + _hint(path, r"noise_([0-9.]+)")
        )
    spec = get_spec(dataset)
    if weights_enum is not None and len(weights_enum.meta.get("categories", [])) != spec.num_classes:
        raise ConfigError(
            f"{weights_enum} has {len(weights_enum.meta['categories'])} classes, "
            f"data set {dataset!r} has {spec.num_classes}"
        )

    model = build_model(
        arch, num_classes=spec.num_classes, in_channels=spec.input_shape[0], mean=spec.mean, std=spec.std
    )
    net: nn.Module = model[1]  # type: ignore[index]
    if isinstance(net, nn.Sequential) and isinstance(net[0], RepeatChannels):
        net = net[1]
    source, norm = _strip_wrappers(state)
    source = upgrade_legacy_keys(arch, source)
    for name, expected in (("mean", spec.mean), ("std", spec.std)):
        if name in norm:
            saved = norm.pop(name).flatten().double()
            if saved.shape != (len(expected),) or not torch.allclose(saved, torch.tensor(expected).double(), atol=1e-6):
                raise CheckpointError(
                    f"the checkpoint's normalization {name} {saved.tolist()} is not {dataset!r}'s {list(expected)}"
                )
    if norm:
        raise CheckpointError(
            f"the checkpoint does not fit {arch}: unexpected normalization tensors ({', '.join(sorted(norm))})"
        )
    what = f"{arch} with {spec.num_classes} classes ({dataset})"
    net.load_state_dict(_match(source, net.state_dict(), what), strict=True)
    model.eval()
    with torch.no_grad():
        logits = model(torch.zeros(1, *spec.input_shape))
    if tuple(logits.shape) != (1, spec.num_classes) or not bool(torch.isfinite(logits).all()):
        raise CheckpointError(f"the imported {arch} gives logits of shape {list(logits.shape)} with non-finite values")

    meta: dict[str, Any] = {
        "arch": arch,
        "dataset": dataset,
        "num_classes": spec.num_classes,
        "input_shape": list(spec.input_shape),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "sigma": sigma,
        "source": {
            "path": str(path.resolve()),
            "sha256": digest,
            "format": fmt,
            "tensors": len(state),
            "imported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **{f"checkpoint_{k}": v for k, v in info.items()},
            **({"weights": str(weights_enum), "url": weights_enum.url} if weights_enum is not None else {}),
        },
        "versions": versions(),
    }
    save_model(out_dir, model, meta)
    return meta
