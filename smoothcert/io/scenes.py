"""Fashion-MNIST scenes: deterministic segmentation and localization data built from the real images.

Every scene is a ``64 x 64`` one-channel canvas in ``[0, 1]``, generated on the fly from the
Fashion-MNIST split of the same name (train scenes from train images, test scenes from test
images) through :func:`smoothcert.io.data.load_dataset`; nothing is written to disk. Scene ``i``
depends only on ``(seed, split, i)``: its random numbers come from
``numpy.random.SeedSequence([seed, split_code, i])``, so any scene can be built alone, in any
order, on any machine.

* ``segmentation``: 1 to 4 items (uniform) at uniform random positions (fully inside the canvas),
  pasted in order, later ones on top. An item's pixels are those with intensity ``>= 32/255``
  (:data:`ITEM_THRESHOLD`); only they are pasted, so the canvas is non-zero exactly where the mask
  is. Target: an ``(64, 64)`` int64 mask, ``0`` for background and ``1 + c`` for Fashion-MNIST
  class ``c`` (11 classes).
* ``localization``: one item resized (bilinear) by a uniform scale in ``[0.75, 2]`` (21 to 56
  pixels wide) at a uniform random position. Target: its box ``(x0, y0, x1, y1)`` as float32 in
  ``[0, 1]``: the tight box of the item's pixels, as pixel *edges* divided by the canvas size
  (``x0 = first column / 64``, ``x1 = (last column + 1) / 64``; ``x`` runs along columns).

**On the 8-bit grid.** Every canvas is built as uint8 (pasted items keep Fashion-MNIST's uint8
values; a resized item is rounded back to uint8 before it is pasted) and returned as
``float32(k) / 255``, so every scene lies on the grid ``i / 255`` of sound mode (:data:`GRID`;
``docs/sound.md``) with no further quantization: nothing composited off the grid.

Details: ``docs/tasks.md`` §4.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from smoothcert.core.checks import check_int
from smoothcert.core.errors import ConfigError
from smoothcert.io.data import load_dataset

__all__ = [
    "CANVAS",
    "GRID",
    "ITEM_THRESHOLD",
    "SCENES_NAME",
    "SCENE_TASKS",
    "FashionScenes",
    "SceneSpec",
    "load_scenes",
    "scene_spec",
]

SCENES_NAME = "fashion-mnist-scenes"
SCENE_TASKS: tuple[str, ...] = ("segmentation", "localization")
CANVAS = 64
GRID = 255  # scenes are 8-bit images k / 255: sound mode's grid
ITEM_THRESHOLD = 32  # uint8 intensity from which a pixel belongs to an item
_SPLIT_CODE = {"train": 0, "test": 1}
_DEFAULT_SIZE = {"train": 60_000, "test": 10_000}


@dataclass(frozen=True)
class SceneSpec:
    """What a model of a scene task needs: outputs, input shape and normalization (measured, see docs)."""

    task: str
    num_outputs: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


_SPECS = {
    "segmentation": SceneSpec("segmentation", 11, (1, CANVAS, CANVAS), (0.1171,), (0.2673,)),
    "localization": SceneSpec("localization", 4, (1, CANVAS, CANVAS), (0.1107,), (0.2543,)),
}


def scene_spec(task: str) -> SceneSpec:
    """The :class:`SceneSpec` of ``task`` (``segmentation`` or ``localization``)."""
    if task not in _SPECS:
        raise ConfigError(f"task must be one of {', '.join(SCENE_TASKS)}, got {task!r}")
    return _SPECS[task]


def _source(split: str, data_dir: str | os.PathLike[str] | None) -> tuple[np.ndarray, np.ndarray]:
    ds: Any = load_dataset("fashion-mnist", split, data_dir)
    images = getattr(ds, "images", None)
    labels = getattr(ds, "labels", None)
    if images is None or labels is None:
        pairs = [ds[i] for i in range(len(ds))]
        return (
            np.stack([np.rint(x.numpy()[0] * 255).astype(np.uint8) for x, _ in pairs]),
            np.array([int(y) for _, y in pairs], dtype=np.int64),
        )
    return images.numpy()[:, 0], labels.numpy().astype(np.int64)


class FashionScenes(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The scenes of one task and split: ``(x, target)`` with ``x`` a float32 ``(1, 64, 64)`` canvas.

    Args:
        task: ``segmentation`` (target: ``(64, 64)`` int64 mask) or ``localization`` (target:
            float32 box ``(x0, y0, x1, y1)`` in ``[0, 1]``).
        split: ``train`` or ``test`` (``val`` means ``test``).
        size: number of scenes (default: 60000 for train, 10000 for test).
        seed: the seed every scene is generated from.
        data_dir: where the Fashion-MNIST IDX files are (see :mod:`smoothcert.io.data`).
    """

    def __init__(
        self,
        task: str,
        split: str,
        *,
        size: int | None = None,
        seed: int = 0,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.spec = scene_spec(task)
        self.task = task
        split = "test" if split == "val" else split
        if split not in _SPLIT_CODE:
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        self.split = split
        self.size = check_int("size", size) if size is not None else _DEFAULT_SIZE[split]
        self.seed = check_int("seed", seed, 0)
        self.images, self.labels = _source(split, data_dir)

    def __len__(self) -> int:
        return self.size

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, _SPLIT_CODE[self.split], i]))

    def scene(self, i: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Scene ``i`` as ``(canvas uint8 (64, 64), target, item classes)``."""
        if not 0 <= i < self.size:
            raise IndexError(f"scene index {i} out of range for {self.size} scenes")
        rng = self._rng(i)
        canvas = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
        if self.task == "segmentation":
            mask = np.zeros((CANVAS, CANVAS), dtype=np.int64)
            classes = []
            for _ in range(int(rng.integers(1, 5))):
                src = int(rng.integers(0, len(self.images)))
                top, left = (int(v) for v in rng.integers(0, CANVAS - 28 + 1, 2))
                item = self.images[src]
                on = item >= ITEM_THRESHOLD
                canvas[top : top + 28, left : left + 28][on] = item[on]
                mask[top : top + 28, left : left + 28][on] = int(self.labels[src]) + 1
                classes.append(int(self.labels[src]))
            return canvas, mask, classes
        src = int(rng.integers(0, len(self.images)))
        side = round(28 * float(rng.uniform(0.75, 2.0)))
        top, left = (int(v) for v in rng.integers(0, CANVAS - side + 1, 2))
        item = torch.from_numpy(self.images[src].astype(np.float32))[None, None]
        resized = torch.nn.functional.interpolate(item, size=(side, side), mode="bilinear", align_corners=False)
        big = np.clip(np.rint(resized[0, 0].numpy()), 0, 255).astype(np.uint8)
        on = big >= ITEM_THRESHOLD
        if not on.any():  # an item with no bright pixel: its whole square
            on[:] = True
        canvas[top : top + side, left : left + side][on] = big[on]
        rows, cols = np.nonzero(on)
        box = np.array(
            [left + cols.min(), top + rows.min(), left + cols.max() + 1, top + rows.max() + 1], dtype=np.float32
        )
        return canvas, box / CANVAS, [int(self.labels[src])]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        canvas, target, _ = self.scene(int(i))
        x = torch.from_numpy(canvas.astype(np.float32) / GRID)[None]
        return x, torch.from_numpy(target)


def load_scenes(
    task: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    size: int | None = None,
    seed: int = 0,
) -> FashionScenes:
    """The Fashion-MNIST scenes of ``task`` and ``split`` (see :class:`FashionScenes`)."""
    return FashionScenes(task, split, size=size, seed=seed, data_dir=data_dir)
