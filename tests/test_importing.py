"""Importing published checkpoints: the 2019 reference format, torchvision state dicts, safety, errors.

The 2019 networks are defined here independently of smoothcert, with the module names of the
reference code (conv1, bn1, layer1-3, fc; blocks conv1, bn1, conv2, bn2, downsample) and its
NormalizeLayer (which saves no tensors), and saved the way its training script saved them.
Parity is checked to 1e-5 (absolute, on logits of order 1 to 100): both sides run the same float32
operations in the same order, so anything beyond rounding means a different network.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from synthdata import write_cifar10
from torch import nn

from smoothcert.cli.main import main
from smoothcert.core.errors import CheckpointError
from smoothcert.io import importing
from smoothcert.io.checkpoints import load_model
from smoothcert.io.importing import import_checkpoint
from smoothcert.models.architectures import build_model

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ----------------------------------------------------------------------------- the 2019 networks


class NormalizeLayer2019(nn.Module):
    """Channel standardization whose mean and std are plain attributes: absent from the state dict."""

    def __init__(self, means: Sequence[float], sds: Sequence[float]) -> None:
        super().__init__()
        self.means = torch.tensor(means)
        self.sds = torch.tensor(sds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.means.view(1, -1, 1, 1)) / self.sds.view(1, -1, 1, 1)


class Block2019(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += residual
        return self.relu(out)


class CifarResNet2019(nn.Module):
    """Depth 6n+2: a 16-channel stem, three stages of n basic blocks (16, 32, 64 wide), AvgPool2d(8), fc."""

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(16, n, 1)
        self.layer2 = self._stage(32, n, 2)
        self.layer3 = self._stage(64, n, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [Block2019(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [Block2019(planes, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).view(x.size(0), -1))


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights with non-trivial batch-norm statistics (affine and running mean/var), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(1000)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def _save_2019(path: Path, wrapped: nn.Module, arch: str, *, legacy: bool = False, **extra: object) -> Path:
    """As the 2019 training script: torch.save({epoch, arch, state_dict, optimizer}), SGD momentum state included."""
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for p in wrapped.parameters():  # momentum buffers as after a step, without touching the weights
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    payload = {"epoch": 90, "arch": arch, "state_dict": wrapped.state_dict(), "optimizer": opt.state_dict(), **extra}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


def _cifar_2019(depth: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(NormalizeLayer2019(CIFAR_MEAN, CIFAR_STD), _randomize(CifarResNet2019(depth), seed)).eval()


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    ("arch", "depth", "legacy"),
    [("cifar_resnet20", 20, False), ("cifar_resnet20", 20, True), ("cifar_resnet110", 110, False)],
)
def test_2019_cifar_checkpoint_gives_the_same_logits(tmp_path, arch, depth, legacy):
    reference = _cifar_2019(depth, seed=depth)
    src = _save_2019(tmp_path / "checkpoint.pth.tar", reference, arch, legacy=legacy)
    meta = import_checkpoint(src, tmp_path / "model", dataset="cifar10", sigma=0.25)
    model, saved = load_model(tmp_path / "model")
    assert saved == meta
    assert meta["arch"] == arch and meta["dataset"] == "cifar10" and meta["sigma"] == 0.25
    assert meta["source"]["format"] == "cohen2019" and meta["source"]["checkpoint_epoch"] == 90
    assert meta["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = reference(x), model(x)
    assert want.abs().max() > 0.1  # logits of order 1 or more, so 1e-5 is a tight test
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_2019_imagenet_dataparallel_resnet50_gives_the_same_logits(tmp_path):
    torch.manual_seed(0)
    net = _randomize(torchvision.models.resnet50(), seed=5)
    reference = nn.Sequential(NormalizeLayer2019(IMAGENET_MEAN, IMAGENET_STD), nn.DataParallel(net)).eval()
    state = reference.state_dict()
    assert all(k.startswith("1.module.") for k in state)  # the layout of the reference's ImageNet checkpoints
    src = _save_2019(tmp_path / "checkpoint.pth.tar", reference, "resnet50")
    meta = import_checkpoint(src, tmp_path / "model", dataset="imagenet", sigma=0.5)
    assert meta["arch"] == "resnet50" and meta["source"]["format"] == "cohen2019"
    model, _ = load_model(tmp_path / "model")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = reference(x), model(x)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["torch", "safetensors"])
def test_plain_torchvision_state_dict_imports(tmp_path, kind):
    net = _randomize(torchvision.models.resnet18(num_classes=10), seed=3)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    src = tmp_path / ("w.safetensors" if kind == "safetensors" else "w.pth")
    if kind == "safetensors":
        save_file(state, str(src))
    else:
        torch.save(state, src)
    meta = import_checkpoint(src, tmp_path / "model", arch="resnet18", dataset="cifar10", sigma=0.5)
    assert meta["source"]["format"] == ("safetensors" if kind == "safetensors" else "torch-state-dict")
    model, _ = load_model(tmp_path / "model")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    reference = nn.Sequential(NormalizeLayer2019(CIFAR_MEAN, CIFAR_STD), net).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)


def _old_smoothcert_names(state: dict[str, torch.Tensor], per_stage: int) -> dict[str, torch.Tensor]:
    """The names earlier smoothcert versions gave cifar_resnet: stem.{0,1}, a flat layers.{i}, shortcut, head.2."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[:2] == ["1", "conv1"]:
            parts[1:2] = ["stem", "0"]
        elif parts[:2] == ["1", "bn1"]:
            parts[1:2] = ["stem", "1"]
        elif parts[:2] == ["1", "fc"]:
            parts[1:2] = ["head", "2"]
        elif parts[1].startswith("layer"):
            stage, block = int(parts[1][len("layer") :]) - 1, int(parts[2])
            parts[1:3] = ["layers", str(stage * per_stage + block)]
            parts = ["shortcut" if p == "downsample" else p for p in parts]
        out[".".join(parts)] = value
    return out


def test_older_smoothcert_cifar_resnet_checkpoints_still_load(tmp_path):
    model = _randomize(
        build_model("cifar_resnet20", num_classes=10, in_channels=3, mean=CIFAR_MEAN, std=CIFAR_STD), seed=7
    )
    old = _old_smoothcert_names(model.state_dict(), per_stage=3)
    assert "1.layers.8.conv2.weight" in old and "1.layers.3.shortcut.0.weight" in old and "1.head.2.bias" in old
    d = tmp_path / "old"
    d.mkdir()
    save_file({k: v.contiguous() for k, v in old.items()}, str(d / "model.safetensors"))
    meta = {"arch": "cifar_resnet20", "dataset": "cifar10", "num_classes": 10, "input_shape": [3, 32, 32]}
    (d / "model.json").write_text(json.dumps({**meta, "mean": CIFAR_MEAN, "std": CIFAR_STD, "sigma": 0.25}))
    loaded, _ = load_model(d)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


# ----------------------------------------------------------------------------- safety and errors


class _CodeOnUnpickle:
    """Unpickling this calls open(marker, 'w'): a side effect that shows whether code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def test_a_pickle_that_runs_code_is_refused_and_the_code_never_runs(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    src = _save_2019(tmp_path / "evil.pth.tar", _cifar_2019(20), "cifar_resnet20", note=_CodeOnUnpickle(marker))
    args = ["import", str(src), "--out", str(tmp_path / "model"), "--dataset", "cifar10", "--sigma", "0.25"]
    rc, _, err = _run(capsys, args)
    assert rc == 2
    assert err.count("\n") == 1 and "weights_only=True" in err and "never unpickles" in err
    assert not marker.exists()
    assert not (tmp_path / "model" / "model.safetensors").exists()
    with pytest.raises(CheckpointError, match="weights_only"):
        import_checkpoint(src, tmp_path / "model", dataset="cifar10", sigma=0.25)
    assert not marker.exists()
    # positive control: a full unpickle of the same file does run the payload
    torch.load(src, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("missing", "1 missing key (fc.bias)"),
        ("unexpected", "1 unexpected key (extra.weight)"),
        ("shape", "2 shape mismatches: fc.bias (checkpoint [100], model [10]), fc.weight (checkpoint [100, 64], model"),
    ],
)
def test_a_checkpoint_that_does_not_fit_gives_one_line_and_exit_2(tmp_path, capsys, edit, message):
    wrapped = _cifar_2019(20)
    state = wrapped.state_dict()
    if edit == "missing":
        del state["1.fc.bias"]
    elif edit == "unexpected":
        state["1.extra.weight"] = torch.zeros(3)
    else:
        state["1.fc.weight"], state["1.fc.bias"] = torch.zeros(100, 64), torch.zeros(100)
    src = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 1, "arch": "cifar_resnet20", "state_dict": state}, src)
    rc, _, err = _run(
        capsys, ["import", str(src), "--out", str(tmp_path / "m"), "--dataset", "cifar10", "--sigma", "1"]
    )
    assert rc == 2 and err.count("\n") == 1
    assert "does not fit cifar_resnet20" in err and message in err
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_flags_supply_what_the_checkpoint_does_not_say_and_must_agree(tmp_path, capsys):
    d = tmp_path / "models" / "cifar10" / "resnet20" / "noise_0.25"
    d.mkdir(parents=True)
    src = _save_2019(d / "checkpoint.pth.tar", _cifar_2019(20), "cifar_resnet20")
    out = str(tmp_path / "m")
    rc, _, err = _run(capsys, ["import", str(src), "--out", out, "--sigma", "0.25"])
    assert rc == 2 and "pass --dataset (the path suggests cifar10)" in err
    rc, _, err = _run(capsys, ["import", str(src), "--out", out, "--dataset", "cifar10"])
    assert rc == 2 and "pass --sigma (the path suggests 0.25)" in err
    rc, _, err = _run(capsys, ["import", str(src), "--out", out, "--dataset", "cifar10", "--sigma", "1", "--arch", "x"])
    assert rc == 2 and "the checkpoint says arch 'cifar_resnet20' but --arch is 'x'" in err
    torch.save(_cifar_2019(20).state_dict(), tmp_path / "plain.pth")
    rc, _, err = _run(
        capsys, ["import", str(tmp_path / "plain.pth"), "--out", out, "--dataset", "cifar10", "--sigma", "1"]
    )
    assert rc == 2 and "pass --arch" in err
    rc, _, _ = _run(capsys, ["import", str(src), "--out", out, "--dataset", "cifar10", "--sigma", "0.25"])
    assert rc == 0
    rc, _, err = _run(capsys, ["import", str(src), "--out", out, "--dataset", "cifar10", "--sigma", "0.25"])
    assert rc == 2 and "--overwrite" in err


# ----------------------------------------------------------------------------- torchvision pretrained weights


def test_pretrained_weights_come_from_torch_cache_only(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    args = [
        "import",
        "--arch",
        "resnet18",
        "--weights",
        "IMAGENET1K_V1",
        "--sigma",
        "0.5",
        "--out",
        str(tmp_path / "m"),
    ]
    rc, _, err = _run(capsys, args)
    assert rc == 2 and err.count("\n") == 1
    assert str(cached) in err and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in err
    assert not cached.exists()  # nothing was downloaded

    net = _randomize(torchvision.models.resnet18(), seed=9)
    cached.parent.mkdir(parents=True)
    torch.save(net.state_dict(), cached)
    rc, _, err = _run(capsys, args)  # a file that is not the published one (its sha256 does not start f37072fd)
    assert rc == 2 and "not the f37072fd its name promises" in err

    monkeypatch.setattr(importing, "_hash_prefix", lambda path: None)  # accept our stand-in file
    rc, out, _ = _run(capsys, args)
    assert rc == 0 and "torchvision-weights" in out
    model, meta = load_model(tmp_path / "m")
    assert meta["dataset"] == "imagenet" and meta["source"]["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    reference = nn.Sequential(NormalizeLayer2019(IMAGENET_MEAN, IMAGENET_STD), net).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- end to end


def test_an_imported_2019_model_certifies_through_the_cli(tmp_path, capsys):
    data = write_cifar10(tmp_path / "cifar", per_batch=2, n_test=6)
    src = _save_2019(tmp_path / "checkpoint.pth.tar", _cifar_2019(20), "cifar_resnet20")
    rc, _, err = _run(
        capsys, ["import", str(src), "--out", str(tmp_path / "m"), "--dataset", "cifar10", "--sigma", "0.25"]
    )
    assert rc == 0, err
    out = tmp_path / "cert.tsv"
    argv = ["certify", "--model", str(tmp_path / "m"), "--data-dir", str(data), "--n0", "8", "--n", "32"]
    rc, _, err = _run(capsys, [*argv, "--max", "3", "--batch", "64", "--device", "cpu", "--quiet", "--out", str(out)])
    assert rc == 0, err
    rows = [ln.split("\t") for ln in out.read_text().splitlines()]
    assert len(rows) == 4 and rows[0][0] == "idx"
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["model"]["source"]["format"] == "cohen2019" and sidecar["identity"]["sigma"] == 0.25


def test_a_smoothcert_model_file_imports_and_its_normalization_must_match(tmp_path):
    model = build_model("small_cnn", num_classes=10, in_channels=1, mean=[0.2860], std=[0.3530]).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    import_checkpoint(tmp_path / "w.safetensors", tmp_path / "m", arch="small_cnn", dataset="fashion-mnist", sigma=0.5)
    loaded, _ = load_model(tmp_path / "m")
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    with pytest.raises(CheckpointError, match=r"normalization mean \[0\.28.*is not 'mnist'"):
        import_checkpoint(tmp_path / "w.safetensors", tmp_path / "m2", arch="small_cnn", dataset="mnist", sigma=0.5)


# ----------------------------------------------------------------------------- recorded values


def _small_cnn_checkpoint(path: Path, **info: object) -> Path:
    """A torch.save dict of the 2019 kind (state_dict + scalars) around a small_cnn, recording ``info``."""
    model = build_model("small_cnn", num_classes=10, in_channels=1, mean=[0.2860], std=[0.3530])
    torch.save({"arch": "small_cnn", "state_dict": model.state_dict(), **info}, path)
    return path


@pytest.mark.parametrize(
    ("field", "value"),
    [("sigma", float("nan")), ("sigma", -0.5), ("noise_sd", float("inf")), ("sigma", "high")],
)
def test_an_invalid_recorded_sigma_is_refused_naming_the_field(tmp_path, capsys, field, value):
    """Issue 19 item 4: a NaN sigma used to give exit 0 and ``"sigma": NaN`` (invalid JSON) in model.json."""
    src = _small_cnn_checkpoint(tmp_path / "c.pth", **{field: value})
    with pytest.raises(CheckpointError) as info:
        import_checkpoint(src, tmp_path / "m", dataset="fashion-mnist")
    assert f"records {field} = {value!r}" in str(info.value)
    rc, _, err = _run(capsys, ["import", str(src), "--out", str(tmp_path / "m"), "--dataset", "fashion-mnist"])
    assert rc == 2 and f"{field} = " in err
    assert not (tmp_path / "m" / "model.json").exists()


def test_a_valid_recorded_sigma_is_written_as_strict_json(tmp_path):
    """Control for the test above: sigma 0.25 (and 0, an undefended model) import, model.json parses strictly."""
    for sigma in (0.25, 0.0):
        out = tmp_path / f"m{sigma}"
        import_checkpoint(_small_cnn_checkpoint(tmp_path / "c.pth", sigma=sigma), out, dataset="fashion-mnist")
        text = (out / "model.json").read_text()
        meta = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
        assert meta["sigma"] == sigma


def test_model_json_never_holds_nan(tmp_path):
    """save_model writes strict JSON (allow_nan=False) and refuses before writing anything."""
    from smoothcert.io.checkpoints import save_model

    model = build_model("small_cnn", num_classes=10, in_channels=1, mean=[0.2860], std=[0.3530])
    with pytest.raises(CheckpointError, match=r"non-finite values .*clean_accuracy"):
        save_model(tmp_path / "m", model, {"arch": "small_cnn", "clean_accuracy": float("nan")})
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_a_directory_given_as_the_checkpoint_says_so(tmp_path):
    with pytest.raises(ValueError, match="is a directory: give the checkpoint file"):
        import_checkpoint(tmp_path, tmp_path / "m", dataset="fashion-mnist", sigma=0.5)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("drop", "1 missing key (1.9.bias)"),
        ("add", "1 unexpected key (1.extra)"),
        ("reshape", "1 shape mismatch: 1.9.bias (checkpoint [3], model [10])"),
    ],
)
def test_load_model_on_a_corrupt_state_dict_lists_the_keys(tmp_path, edit, message):
    """Issue 19 item 7: the message names missing and unexpected keys, not torch's uninformative first line."""
    model = build_model("small_cnn", num_classes=10, in_channels=1, mean=[0.2860], std=[0.3530])
    import_checkpoint(_small_cnn_checkpoint(tmp_path / "c.pth", sigma=0.5), tmp_path / "m", dataset="fashion-mnist")
    load_model(tmp_path / "m")  # control: the intact directory loads
    state = dict(model.state_dict())
    if edit == "drop":
        del state["1.9.bias"]
    elif edit == "add":
        state["1.extra"] = torch.zeros(2)
    else:
        state["1.9.bias"] = torch.zeros(3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "m")
    assert message in str(info.value) and "\n" not in str(info.value)
