"""Data sets in their standard on-disk formats, registered by name.

Every data set yields ``(x, y)`` with ``x`` a float32 image in ``[0, 1]`` (C, H, W) and ``y`` an
int label; normalization is the model's first layer (see :mod:`smoothcert.models.architectures`).

=================  ==========================================================================
name               on disk
=================  ==========================================================================
``fashion-mnist``  IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, directly in
                   the directory (Debian's ``dataset-fashion-mnist`` layout, the default
                   ``/usr/share/datasets/fashion-mnist``) or under ``FashionMNIST/raw``
                   (torchvision's layout)
``mnist``          the same IDX files, user-provided (or under ``MNIST/raw``)
``cifar10``        torchvision's ``cifar-10-batches-py`` (python batches) under a root
``svhn``           torchvision's ``train_32x32.mat`` / ``test_32x32.mat`` under a root
``imagenet``       ``IMAGENET_DIR/{train,val}/<class>/<image>`` class folders
=================  ==========================================================================

Where to look: ``data_dir`` if given; else ``$SMOOTHCERT_DATA/<name>`` or ``$SMOOTHCERT_DATA``;
else (ImageNet) ``$IMAGENET_DIR``; else the data set's default directory.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from smoothcert.core.errors import ConfigError, DataFormatError

__all__ = [
    "DATASETS",
    "DataFormatError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "RandomCropFlip",
    "TensorImages",
    "get_spec",
    "load_dataset",
    "resolve_dir",
]

SPLITS = ("train", "test")


class DatasetNotFoundError(FileNotFoundError):
    """The data set's files are not where smoothcert looked."""


@dataclass(frozen=True)
class DatasetSpec:
    """What smoothcert knows about a data set: shape, classes, normalization, augmentation, location."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_augmentation: str
    how_to_get: str
    default_dir: str | None = None
    env_var: str | None = None
    loader: Callable[[Path, str, bool], Dataset[Any]] = field(repr=False, default=None)  # type: ignore[assignment]


class TensorImages(Dataset[tuple[torch.Tensor, int]]):
    """Images held in memory as uint8 (N, C, H, W), returned as float in [0, 1], optionally augmented."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])


# ----------------------------------------------------------------------------- readers


_CORRUPT = (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError)
_NOT_FORMAT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


@contextmanager
def _reading(path: Path, kind: str) -> Iterator[None]:
    """Turn a failure to parse ``path`` (bad gzip, truncation, bad pickle or .mat) into one DataFormatError."""
    try:
        yield
    except DataFormatError:
        raise
    except _NOT_FORMAT:
        raise
    except Exception as e:
        if not isinstance(e, (*_CORRUPT, *_mat_errors())):
            raise
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise DataFormatError(
            f"{path} is not a readable {kind} ({type(e).__name__}: {text}); the file is corrupt or truncated, "
            "replace it with a fresh copy"
        ) from None


def _mat_errors() -> tuple[type[Exception], ...]:
    try:
        from scipy.io.matlab import MatReadError
    except ImportError:  # pragma: no cover - every supported scipy has it
        return ()
    return (MatReadError,)


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): big-endian magic, dims, then unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with _reading(path, "IDX file"), opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataFormatError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4].hex() or 'missing'})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataFormatError(f"{path} is truncated: its header ends after {len(data)} bytes")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        want = int(np.prod(dims))
        raise DataFormatError(f"{path} is truncated or padded: its header promises {want} values, found {arr.size}")
    return arr.reshape(dims)


def _find(root: Path, names: list[str], subdirs: list[str]) -> Path | None:
    for sub in subdirs:
        for name in names:
            p = root / sub / name if sub else root / name
            if p.exists():
                return p
    return None


def _idx_loader(torchvision_folder: str) -> Callable[[Path, str, bool], Dataset[Any]]:
    def load(root: Path, split: str, augment: bool) -> Dataset[Any]:
        prefix = "train" if split == "train" else "t10k"
        found = []
        for kind in ("images-idx3", "labels-idx1"):
            base = f"{prefix}-{kind}-ubyte"
            p = _find(root, [base + ".gz", base], ["", f"{torchvision_folder}/raw"])
            if p is None:
                raise DatasetNotFoundError(f"no {base}[.gz] in {root} or {root / torchvision_folder / 'raw'}")
            found.append(p)
        images, labels = _read_idx(found[0]), _read_idx(found[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataFormatError(
                f"{found[0]} (shape {list(images.shape)}) and {found[1]} (shape {list(labels.shape)}) "
                "are not N images of H x W and their N labels"
            )
        return TensorImages(
            torch.from_numpy(images.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
            _augmentation(torchvision_folder, augment),
        )

    return load


def _cifar_loader(root: Path, split: str, augment: bool) -> Dataset[Any]:
    base = root if (root / "data_batch_1").exists() or (root / "test_batch").exists() else root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in names:
        p = base / name
        if not p.exists():
            raise DatasetNotFoundError(f"no {name} in {base}")
        # CIFAR-10's python batches are pickles by their format; they are data, never checkpoints
        with _reading(p, "CIFAR-10 python batch"):
            with p.open("rb") as fh:
                batch = pickle.load(fh, encoding="latin1")
            labels = batch.get("labels", batch.get("fine_labels")) if isinstance(batch, dict) else None
            if labels is None or "data" not in batch:
                raise DataFormatError(f"{p} is not a CIFAR-10 python batch (a dict with 'data' and 'labels')")
            images = np.asarray(batch["data"], dtype=np.uint8)
            if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or len(images) != len(labels):
                raise DataFormatError(
                    f"{p} is not a CIFAR-10 python batch: 'data' has shape {list(images.shape)} for "
                    f"{len(labels)} labels (expected [{len(labels)}, 3072])"
                )
        xs.append(images.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    return TensorImages(
        torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), _augmentation("cifar10", augment)
    )


def _svhn_loader(root: Path, split: str, augment: bool) -> Dataset[Any]:
    from scipy.io import loadmat

    p = root / f"{split}_32x32.mat"
    if not p.exists():
        raise DatasetNotFoundError(f"no {p.name} in {root}")
    with _reading(p, "SVHN .mat file"):
        mat = loadmat(str(p))
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or np.ndim(x) != 4 or np.shape(x)[:3] != (32, 32, 3) or np.size(y) != np.shape(x)[3]:
        found = {k: list(np.shape(v)) for k, v in mat.items() if not k.startswith("__")}
        raise DataFormatError(f"{p} is not an SVHN .mat file (X of shape [32, 32, 3, N] and N labels y): found {found}")
    images = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)).astype(np.uint8))
    labels = np.asarray(y).astype(np.int64).reshape(-1) % 10  # SVHN stores digit 0 as label 10
    return TensorImages(torch.from_numpy(images), torch.from_numpy(labels), _augmentation("svhn", augment))


def _imagenet_loader(root: Path, split: str, augment: bool) -> Dataset[Any]:
    from torchvision import datasets
    from torchvision.transforms import v2

    folder = root / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise DatasetNotFoundError(f"no {folder.name}/ class folders in {root}")
    if augment:
        tf = v2.Compose(
            [v2.RandomResizedCrop(224), v2.RandomHorizontalFlip(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        )
    else:
        tf = v2.Compose([v2.Resize(256), v2.CenterCrop(224), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    return datasets.ImageFolder(str(folder), transform=tf)


class RandomCropFlip:
    """Random crop after zero padding, then (optionally) a horizontal flip, on one (C, H, W) tensor.

    The same operations as torchvision's ``RandomCrop(size, padding)`` and ``RandomHorizontalFlip``,
    written directly on tensors because this runs once per training example.
    """

    def __init__(self, padding: int, flip: bool) -> None:
        self.padding = padding
        self.flip = flip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        h, w = x.shape[-2:]
        if p:
            i, j = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
            x = torch.nn.functional.pad(x, (p, p, p, p))[..., i : i + h, j : j + w]
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return x.contiguous()

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


_AUGMENT = {
    "FashionMNIST": (2, True),
    "MNIST": (2, False),
    "cifar10": (4, True),
    "svhn": (4, False),
}


def _augmentation(name: str, augment: bool) -> Callable[[torch.Tensor], torch.Tensor] | None:
    return RandomCropFlip(*_AUGMENT[name]) if augment else None


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            "fashion-mnist",
            10,
            (1, 28, 28),
            (0.2860,),
            (0.3530,),
            "random crop 28 (padding 2), horizontal flip",
            "install Debian's package with 'apt-get install dataset-fashion-mnist', or pass --data-dir",
            default_dir="/usr/share/datasets/fashion-mnist",
            loader=_idx_loader("FashionMNIST"),
        ),
        DatasetSpec(
            "mnist",
            10,
            (1, 28, 28),
            (0.1307,),
            (0.3081,),
            "random crop 28 (padding 2)",
            "put the four MNIST IDX files in a directory and pass it with --data-dir",
            loader=_idx_loader("MNIST"),
        ),
        DatasetSpec(
            "cifar10",
            10,
            (3, 32, 32),
            (0.4914, 0.4822, 0.4465),
            (0.2023, 0.1994, 0.2010),
            "random crop 32 (padding 4), horizontal flip",
            "pass --data-dir pointing at the folder holding torchvision's cifar-10-batches-py",
            loader=_cifar_loader,
        ),
        DatasetSpec(
            "svhn",
            10,
            (3, 32, 32),
            (0.4377, 0.4438, 0.4728),
            (0.1980, 0.2010, 0.1970),
            "random crop 32 (padding 4)",
            "pass --data-dir pointing at the folder holding torchvision's train_32x32.mat and test_32x32.mat",
            loader=_svhn_loader,
        ),
        DatasetSpec(
            "imagenet",
            1000,
            (3, 224, 224),
            (0.485, 0.456, 0.406),
            (0.229, 0.224, 0.225),
            "random resized crop 224, horizontal flip (test: resize 256, center crop 224)",
            "set IMAGENET_DIR (or pass --data-dir) to a folder with train/ and val/ class folders",
            env_var="IMAGENET_DIR",
            loader=_imagenet_loader,
        ),
    ]
}


def get_spec(name: str) -> DatasetSpec:
    """The registered data set ``name``; :class:`ConfigError` (a ``ValueError``) listing the known names otherwise."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def resolve_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory to read ``name`` from (see the module docs for the order)."""
    spec = get_spec(name)
    if data_dir is not None:
        return Path(data_dir)
    env_root = os.environ.get("SMOOTHCERT_DATA")
    if env_root:
        sub = Path(env_root) / name
        return sub if sub.is_dir() else Path(env_root)
    if spec.env_var and os.environ.get(spec.env_var):
        return Path(os.environ[spec.env_var])
    if spec.default_dir:
        return Path(spec.default_dir)
    raise DatasetNotFoundError(f"dataset {name!r} has no default location: {spec.how_to_get}")


def load_dataset(
    name: str, split: str, data_dir: str | os.PathLike[str] | None = None, *, augment: bool = False
) -> Dataset[Any]:
    """Load split ``train`` or ``test`` (``val`` is accepted for ``test``) of data set ``name``.

    ``augment`` applies the data set's training augmentation (random crops and flips, paper App. J.2).
    Missing files raise :class:`DatasetNotFoundError` saying where it looked and how to get them; a
    corrupt or truncated file (bad gzip stream, wrong IDX magic or size, a CIFAR batch that does not
    unpickle to the expected dict, an unreadable SVHN .mat) raises
    :class:`~smoothcert.core.errors.DataFormatError` naming the file.
    """
    spec = get_spec(name)
    split = "test" if split == "val" else split
    if split not in SPLITS:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    root = resolve_dir(name, data_dir)
    if not root.is_dir():
        raise DatasetNotFoundError(f"{name}: data directory {str(root)!r} does not exist; {spec.how_to_get}")
    try:
        return spec.loader(root, split, augment)
    except DatasetNotFoundError as e:
        raise DatasetNotFoundError(f"{name}: {e}; {spec.how_to_get}") from None
