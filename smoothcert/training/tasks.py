"""Training the dense-task base models under Gaussian noise: segmentation and localization.

As for classifiers (Cohen et al. 2019, Sec. 3.3), the base model is trained on noisy inputs
``x + eps``, ``eps ~ N(0, sigma^2 I)`` drawn fresh for every example in every batch, so that the
smoothed model is accurate. Segmentation minimizes the per-pixel cross-entropy (the half-
resolution scores of :class:`~smoothcert.models.dense.SmallFCN` applied to each pixel of their
2x2 block); localization minimizes the L1 distance between the predicted and true boxes (Chiang
et al. 2020 train their detectors under noise the same way). Adam, a short loop, no resuming:
a run takes minutes on a CPU. The result is a model directory written by
:func:`smoothcert.io.checkpoints.save_model` whose ``model.json`` records the task, architecture,
sigma and data set (``docs/tasks.md`` §5).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from smoothcert.core.checks import check_int
from smoothcert.core.errors import ConfigError
from smoothcert.io.checkpoints import save_model, versions
from smoothcert.io.scenes import SCENE_TASKS, SCENES_NAME, FashionScenes, scene_spec
from smoothcert.models.dense import TASK_ARCHITECTURES, build_task_model, register_task_architectures
from smoothcert.runtime.devices import eval_mode, resolve_device

__all__ = ["DEFAULT_ARCH", "TaskTrainConfig", "evaluate_task", "task_loss", "train_task"]

DEFAULT_ARCH = {"segmentation": "small_fcn", "localization": "box_regressor"}
SEGMENTATION_FACTOR = 2  # SmallFCN scores one 2x2 block of pixels per output


@dataclass(frozen=True)
class TaskTrainConfig:
    """Settings of ``smoothcert train --task segmentation|localization``."""

    task: str
    sigma: float
    out: str
    arch: str | None = None  # default: DEFAULT_ARCH[task]
    epochs: int = 2
    batch: int = 64
    lr: float = 1e-3
    train_size: int = 10_000
    test_size: int = 500
    seed: int = 0
    scenes_seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in SCENE_TASKS:
            raise ConfigError(f"task must be one of {', '.join(SCENE_TASKS)}, got {self.task!r}")
        if not (isinstance(self.sigma, (int, float)) and self.sigma >= 0):
            raise ConfigError(f"sigma must be >= 0, got {self.sigma!r}")
        arch = self.arch or DEFAULT_ARCH[self.task]
        if arch not in TASK_ARCHITECTURES:
            raise ConfigError(f"arch must be one of {', '.join(TASK_ARCHITECTURES)}, got {arch!r}")
        if (arch == "small_fcn") != (self.task == "segmentation"):
            raise ConfigError(f"arch {arch!r} does not fit task {self.task!r}")
        object.__setattr__(self, "arch", arch)
        for name in ("epochs", "batch", "train_size", "test_size"):
            check_int(name, getattr(self, name))
        check_int("seed", self.seed, 0)
        check_int("scenes_seed", self.scenes_seed, 0)
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")


def full_resolution(scores: torch.Tensor, factor: int = SEGMENTATION_FACTOR) -> torch.Tensor:
    """Scores of ``(b, C, h, w)`` blocks repeated over each block's ``factor x factor`` pixels."""
    return scores.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def task_loss(task: str, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy (segmentation) or mean L1 box distance (localization)."""
    if task == "segmentation":
        return nn.functional.cross_entropy(full_resolution(outputs), target)
    return (outputs - target).abs().sum(dim=1).mean()


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih

    def area(x: torch.Tensor) -> torch.Tensor:
        return (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)

    return inter / (area(a) + area(b) - inter).clamp(min=1e-12)


def evaluate_task(
    task: str, model: nn.Module, dataset: Any, *, sigma: float, device: torch.device, seed: int = 0, batch: int = 128
) -> dict[str, float]:
    """Clean and one-draw noisy quality of ``model``: pixel accuracy and mIoU, or mean box IoU."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=False)
    gen = torch.Generator(device=device).manual_seed(seed)
    num = scene_spec(task).num_outputs
    sums = {"clean": np.zeros((3, num)), "noisy": np.zeros((3, num))}  # segmentation: tp, truth, predicted
    ious = {"clean": 0.0, "noisy": 0.0}
    correct = {"clean": 0, "noisy": 0}
    total = 0
    with eval_mode(model), torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            noise = torch.randn(x.shape, generator=gen, device=device) * sigma
            for kind, inp in (("clean", x), ("noisy", x + noise)):
                out = model(inp)
                if task == "segmentation":
                    pred = full_resolution(out).argmax(1)
                    correct[kind] += int((pred == y).sum())
                    tp = torch.bincount(y[pred == y].reshape(-1), minlength=num).cpu().numpy()
                    gt = torch.bincount(y.reshape(-1), minlength=num).cpu().numpy()
                    pr = torch.bincount(pred.reshape(-1), minlength=num).cpu().numpy()
                    sums[kind] += np.stack([tp, gt, pr])
                else:
                    ious[kind] += float(_box_iou(out, y).sum())
            total += int(y.numel()) if task == "segmentation" else len(y)
    if task == "segmentation":
        res = {}
        for kind in ("clean", "noisy"):
            tp, gt, pr = sums[kind]
            union = gt + pr - tp
            res[f"{kind}_pixel_accuracy"] = correct[kind] / max(total, 1)
            res[f"{kind}_miou"] = float(np.mean(tp[union > 0] / union[union > 0]))
        return res
    return {f"{kind}_mean_iou": ious[kind] / max(total, 1) for kind in ("clean", "noisy")}


def train_task(config: TaskTrainConfig) -> dict[str, Any]:
    """Train a segmenter or box regressor on Fashion-MNIST scenes; returns the ``model.json`` metadata."""
    if config.threads is not None:
        torch.set_num_threads(check_int("threads", config.threads))
    register_task_architectures()
    spec = scene_spec(config.task)
    device = resolve_device(config.device)
    train_set = FashionScenes(
        config.task, "train", size=config.train_size, seed=config.scenes_seed, data_dir=config.data_dir
    )
    test_set = FashionScenes(
        config.task, "test", size=config.test_size, seed=config.scenes_seed, data_dir=config.data_dir
    )
    torch.manual_seed(config.seed)
    assert config.arch is not None
    model = build_task_model(
        config.arch, num_outputs=spec.num_outputs, in_channels=spec.input_shape[0], mean=spec.mean, std=spec.std
    ).to(device)
    model = model.to(memory_format=torch.channels_last)  # speed only
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    order = torch.Generator().manual_seed(config.seed + 2)
    log = []
    for epoch in range(1, config.epochs + 1):
        began = time.perf_counter()
        loader = DataLoader(train_set, batch_size=config.batch, shuffle=True, generator=order)
        model.train()
        loss_sum, seen = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            noisy = x + torch.randn(x.shape, generator=noise_gen, device=device) * config.sigma
            loss = task_loss(config.task, model(noisy.contiguous(memory_format=torch.channels_last)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            seen += len(y)
        metrics = evaluate_task(config.task, model, test_set, sigma=config.sigma, device=device)
        row = {"epoch": epoch, "train_loss": loss_sum / seen, **metrics, "time": time.perf_counter() - began}
        log.append(row)
        if config.progress:
            print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    meta = {
        "task": config.task,
        "arch": config.arch,
        "dataset": SCENES_NAME,
        "num_classes": spec.num_outputs,  # number of outputs; the name load_model reads
        "input_shape": list(spec.input_shape),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "sigma": config.sigma,
        "noise": "gaussian",
        "epochs": config.epochs,
        "output_factor": SEGMENTATION_FACTOR if config.task == "segmentation" else None,
        "metrics": log[-1] if log else {},
        "train_log": log,
        "train_config": {k: v for k, v in asdict(config).items() if k != "progress"},
        "versions": versions(),
    }
    save_model(Path(config.out), model, meta)
    return meta
