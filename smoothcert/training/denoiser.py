"""Denoised smoothing (Salman et al., NeurIPS 2020): a trained denoiser in front of a frozen classifier.

Smoothing ``z -> f(D(z))`` certifies a classifier ``f`` that was never trained under noise: the
denoiser ``D`` (a :class:`~smoothcert.models.denoisers.DnCNN`) is trained at one ``sigma`` with ``f`` frozen,
on one of the paper's objectives (Sec. 3.1):

* ``mse``: ``E ||D(x + eps) - x||^2`` (mean over pixels), the classifier is not used;
* ``stability``: ``E CE(f(D(x + eps)), f_hat(x))`` with ``f_hat(x) = argmax f(x)`` the classifier's
  own label on the clean image (gradients flow through the frozen ``f`` into ``D``).

``eps ~ N(0, sigma^2 I)`` in pixel space. A run directory holds ``checkpoint.safetensors`` (last
finished epoch: weights, Adam state, identity and log in its metadata, replaced atomically; a rerun
resumes it; :mod:`smoothcert.training.checkpoint`), ``train_log.tsv`` and at the end
``model.safetensors`` + ``model.json`` with ``kind: denoiser`` and the classifier's sha256.
:func:`load_denoiser` reads it back; :func:`smoothcert.models.denoisers.compose` builds ``f(D(.))``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from smoothcert.core.checks import check_int, check_sigma
from smoothcert.core.errors import ConfigError
from smoothcert.io.checkpoints import (
    check_compatible,
    checkpoint_sha256,
    load_denoiser,
    load_model,
    save_model,
    versions,
)
from smoothcert.io.data import load_dataset
from smoothcert.models.denoisers import DnCNN, compose
from smoothcert.runtime.devices import resolve_device
from smoothcert.runtime.progress import progress
from smoothcert.smoothing.noises import make_noise
from smoothcert.training.checkpoint import CheckpointFormat, check_run_settings, resume, save_checkpoint

__all__ = [
    "OBJECTIVES",
    "DenoiserConfig",
    "compose",
    "denoiser_loss",
    "load_denoiser",
    "train_denoiser",
]

OBJECTIVES = ("mse", "stability")
CHECKPOINT = CheckpointFormat(
    key="smoothcert_denoiser_checkpoint",
    identity_field="identity",
    log_header="epoch\tlr\ttrain_loss\ttest_mse\ttest_noisy_acc\ttime",
    what="denoiser run",
)
# fields of DenoiserConfig that change the trained weights; a run resumes only if they agree
_IDENTITY = ("sigma", "objective", "batch", "lr", "lr_step", "gamma", "depth", "width", "seed", "train_limit")


@dataclass(frozen=True)
class DenoiserConfig:
    """Settings of ``smoothcert train-denoiser``; Adam with a step schedule (Salman et al. 2020, App. A)."""

    classifier: str
    sigma: float
    out: str
    objective: str = "mse"
    epochs: int = 90
    batch: int = 128
    lr: float = 1e-3
    lr_step: int = 30
    gamma: float = 0.1
    depth: int = 17
    width: int = 64
    init: str | None = None  # start from this denoiser's weights (the paper fine-tunes MSE denoisers with stability)
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    train_limit: int | None = None
    data_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_sigma(self.sigma)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        check_run_settings(self)
        check_int("width", self.width, 1)
        check_int("depth", self.depth, 3)


def denoiser_loss(
    objective: str,
    denoiser: nn.Module,
    classifier: nn.Module,
    x: torch.Tensor,
    noisy: torch.Tensor,
) -> torch.Tensor:
    """The batch loss of ``objective`` for clean ``x`` and noisy ``noisy = x + eps`` (see the module docstring)."""
    denoised = denoiser(noisy)
    if objective == "mse":
        return F.mse_loss(denoised, x)
    if objective == "stability":
        with torch.no_grad():
            target = classifier(x).argmax(1)
        return F.cross_entropy(classifier(denoised), target)
    raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


def _evaluate(
    denoiser: nn.Module, classifier: nn.Module, dataset: Dataset[Any], *, sigma: float, device: torch.device
) -> tuple[float, float]:
    """Held-out MSE of ``D(x + eps)`` to ``x``, and accuracy of ``f(D(x + eps))``, for one fixed-seed draw."""
    gen = torch.Generator(device=device).manual_seed(0)
    noise = make_noise("gaussian", sigma)
    se = correct = total = pixels = 0.0
    was = denoiser.training
    denoiser.eval()
    with torch.inference_mode():
        for x, y in DataLoader(dataset, batch_size=256, shuffle=False):
            x, y = x.to(device), y.to(device)
            out = denoiser(x + noise.sample_(torch.empty_like(x), gen))
            se += float(((out - x) ** 2).sum())
            pixels += x.numel()
            correct += int((classifier(out).argmax(1) == y).sum())
            total += len(y)
    denoiser.train(was)
    return se / max(pixels, 1), correct / max(total, 1)


def train_denoiser(config: DenoiserConfig) -> dict[str, Any]:
    """Train (or resume) a denoiser in front of the frozen classifier ``config.classifier``; returns its model.json."""
    from smoothcert.training.loop import epoch_seeds

    device = resolve_device(config.device)
    classifier, cmeta = load_model(config.classifier, device=device)
    classifier.requires_grad_(False)  # frozen, in eval mode
    shape = [int(v) for v in cmeta["input_shape"]]
    train_set: Dataset[Any] = load_dataset(cmeta["dataset"], "train", config.data_dir, augment=True)
    test_set = load_dataset(cmeta["dataset"], "test", config.data_dir)
    if config.train_limit is not None:
        train_set = Subset(train_set, range(min(config.train_limit, len(train_set))))  # type: ignore[arg-type]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    denoiser = DnCNN(shape[0], depth=config.depth, width=config.width).to(device)
    identity = {k: getattr(config, k) for k in _IDENTITY}
    identity["classifier_sha256"] = checkpoint_sha256(config.classifier)
    if config.init is not None:
        init, init_meta = load_denoiser(config.init, device=device)
        check_compatible(init_meta, cmeta)
        if (int(init_meta["depth"]), int(init_meta["width"])) != (config.depth, config.width):
            raise ConfigError(
                f"--init denoiser has depth {init_meta['depth']} and width {init_meta['width']}, "
                f"but depth={config.depth} and width={config.width} were asked for"
            )
        denoiser.load_state_dict(init.state_dict())
        identity["init_sha256"] = checkpoint_sha256(config.init)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=config.lr)
    start, log = resume(out, CHECKPOINT, model=denoiser, optimizer=optimizer, identity=identity, epochs=config.epochs)
    noise = make_noise("gaussian", config.sigma)
    test_mse = test_acc = float("nan")
    for epoch in range(start + 1, config.epochs + 1):
        began = time.perf_counter()
        lr = config.lr * config.gamma ** ((epoch - 1) // config.lr_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seeds = epoch_seeds(config.seed, epoch)
        torch.manual_seed(seeds.augment)
        noise_gen = torch.Generator(device=device).manual_seed(seeds.noise)
        loader = DataLoader(
            train_set,
            batch_size=config.batch,
            shuffle=True,
            generator=torch.Generator().manual_seed(seeds.shuffle),
            num_workers=config.workers,
        )
        denoiser.train()
        seen, loss_sum = 0, 0.0
        bar = progress(
            loader,
            total=len(loader),
            enabled=config.progress,
            desc=f"epoch {epoch}/{config.epochs}",
            leave=False,
            unit="batch",
            fraction=0.25,
        )
        for x, _ in bar:
            x = x.to(device)
            noisy = x + noise.sample_(torch.empty_like(x), noise_gen)
            loss = denoiser_loss(config.objective, denoiser, classifier, x, noisy)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(x)
            loss_sum += float(loss.detach()) * len(x)
            if bar is not loader:
                bar.set_postfix(**{config.objective: f"{loss_sum / seen:.4f}"})
        test_mse, test_acc = _evaluate(denoiser, classifier, test_set, sigma=config.sigma, device=device)
        fields = [f"{lr:.6g}", *(f"{v:.6f}" for v in (loss_sum / max(seen, 1), test_mse, test_acc))]
        fields.append(f"{time.perf_counter() - began:.3f}")
        save_checkpoint(
            out, CHECKPOINT, model=denoiser, optimizer=optimizer, epoch=epoch, identity=identity, log=log, row=fields
        )
        if config.progress:
            print(f"epoch {epoch}: loss {loss_sum / max(seen, 1):.4f}, test mse {test_mse:.5f}, acc {test_acc:.4f}")
    if test_mse != test_mse:  # nothing left to train: evaluate the checkpoint
        test_mse, test_acc = _evaluate(denoiser, classifier, test_set, sigma=config.sigma, device=device)
    meta = {
        "kind": "denoiser",
        "arch": "dncnn",
        "depth": config.depth,
        "width": config.width,
        "input_shape": shape,
        "dataset": cmeta["dataset"],
        "sigma": config.sigma,
        "noise": "gaussian",
        "objective": config.objective,
        "epochs": config.epochs,
        "classifier": str(config.classifier),
        "classifier_sha256": identity["classifier_sha256"],
        "test_mse": test_mse,
        "test_noisy_accuracy": test_acc,
        "train_config": {k: v for k, v in asdict(config).items() if k != "progress"},
        "versions": versions(),
    }
    save_model(out, denoiser, meta)
    return meta
