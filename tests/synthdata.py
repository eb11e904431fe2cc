"""Small synthetic data sets written in the real on-disk formats (IDX, CIFAR python batches, SVHN .mat, ImageFolder).

Images are learnable: class ``c`` has a bright block at a class-specific place, plus noise.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def _images(n: int, channels: int, size: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    imgs = rng.integers(0, 60, (n, channels, size, size)).astype(np.uint8)
    block = size // 4
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 4)
        imgs[i, :, r * block % (size - block) : r * block % (size - block) + block, q * block : q * block + block] = 230
    return imgs, labels.astype(np.uint8)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def write_idx_dataset(root: Path, n_train: int = 64, n_test: int = 24, seed: int = 0) -> Path:
    """Fashion-MNIST/MNIST layout: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        imgs, labels = _images(n, 1, 28, 10, s)
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", imgs[:, 0])
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def write_cifar10(root: Path, per_batch: int = 10, n_test: int = 12, seed: int = 0) -> Path:
    """torchvision's CIFAR-10 layout: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        imgs, labels = _images(n_test if name == "test_batch" else per_batch, 3, 32, 10, seed + k)
        with (base / name).open("wb") as fh:
            pickle.dump({"data": imgs.reshape(len(imgs), -1), "labels": labels.tolist(), "batch_label": name}, fh)
    with (base / "batches.meta").open("wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, fh)
    return root


def write_svhn(root: Path, n: int = 12, seed: int = 0) -> Path:
    """torchvision's SVHN layout: ``root/{train,test}_32x32.mat`` with X (32, 32, 3, N) and y in 1..10."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for k, split in enumerate(("train", "test")):
        imgs, labels = _images(n, 3, 32, 10, seed + k)
        y = labels.astype(np.int64)
        y[y == 0] = 10
        savemat(str(root / f"{split}_32x32.mat"), {"X": np.transpose(imgs, (2, 3, 1, 0)), "y": y.reshape(-1, 1)})
    return root


def write_imagefolder(root: Path, classes: int = 3, per_class: int = 2, size: int = 64, seed: int = 0) -> Path:
    """The reference's ImageNet layout: ``root/{train,val}/<class>/<image>.png``."""
    from PIL import Image

    for k, split in enumerate(("train", "val")):
        imgs, labels = _images(classes * per_class, 3, size, classes, seed + k)
        for i, (img, c) in enumerate(zip(imgs, labels, strict=True)):
            d = root / split / f"n{int(c):08d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(d / f"img{i}.png")
    return root
