"""Base-classifier architectures, and checkpoints that never go through pickle.

Every model built here starts with its dataset's per-channel normalization, so it takes
``[0, 1]`` pixels and the smoothing noise lives in pixel space (MATH.md §1).

Checkpoints are a directory holding ``model.safetensors`` (the weights) and ``model.json``
(architecture, data set, training sigma, normalization, accuracies, versions).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "Normalize",
    "build_model",
    "checkpoint_sha256",
    "cifar_resnet",
    "load_model",
    "save_model",
    "small_cnn",
    "versions",
]


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or not in smoothcert's format."""


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the first layer of every model built here."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def small_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A small convolutional network for 28x28 inputs: conv 16 and conv 32 (3x3, each max-pooled), 128 hidden.

    About 1.2 M multiply-adds per image, so that certification with thousands of samples per
    example runs on a laptop CPU.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    )


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class _CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6k + 2 for a CIFAR ResNet, got {depth}")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        layers: list[nn.Module] = []
        cin = 16
        for stage, width in enumerate((16, 32, 64)):
            for b in range(blocks):
                layers.append(_BasicBlock(cin, width, 2 if (stage > 0 and b == 0) else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """The residual network of He et al. (2016) for 32x32 inputs: 3 stages of basic blocks, depth 6k+2."""
    return _CifarResNet(depth, num_classes, in_channels)


class _RepeatChannels(nn.Module):
    """Feed a one-channel image to a three-channel torchvision model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _torchvision(name: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        import torchvision

        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        return nn.Sequential(_RepeatChannels(), net) if in_channels == 1 else net

    return build


ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "small_cnn": lambda k, c: small_cnn(k, c),
    "cifar_resnet20": lambda k, c: cifar_resnet(20, k, c),
    "cifar_resnet110": lambda k, c: cifar_resnet(110, k, c),
    "resnet50": _torchvision("resnet50"),
}


def _known_architectures() -> list[str]:
    import torchvision

    return sorted(set(ARCHITECTURES) | set(torchvision.models.list_models(module=torchvision.models)))


def build_model(
    arch: str, *, num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float]
) -> nn.Module:
    """``Normalize(mean, std)`` followed by the network ``arch`` (a name above or any torchvision classifier)."""
    if arch in ARCHITECTURES:
        net = ARCHITECTURES[arch](num_classes, in_channels)
    else:
        import torchvision

        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(_known_architectures())}")
        net = _torchvision(arch)(num_classes, in_channels)
    return nn.Sequential(Normalize(mean, std), net)


def versions() -> dict[str, str]:
    """Versions of the software that produced a result, for provenance records."""
    import numpy
    import scipy
    import torchvision

    from . import __version__

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
    _save(model, str(tmp))
    tmp.replace(d / "model.safetensors")
    meta_tmp = d / "model.json.tmp"
    meta_tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    meta_tmp.replace(d / "model.json")
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
            "Load it yourself with torch.load(..., weights_only=True) and save it with smoothcert.models.save_model"
        )
    if not meta.exists():
        raise CheckpointError(f"no model.json beside {str(weights)!r}")
    return weights, meta


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of the weights file that :func:`load_model` reads for ``path`` (a directory or a file)."""
    import hashlib

    weights, _ = _checkpoint_paths(path)
    h = hashlib.sha256()
    with weights.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint directory written by :func:`save_model`; returns ``(model, meta)`` in eval mode.

    Reads only JSON and safetensors: nothing is unpickled.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model as _load

    weights, meta_path = _checkpoint_paths(path)
    try:
        meta = json.loads(meta_path.read_text())
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
        _load(model, str(weights), strict=True, device=str(device))
    except (SafetensorError, RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"corrupt checkpoint {str(weights)!r}: {first}") from None
    model.to(device).eval()
    return model, meta
