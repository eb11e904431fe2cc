"""smoothcert.io.data reads each standard on-disk format, from synthetic files in that format."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from synthdata import write_cifar10, write_idx_dataset, write_imagefolder, write_svhn

from smoothcert.core.errors import DataFormatError
from smoothcert.io.data import DATASETS, DatasetNotFoundError, get_spec, load_dataset, resolve_dir


def _check(ds, n, shape, classes):
    assert len(ds) == n
    x, y = ds[0]
    assert tuple(x.shape) == shape and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert isinstance(y, int) and 0 <= y < classes


def test_idx_gz_in_debian_layout(tmp_path):
    write_idx_dataset(tmp_path, n_train=30, n_test=7)
    _check(load_dataset("fashion-mnist", "train", tmp_path), 30, (1, 28, 28), 10)
    _check(load_dataset("mnist", "test", tmp_path), 7, (1, 28, 28), 10)


def test_idx_in_torchvision_layout_uncompressed(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx_dataset(raw, n_train=5, n_test=4)
    import gzip

    for p in raw.glob("*.gz"):  # torchvision keeps the raw files unzipped
        p.with_suffix("").write_bytes(gzip.decompress(p.read_bytes()))
        p.unlink()
    _check(load_dataset("fashion-mnist", "test", tmp_path), 4, (1, 28, 28), 10)


def test_idx_pixels_and_labels_roundtrip(tmp_path):
    write_idx_dataset(tmp_path, n_train=3, n_test=3, seed=5)
    from synthdata import _images

    imgs, labels = _images(3, 1, 28, 10, 5)
    ds = load_dataset("fashion-mnist", "train", tmp_path)
    for i in range(3):
        x, y = ds[i]
        assert y == int(labels[i])
        assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(imgs[i]))


def test_cifar10_python_batches(tmp_path):
    write_cifar10(tmp_path, per_batch=4, n_test=6)
    _check(load_dataset("cifar10", "train", tmp_path), 20, (3, 32, 32), 10)
    _check(load_dataset("cifar10", "test", tmp_path / "cifar-10-batches-py"), 6, (3, 32, 32), 10)


def test_svhn_mat_maps_label_10_to_0(tmp_path):
    write_svhn(tmp_path, n=40)
    ds = load_dataset("svhn", "train", tmp_path)
    _check(ds, 40, (3, 32, 32), 10)
    assert 0 in {ds[i][1] for i in range(40)}


def test_imagenet_class_folders(tmp_path, monkeypatch):
    write_imagefolder(tmp_path, classes=3, per_class=2, size=40)
    monkeypatch.setenv("IMAGENET_DIR", str(tmp_path))
    monkeypatch.delenv("SMOOTHCERT_DATA", raising=False)
    ds = load_dataset("imagenet", "val")
    _check(ds, 6, (3, 224, 224), 3)
    train = load_dataset("imagenet", "train", augment=True)
    assert tuple(train[0][0].shape) == (3, 224, 224)


def test_training_augmentation_keeps_shape_and_range(tmp_path):
    write_idx_dataset(tmp_path, n_train=4, n_test=2)
    ds = load_dataset("fashion-mnist", "train", tmp_path, augment=True)
    torch.manual_seed(0)
    xs = [ds[0][0] for _ in range(10)]
    assert all(x.shape == (1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1 for x in xs)
    assert any(not torch.equal(xs[0], x) for x in xs[1:]), "random crops/flips vary"


def test_every_spec_is_complete():
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.num_classes >= 2
        assert len(spec.mean) == len(spec.std) == spec.input_shape[0]
        assert spec.train_augmentation and spec.how_to_get


def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOOTHCERT_DATA", str(tmp_path))
    assert resolve_dir("fashion-mnist") == tmp_path
    (tmp_path / "fashion-mnist").mkdir()
    assert resolve_dir("fashion-mnist") == tmp_path / "fashion-mnist"
    assert resolve_dir("fashion-mnist", "/explicit").as_posix() == "/explicit"
    monkeypatch.delenv("SMOOTHCERT_DATA")
    assert resolve_dir("fashion-mnist").as_posix() == "/usr/share/datasets/fashion-mnist"


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", "test", tmp_path / "absent")
    assert str(tmp_path / "absent") in str(info.value) and "apt-get install dataset-fashion-mnist" in str(info.value)
    write_idx_dataset(tmp_path / "partial", n_train=2, n_test=2)
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", "test", tmp_path / "partial")


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'cifar100'"):
        get_spec("cifar100")
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'dev'"):
        load_dataset("mnist", "dev", "/tmp")


def test_real_fashion_mnist_if_installed():
    # the README's test command installs Debian's dataset-fashion-mnist, so CI runs this
    spec = get_spec("fashion-mnist")
    if not Path(spec.default_dir, "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist is not installed on this machine")
    _check(load_dataset("fashion-mnist", "test"), 10_000, (1, 28, 28), 10)


# ----------------------------------------------------------------------------- corrupt files


def _idx_bytes(header: bytes, body: bytes) -> bytes:
    return gzip.compress(header + body)


def _corrupt_idx(root: Path, how: str) -> Path:
    """Write a valid IDX data set, then spoil ``train-images-idx3-ubyte.gz`` in one way."""
    write_idx_dataset(root, n_train=6, n_test=2)
    p = root / "train-images-idx3-ubyte.gz"
    good = p.read_bytes()
    raw = gzip.decompress(good)
    spoiled = {
        "not gzip": b"this is not a gzip stream at all",
        "truncated gzip": good[: len(good) // 2],  # EOFError inside gzip
        "wrong magic": _idx_bytes(b"\x00\x00\x0d\x03", raw[4:]),  # 0x0d: float32, not unsigned bytes
        "short body": gzip.compress(raw[: len(raw) - 100]),  # header promises 6 x 28 x 28 values
        "short header": gzip.compress(raw[:9]),
    }[how]
    p.write_bytes(spoiled)
    return p


@pytest.mark.parametrize("how", ["not gzip", "truncated gzip", "wrong magic", "short body", "short header"])
def test_a_corrupt_idx_file_is_one_data_format_error_naming_it(tmp_path, how):
    bad = _corrupt_idx(tmp_path, how)
    load_dataset("fashion-mnist", "test", tmp_path)  # control: the intact split next to it loads
    with pytest.raises(DataFormatError) as info:
        load_dataset("fashion-mnist", "train", tmp_path)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working


def test_idx_images_and_labels_of_different_lengths_are_named(tmp_path):
    write_idx_dataset(tmp_path, n_train=6, n_test=2)
    labels = _idx_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big"), bytes(5))  # 5 labels for 6 images
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(labels)
    with pytest.raises(DataFormatError, match=r"train-images.*train-labels"):
        load_dataset("fashion-mnist", "train", tmp_path)


@pytest.mark.parametrize(
    ("how", "content"),
    [
        ("garbage", b"\x00\x01 not a pickle"),
        ("truncated", None),
        ("not a dict", pickle.dumps([1, 2, 3])),
        ("wrong shape", pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]})),
    ],
)
def test_a_corrupt_cifar_batch_is_one_data_format_error_naming_it(tmp_path, how, content):
    write_cifar10(tmp_path, per_batch=4, n_test=3)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(bad.read_bytes()[:100] if content is None else content)
    load_dataset("cifar10", "test", tmp_path)  # control
    with pytest.raises(DataFormatError) as info:
        load_dataset("cifar10", "train", tmp_path)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("how", ["garbage", "truncated", "no X"])
def test_a_corrupt_svhn_mat_is_one_data_format_error_naming_it(tmp_path, how):
    from scipy.io import savemat

    write_svhn(tmp_path, n=4)
    bad = tmp_path / "train_32x32.mat"
    if how == "garbage":
        bad.write_bytes(b"MATLAB? no" * 30)
    elif how == "truncated":
        bad.write_bytes(bad.read_bytes()[:300])
    else:
        savemat(str(bad), {"images": np.zeros((2, 2))})
    load_dataset("svhn", "test", tmp_path)  # control
    with pytest.raises(DataFormatError) as info:
        load_dataset("svhn", "train", tmp_path)
    assert str(bad) in str(info.value)
