"""Base-classifier architectures, and checkpoints that never go through pickle.

Every model built here starts with its dataset's per-channel normalization, so it takes
``[0, 1]`` pixels and the smoothing noise lives in pixel space (paper App. J.2; docs/statistics.md §1).

Checkpoints are a directory holding ``model.safetensors`` (the weights) and ``model.json``
(architecture, data set, training sigma, normalization, accuracies, versions).
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "DnCNN",
    "Normalize",
    "build_model",
    "checkpoint_sha256",
    "cifar_resnet",
    "compose",
    "import_checkpoint",
    "load_denoiser",
    "load_model",
    "save_model",
    "small_cnn",
    "upgrade_legacy_keys",
    "versions",
]


if TYPE_CHECKING:
    from .importing import import_checkpoint


def __getattr__(name: str) -> Any:
    if name == "import_checkpoint":  # lazily: smoothcert.importing builds on this module
        from .importing import import_checkpoint

        return import_checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))``; downsample: 1x1 conv + BN where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + residual)


class _CifarResNet(nn.Module):
    """Module names follow the 2019 reference (``conv1, bn1, layer1..3, fc``), so its weights load without a table.

    The global average pool is ``avg_pool2d`` over the whole last map: on 32x32 inputs that map is
    8x8 and this is the reference's ``AvgPool2d(8)``, bit for bit; it also accepts other sizes
    (7x7 maps from 28x28 Fashion-MNIST).
    """

    def __init__(self, depth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6k + 2 for a CIFAR ResNet, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        stages: list[nn.Sequential] = []
        for stage, width in enumerate((16, 32, 64)):
            stride = 1 if stage == 0 else 2
            stage_blocks: list[nn.Module] = []
            for b in range(blocks):
                stage_blocks.append(_BasicBlock(cin, width, stride if b == 0 else 1))
                cin = width
            stages.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.avg_pool2d(x, x.shape[-2:]), 1))


def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """The residual network of He et al. (2016) for 32x32 inputs: 3 stages of basic blocks, depth 6k+2.

    Identical, parameter names included, to the CIFAR ResNet of the 2019 reference code: basic
    blocks, 1x1-conv + BN shortcuts where the width or stride changes, global average pool, linear head.
    """
    return _CifarResNet(depth, num_classes, in_channels)


class DnCNN(nn.Module):
    """The DnCNN denoiser (Zhang et al. 2017), as used for denoised smoothing (Salman et al. 2020, Sec. 3).

    ``depth`` 3x3 convolutions of ``width`` channels: conv + ReLU, ``depth - 2`` times conv + BN + ReLU,
    then a conv back to ``channels``; it predicts the noise, so ``D(z) = z - net(z)`` (residual
    learning). Works in pixel space, in front of a classifier that normalizes its own input.
    """

    def __init__(self, channels: int = 1, *, depth: int = 17, width: int = 64) -> None:
        super().__init__()
        if depth < 3:
            raise ValueError(f"depth must be >= 3 for a DnCNN, got {depth}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.net(x)


def compose(denoiser: nn.Module, classifier: nn.Module) -> nn.Module:
    """``z -> classifier(denoiser(z))``, the base classifier of denoised smoothing (Salman et al. 2020)."""
    return nn.Sequential(denoiser, classifier)


_LEGACY_BLOCK = re.compile(r"^((?:\d+\.)?)layers\.(\d+)\.(.*)$")


def upgrade_legacy_keys(arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the parameters of a ``cifar_resnet*`` saved by earlier smoothcert versions to the 2019 reference names.

    Older smoothcert named the same network ``stem.{0,1}``, ``layers.{i}`` (one flat list of blocks),
    ``shortcut`` and ``head.2``; block ``i`` is block ``i % k`` of stage ``i // k + 1`` with
    ``k = (depth - 2) / 6``. Any other state dict is returned unchanged.
    """
    match = re.fullmatch(r"cifar_resnet(\d+)", arch)
    if match is None or not any(".stem." in k or k.startswith("stem.") for k in state):
        return state
    per_stage = (int(match.group(1)) - 2) // 6
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = re.sub(r"(^|\.)stem\.0\.", r"\1conv1.", key)
        new = re.sub(r"(^|\.)stem\.1\.", r"\1bn1.", new)
        new = re.sub(r"(^|\.)head\.2\.", r"\1fc.", new)
        block = _LEGACY_BLOCK.match(new)
        if block is not None:
            i = int(block.group(2))
            rest = block.group(3).replace("shortcut.", "downsample.", 1)
            new = f"{block.group(1)}layer{i // per_stage + 1}.{i % per_stage}.{rest}"
        out[new] = value
    return out


class RepeatChannels(nn.Module):
    """Feed a one-channel image to a three-channel torchvision model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _torchvision(name: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        import torchvision

        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        return nn.Sequential(RepeatChannels(), net) if in_channels == 1 else net

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
    _save(model, str(tmp), force_contiguous=True)  # channels-last weights are saved in standard layout
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
            "Convert it safely with 'smoothcert import FILE --out DIR' (torch.load with weights_only=True)"
        )
    if not meta.exists():
        raise CheckpointError(f"no model.json beside {str(weights)!r}")
    return weights, meta


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    """Load a denoiser written by :func:`smoothcert.denoise.train_denoiser`; ``(denoiser, meta)`` in eval mode."""
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
