"""Training a base classifier under Gaussian data augmentation (paper Sec. 3.3, App. F; docs/statistics.md §9).

By default minimizes ``E_(x,y) E_eps CE(f(x + eps), y)`` with ``eps ~ N(0, sigma^2 I)`` drawn fresh
for every example in every batch, after the data set's crops and flips and before the model's own
normalization layer. SGD with a step schedule, the reference's defaults. ``method`` picks another
training objective (consistency, SmoothAdv, MACER; :mod:`smoothcert.training.objectives`), called once per batch.

A run directory holds ``checkpoint.safetensors`` (the last finished epoch, for resuming: weights,
optimizer state, and the run's identity and log rows in its metadata, replaced atomically;
:mod:`smoothcert.training.checkpoint`),
``train_log.tsv`` (one row per epoch, rewritten from the checkpoint) and at the end
``model.safetensors`` and ``model.json``. Under ``torchrun`` the batches are sharded with
DistributedDataParallel; each rank draws its own noise and augmentation (:func:`epoch_seeds`).
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from smoothcert.core.checks import check_int, check_positive, check_sigma
from smoothcert.core.errors import ConfigError
from smoothcert.core.radii import supported_norms
from smoothcert.io.checkpoints import save_model, versions
from smoothcert.io.data import get_spec, load_dataset
from smoothcert.models.architectures import build_model, upgrade_legacy_keys
from smoothcert.runtime.devices import eval_mode, resolve_device
from smoothcert.runtime.distributed import DistContext
from smoothcert.runtime.progress import progress
from smoothcert.smoothing.certificates import SmoothingWarning
from smoothcert.smoothing.noises import NOISES, make_noise
from smoothcert.training.checkpoint import CheckpointFormat, check_run_settings, resume, save_checkpoint, write_log
from smoothcert.training.objectives import METHODS, make_objective, resolve_params

__all__ = ["EpochSeeds", "TrainConfig", "epoch_seeds", "evaluate", "train"]

# fields of TrainConfig that change the trained weights; a run can only resume if they agree
_IDENTITY = (
    "dataset",
    "arch",
    "sigma",
    "batch",
    "lr",
    "momentum",
    "weight_decay",
    "lr_step",
    "gamma",
    "seed",
    "train_limit",
    "noise",
    "method",
    "method_params",
    "clip_grad",
)
# identity fields older checkpoints lack, with the value they implied
_ADDED_LATER: dict[str, Any] = {"noise": "gaussian", "method": "gaussian", "method_params": {}, "clip_grad": None}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of ``smoothcert train``; defaults are the 2019 reference code's (docs/statistics.md §9)."""

    dataset: str
    arch: str
    sigma: float
    out: str
    epochs: int = 90
    batch: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 30
    gamma: float = 0.1
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    train_limit: int | None = None
    data_dir: str | None = None
    progress: bool = True
    noise: str = "gaussian"
    channels_last: bool = True
    amp: str | None = None
    method: str = "gaussian"
    method_params: dict[str, Any] = field(default_factory=dict)  # completed with the paper's defaults
    clip_grad: float | None = None  # max L2 norm of the whole gradient per step (None: no clipping)

    def __post_init__(self) -> None:
        if self.sigma != 0:  # sigma = 0 trains an undefended baseline (e.g. for DeepFool)
            check_sigma(self.sigma)
        check_run_settings(self)
        if self.clip_grad is not None:
            check_positive("clip_grad", self.clip_grad)
        get_spec(self.dataset)
        if self.noise not in NOISES:
            raise ConfigError(f"noise must be one of {', '.join(NOISES)}, got {self.noise!r}")
        if self.amp not in (None, "bf16"):
            raise ConfigError(f"amp must be 'bf16' or None, got {self.amp!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "macer" and self.noise != "gaussian":
            raise ConfigError(f"method 'macer' needs gaussian noise (its radius is Gaussian's), got {self.noise!r}")
        if self.method == "smoothadv" and self.noise != "gaussian":
            warnings.warn(
                f"method 'smoothadv' trains against an L2 attack, but {self.noise} noise certifies "
                f"{'/'.join(n.capitalize() for n in supported_norms(self.noise))} radii: the attack does not "
                "target the certified norm",
                SmoothingWarning,
                stacklevel=3,
            )
        params = resolve_params(self.method, sigma=self.sigma, params=self.method_params)
        object.__setattr__(self, "method_params", params)
        make_objective(self.method, sigma=self.sigma, params=params)  # validates the values


def evaluate(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    sigma: float,
    device: torch.device,
    batch: int = 512,
    seed: int = 0,
    noise: str = "gaussian",
) -> tuple[float, float]:
    """Accuracy of ``model`` on clean inputs and on inputs with one fixed-seed draw of ``noise`` at ``sigma``."""
    sampler = make_noise(noise, sigma) if sigma else None
    loader = DataLoader(dataset, batch_size=batch, shuffle=False)
    gen = torch.Generator(device=device).manual_seed(seed)
    clean = noisy = total = 0
    with eval_mode(model), torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            clean += int((model(x).argmax(1) == y).sum())
            noisy_x = x + sampler.sample_(torch.empty_like(x), gen) if sampler is not None else x
            noisy += int((model(noisy_x).argmax(1) == y).sum())
            total += len(y)
    return clean / max(total, 1), noisy / max(total, 1)


CHECKPOINT = CheckpointFormat(
    key="smoothcert_checkpoint",
    identity_field="config",
    log_header="epoch\tlr\ttrain_loss\ttrain_acc\ttest_clean_acc\ttest_noisy_acc\ttime",
    what="training run",
    added_later=_ADDED_LATER,
)


@dataclass(frozen=True)
class EpochSeeds:
    """The seeds of one epoch on one rank (see :func:`epoch_seeds`).

    ``shuffle`` is shared by all ranks (``DistributedSampler`` shards one permutation, so the shards
    stay disjoint); ``augment`` (crops and flips, in the main process and as the DataLoader workers'
    base seed) and ``noise`` (the Gaussian augmentation noise) are this rank's own.
    """

    shuffle: int
    augment: int
    noise: int


def epoch_seeds(seed: int, epoch: int, rank: int = 0) -> EpochSeeds:
    """Seeds of ``epoch`` on ``rank``, a pure function of ``(seed, epoch, rank)``.

    Each is the first 63 bits of ``numpy.random.SeedSequence(seed, spawn_key=(epoch, stream, rank))``
    with one stream number per purpose; the fixed-length spawn key keeps all of them distinct, so
    every rank draws its own noise and augmentation, and resuming an epoch draws the same again.
    """
    import numpy as np

    check_int("seed", seed, 0)
    check_int("epoch", epoch, 0)
    check_int("rank", rank, 0)

    def draw(stream: int, r: int) -> int:
        state = np.random.SeedSequence(seed, spawn_key=(epoch, stream, r)).generate_state(1, np.uint64)
        return int(state[0]) >> 1

    return EpochSeeds(shuffle=draw(0, 0), augment=draw(1, rank), noise=draw(2, rank))


def _saved_epochs(meta_path: Path) -> int | None:
    """The ``epochs`` recorded in a finished run's ``model.json``, or None when there is none."""
    try:
        return int(json.loads(meta_path.read_text())["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train(config: TrainConfig, dist: DistContext | None = None) -> dict[str, Any]:
    """Train (or resume training) a base classifier; returns the metadata written to ``model.json``."""
    dist = dist or DistContext.single()
    spec = get_spec(config.dataset)
    device = dist.device if dist.world_size > 1 else resolve_device(config.device)
    out = Path(config.out)
    train_set: Dataset[Any] = load_dataset(config.dataset, "train", config.data_dir, augment=True)
    test_set = load_dataset(config.dataset, "test", config.data_dir)
    if config.train_limit is not None:
        train_set = Subset(train_set, range(min(config.train_limit, len(train_set))))  # type: ignore[arg-type]

    torch.manual_seed(config.seed)
    model = build_model(
        config.arch, num_classes=spec.num_classes, in_channels=spec.input_shape[0], mean=spec.mean, std=spec.std
    ).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    identity = {k: getattr(config, k) for k in _IDENTITY}
    start, log = resume(
        out,
        CHECKPOINT,
        model=model,
        optimizer=optimizer,
        identity=identity,
        epochs=config.epochs,
        upgrade=lambda state: upgrade_legacy_keys(config.arch, state),
    )
    if config.channels_last and len(spec.input_shape) == 3:
        model = model.to(memory_format=torch.channels_last)  # speed only: same function, other kernels
    net: nn.Module = dist.wrap(model)
    noise = make_noise(config.noise, config.sigma) if config.sigma else None
    objective = make_objective(config.method, sigma=config.sigma, params=config.method_params)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if config.amp == "bf16" else contextlib.nullcontext()

    if dist.is_main:
        write_log(out, CHECKPOINT, log)  # the log is derived from the checkpoint: rows of unfinished epochs go
    clean_acc = noisy_acc = float("nan")
    for epoch in range(start + 1, config.epochs + 1):
        began = time.perf_counter()
        lr = config.lr * config.gamma ** ((epoch - 1) // config.lr_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seeds = epoch_seeds(config.seed, epoch, dist.rank)  # fixed per epoch, so resuming repeats them
        torch.manual_seed(seeds.augment)  # crops and flips drawn in this process (workers=0)
        noise_gen = torch.Generator(device=device).manual_seed(seeds.noise)
        # alone, the loader's generator shuffles; it also seeds the DataLoader workers' augmentation
        order = torch.Generator().manual_seed(seeds.shuffle if dist.world_size <= 1 else seeds.augment)
        sampler = dist.sampler(train_set, seed=seeds.shuffle)
        loader = DataLoader(
            train_set,
            batch_size=config.batch,
            shuffle=sampler is None,
            sampler=sampler,
            generator=order,
            num_workers=config.workers,
            drop_last=False,
            pin_memory=device.type == "cuda",
        )
        net.train()
        seen = correct = 0
        loss_sum = 0.0
        term_sums: dict[str, float] = {}
        bar = progress(
            loader,
            total=len(loader),
            enabled=config.progress and dist.is_main,
            desc=f"epoch {epoch}/{config.epochs}",
            leave=False,
            unit="batch",
            fraction=0.25,
        )
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with amp:  # fresh noise per example per batch, from this rank's own stream
                result = objective(net, x, y, noise=noise, generator=noise_gen, epoch=epoch)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            if config.clip_grad is not None:  # the gradient of all parameters together, as one vector
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            optimizer.step()
            seen += len(y)
            correct += int((result.scores.argmax(1) == y).sum())
            loss_sum += float(result.loss.detach()) * len(y)
            for name, value in result.terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + float(value) * len(y)
            if bar is not loader:
                shown = {k: f"{v / seen:.3f}" for k, v in term_sums.items()} if len(term_sums) > 1 else {}
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", **shown, acc=f"{correct / seen:.3f}")
        if dist.is_main:
            clean_acc, noisy_acc = evaluate(model, test_set, sigma=config.sigma, device=device, noise=config.noise)
            fields = [f"{lr:.6g}", *(f"{v:.6f}" for v in (loss_sum / seen, correct / seen, clean_acc, noisy_acc))]
            fields.append(f"{time.perf_counter() - began:.3f}")
            save_checkpoint(
                out, CHECKPOINT, model=model, optimizer=optimizer, epoch=epoch, identity=identity, log=log, row=fields
            )
            if config.progress:
                print(
                    f"epoch {epoch}: loss {loss_sum / seen:.4f}, train acc {correct / seen:.4f}, "
                    f"test acc clean {clean_acc:.4f} / noisy {noisy_acc:.4f}",
                    flush=True,
                )
        dist.barrier()

    meta_path = out / "model.json"
    # model.json is written last: it is current only when it names this epoch count (a crash
    # between save_model's two renames leaves an older one, or none)
    if dist.is_main and not (start >= config.epochs and _saved_epochs(meta_path) == config.epochs):
        if clean_acc != clean_acc:  # resumed after the last epoch without a current model.json: evaluate now
            clean_acc, noisy_acc = evaluate(model, test_set, sigma=config.sigma, device=device, noise=config.noise)
        meta = {
            "arch": config.arch,
            "dataset": config.dataset,
            "num_classes": spec.num_classes,
            "input_shape": list(spec.input_shape),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "sigma": config.sigma,
            "noise": config.noise,
            "method": config.method,
            "method_params": config.method_params,
            "epochs": config.epochs,
            "clean_accuracy": clean_acc,
            "noisy_accuracy": noisy_acc,
            "train_config": {k: v for k, v in asdict(config).items() if k != "progress"},
            "versions": versions(),
        }
        save_model(out, model, meta)
    dist.barrier()
    return dict(json.loads(meta_path.read_text()))
