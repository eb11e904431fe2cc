"""Training a base classifier under Gaussian data augmentation (MATH.md §8).

Minimizes ``E_(x,y) E_eps CE(f(x + eps), y)`` with ``eps ~ N(0, sigma^2 I)`` drawn fresh for
every example in every batch, after the data set's crops and flips and before the model's own
normalization layer. SGD with a step schedule, the reference's defaults.

A run directory holds ``train_log.tsv`` (one row per epoch), ``checkpoint.safetensors`` and
``checkpoint.json`` (the last finished epoch, for resuming), and at the end ``model.safetensors``
and ``model.json``. Under ``torchrun`` the batches are sharded with DistributedDataParallel.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ._checks import check_int, check_sigma
from .data import get_spec, load_dataset
from .devices import resolve_device
from .distributed import DistContext
from .models import build_model, save_model, versions

__all__ = ["TrainConfig", "evaluate", "train"]

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
)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of ``smoothcert train``; defaults are the 2019 reference's (MATH.md §8)."""

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

    def __post_init__(self) -> None:
        if self.sigma != 0:  # sigma = 0 trains an undefended baseline (e.g. for DeepFool)
            check_sigma(self.sigma)
        for name in ("epochs", "batch", "lr_step"):
            check_int(name, getattr(self, name), 1)
        check_int("workers", self.workers, 0)
        check_int("seed", self.seed, 0)
        if self.train_limit is not None:
            check_int("train_limit", self.train_limit, 1)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        get_spec(self.dataset)


def evaluate(
    model: nn.Module, dataset: Dataset[Any], *, sigma: float, device: torch.device, batch: int = 512, seed: int = 0
) -> tuple[float, float]:
    """Accuracy of ``model`` on clean inputs and on inputs with one fixed-seed noise draw at ``sigma``."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=False)
    gen = torch.Generator(device=device).manual_seed(seed)
    clean = noisy = total = 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            clean += int((model(x).argmax(1) == y).sum())
            noise = torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype)
            noisy += int((model(x + sigma * noise).argmax(1) == y).sum())
            total += len(y)
    model.train(was_training)
    return clean / max(total, 1), noisy / max(total, 1)


def _progress(it: Iterable[Any], enabled: bool, **kw: Any) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, **kw)


def _save_checkpoint(
    out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, config: TrainConfig
) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"optim.{i}.momentum_buffer"] = buf.detach().cpu().contiguous()
    tmp = out / "checkpoint.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(out / "checkpoint.safetensors")
    meta = {"epoch": epoch, "config": {k: getattr(config, k) for k in _IDENTITY}}
    (out / "checkpoint.json.tmp").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "checkpoint.json.tmp").replace(out / "checkpoint.json")


def _load_checkpoint(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig) -> int:
    """Restore the last finished epoch from ``out``; returns it (0 when there is none)."""
    from safetensors.torch import load_file

    meta_path = out / "checkpoint.json"
    if not meta_path.exists():
        return 0
    meta = json.loads(meta_path.read_text())
    want = {k: getattr(config, k) for k in _IDENTITY}
    diff = {k: (meta["config"].get(k), v) for k, v in want.items() if meta["config"].get(k) != v}
    if diff:
        details = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in diff.items())
        raise ValueError(f"{out} holds a training run with a different configuration ({details}); use another --out")
    tensors = load_file(str(out / "checkpoint.safetensors"))
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        key = f"optim.{i}.momentum_buffer"
        if key in tensors:
            optimizer.state[p]["momentum_buffer"] = tensors[key].to(p.device)
    return int(meta["epoch"])


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
    start = _load_checkpoint(out, model, optimizer, config)
    net: nn.Module = dist.wrap(model)

    log_path = out / "train_log.tsv"
    if dist.is_main and (start == 0 or not log_path.exists()):
        log_path.write_text("epoch\tlr\ttrain_loss\ttrain_acc\ttest_clean_acc\ttest_noisy_acc\ttime\n")
    clean_acc = noisy_acc = float("nan")
    for epoch in range(start + 1, config.epochs + 1):
        began = time.perf_counter()
        lr = config.lr * config.gamma ** ((epoch - 1) // config.lr_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(
            config.seed * 100_003 + epoch
        )  # augmentation and noise: fixed per epoch, so resuming repeats them
        order = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        sampler = dist.sampler(train_set, seed=config.seed * 100_003 + epoch)
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
        bar = _progress(
            loader, config.progress and dist.is_main, desc=f"epoch {epoch}/{config.epochs}", leave=False, unit="batch"
        )
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            noisy = x + torch.randn_like(x) * config.sigma if config.sigma else x  # fresh noise per example per batch
            logits = net(noisy)
            loss = nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
            if bar is not loader:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        if dist.is_main:
            clean_acc, noisy_acc = evaluate(model, test_set, sigma=config.sigma, device=device)
            with log_path.open("a") as fh:
                fh.write(
                    f"{epoch}\t{lr:.6g}\t{loss_sum / seen:.6f}\t{correct / seen:.6f}\t"
                    f"{clean_acc:.6f}\t{noisy_acc:.6f}\t"
                    f"{time.perf_counter() - began:.3f}\n"
                )
            _save_checkpoint(out, model, optimizer, epoch, config)
            if config.progress:
                print(
                    f"epoch {epoch}: loss {loss_sum / seen:.4f}, train acc {correct / seen:.4f}, "
                    f"test acc clean {clean_acc:.4f} / noisy {noisy_acc:.4f}",
                    flush=True,
                )
        dist.barrier()

    meta_path = out / "model.json"
    if dist.is_main and not (start >= config.epochs and meta_path.exists()):
        if clean_acc != clean_acc:  # resumed after the last epoch without a model.json: evaluate now
            clean_acc, noisy_acc = evaluate(model, test_set, sigma=config.sigma, device=device)
        meta = {
            "arch": config.arch,
            "dataset": config.dataset,
            "num_classes": spec.num_classes,
            "input_shape": list(spec.input_shape),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "sigma": config.sigma,
            "epochs": config.epochs,
            "clean_accuracy": clean_acc,
            "noisy_accuracy": noisy_acc,
            "train_config": {k: v for k, v in asdict(config).items() if k != "progress"},
            "versions": versions(),
        }
        save_model(out, model, meta)
    dist.barrier()
    return dict(json.loads(meta_path.read_text()))
