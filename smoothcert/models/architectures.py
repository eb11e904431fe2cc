"""Base-classifier architectures.

Every model built here starts with its dataset's per-channel normalization, so it takes
``[0, 1]`` pixels and the smoothing noise lives in pixel space (paper App. J.2; docs/statistics.md §1).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from smoothcert.core.errors import ConfigError
from smoothcert.models.lipschitz import lipschitz_mlp
from smoothcert.models.normalize import Normalize

__all__ = [
    "ARCHITECTURES",
    "PARAMETRIC_ARCHITECTURES",
    "Normalize",
    "build_model",
    "cifar_resnet",
    "small_cnn",
    "upgrade_legacy_keys",
]


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
            raise ConfigError(f"depth must be 6k + 2 for a CIFAR ResNet, got {depth}")
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


def _lipschitz_mlp(
    num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float], params: Mapping[str, Any]
) -> nn.Module:
    try:
        hidden = [int(h) for h in params["hidden"]]
        in_features = int(params["in_features"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"arch 'lipschitz_mlp' needs arch_params {{'hidden': [widths], 'in_features': N}}, got {dict(params)!r}"
        ) from None
    if in_features % in_channels:
        raise ConfigError(f"lipschitz_mlp: in_features={in_features} is not a multiple of in_channels={in_channels}")
    return lipschitz_mlp(in_features=in_features, hidden=hidden, num_classes=num_classes, mean=mean, std=std)


# Whole models (Normalize included) that need more than the class and channel counts: a builder gets
# ``(num_classes, in_channels, mean, std, arch_params)``, ``arch_params`` as stored in model.json.
PARAMETRIC_ARCHITECTURES: dict[
    str, Callable[[int, int, Sequence[float], Sequence[float], Mapping[str, Any]], nn.Module]
] = {
    "lipschitz_mlp": _lipschitz_mlp,  # smoothcert baseline's 1-Lipschitz MLP (smoothcert.models.lipschitz)
}


def _known_architectures() -> list[str]:
    import torchvision

    names = set(ARCHITECTURES) | set(PARAMETRIC_ARCHITECTURES)
    return sorted(names | set(torchvision.models.list_models(module=torchvision.models)))


def build_model(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    arch_params: Mapping[str, Any] | None = None,
) -> nn.Module:
    """``Normalize(mean, std)`` followed by the network ``arch`` (a name above or any torchvision classifier).

    A :data:`PARAMETRIC_ARCHITECTURES` name builds the whole model (its own ``Normalize`` first) from
    ``arch_params`` (e.g. ``lipschitz_mlp``'s hidden widths); the other architectures take none.
    """
    if arch in PARAMETRIC_ARCHITECTURES:
        return PARAMETRIC_ARCHITECTURES[arch](num_classes, in_channels, mean, std, arch_params or {})
    if arch_params:
        raise ConfigError(f"arch {arch!r} takes no arch_params, got {dict(arch_params)!r}")
    if arch in ARCHITECTURES:
        net = ARCHITECTURES[arch](num_classes, in_channels)
    else:
        import torchvision

        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise ConfigError(f"unknown arch {arch!r}; choose one of: {', '.join(_known_architectures())}")
        net = _torchvision(arch)(num_classes, in_channels)
    return nn.Sequential(Normalize(mean, std), net)
