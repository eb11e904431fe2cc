"""CERTIFY (fixed-n or sequential) and PREDICT over a data set split, with resumable logs and torchrun sharding.

Each example's noise comes from its own generator, seeded from ``(seed, idx)``, so a row
depends only on the seed, the example's index and the settings: a run can be interrupted and
resumed, or sharded over processes, without changing any row.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from smoothcert.core.checks import check_alpha, check_int, check_sigma
from smoothcert.io.checkpoints import checkpoint_sha256, load_model, versions
from smoothcert.io.data import load_dataset
from smoothcert.io.logs import (
    ADAPTIVE_COLUMNS,
    CERTIFY_COLUMNS,
    PREDICT_COLUMNS,
    ResultWriter,
    merge_parts,
    read_resumable,
    sidecar_path,
)
from smoothcert.runtime.devices import resolve_device
from smoothcert.runtime.distributed import DistContext
from smoothcert.runtime.perf import cpu_supports_bf16
from smoothcert.smoothing.classifier import SmoothedClassifier

__all__ = ["RunConfig", "example_generator", "run", "select_indices"]

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def select_indices(size: int, *, skip: int, max_examples: int | None) -> list[int]:
    """Every ``skip``-th index of a data set of ``size`` examples, at most ``max_examples`` of them."""
    return list(range(0, size, skip))[:max_examples]


def example_generator(seed: int, idx: int, device: torch.device) -> torch.Generator:
    """The generator for example ``idx``: seeded from ``(seed, idx)`` by numpy's SeedSequence."""
    state = np.random.SeedSequence([seed, idx]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass(frozen=True)
class RunConfig:
    """Settings of ``smoothcert certify`` / ``smoothcert predict``."""

    command: Literal["certify", "predict"]
    model: str
    out: str
    dataset: str | None = None
    data_dir: str | None = None
    split: str = "test"
    sigma: float | None = None
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch: int = 1000
    skip: int = 1
    max: int | None = None
    seed: int = 0
    device: str = "auto"
    amp: str | None = None
    channels_last: bool = True
    compile: bool = False
    overwrite: bool = False
    progress: bool = True
    pass_size: int | None = None  # None: measured (perf.choose_pass_size), at most batch
    noise: str | None = None  # None: the model's training noise
    norm: str = "l2"
    adaptive: bool = False  # sequential certification (max-radius mode unless radius is given)
    radius: float | None = None  # decision mode: is g robust at this radius?
    n_max: int | None = None  # sequential: largest estimation sample (default: n)
    beta: float | None = None  # sequential: futility level (default: alpha)
    radius_cap: float | None = None
    radius_tol: float | None = None
    eval_label: bool = False  # sequential: bound the true label's probability, no selection
    denoiser: str | None = None  # denoised smoothing: certify model(denoiser(.)) (Salman et al. 2020)

    def __post_init__(self) -> None:
        check_int("n0", self.n0)
        check_int("n", self.n)
        check_int("batch", self.batch)
        check_int("skip", self.skip)
        check_int("seed", self.seed, 0)
        check_alpha(self.alpha)
        if self.max is not None:
            check_int("max", self.max)
        if self.sigma is not None:
            check_sigma(self.sigma)
        if self.amp is not None and self.amp not in AMP:
            raise ValueError(f"amp must be one of {', '.join(AMP)}, got {self.amp!r}")
        if self.pass_size is not None:
            check_int("pass_size", self.pass_size)
        if self.n_max is not None:
            check_int("n_max", self.n_max)
        given = {
            "radius": self.radius is not None,
            "radius_cap": self.radius_cap is not None,
            "radius_tol": self.radius_tol is not None,
            "n_max": self.n_max is not None,
            "beta": self.beta is not None,
            "eval_label": self.eval_label,
        }
        if not self.adaptive and any(given.values()):
            names = ", ".join(k for k, v in given.items() if v)
            raise ValueError(f"{names} only apply to sequential certification: add adaptive=True (--adaptive)")
        if self.radius is not None and (self.radius_cap is not None or self.radius_tol is not None):
            raise ValueError("radius (decision mode) cannot be combined with radius_cap or radius_tol (max-radius)")
        if self.adaptive and self.command != "certify":
            raise ValueError("adaptive applies to certify only")


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ex", disable=not enabled or None, dynamic_ncols=True, smoothing=0.1)


def run(config: RunConfig, dist: DistContext | None = None) -> Path:
    """Certify or predict the selected examples of a split; returns the path of the complete log."""
    dist = dist or DistContext.single()
    device = dist.device if dist.world_size > 1 else resolve_device(config.device)
    if config.amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp 'fp16' needs a CUDA device, got {device.type!r}")
    if config.amp == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        raise ValueError("amp 'bf16' on CPU needs native bf16 instructions (AVX512-BF16 or AMX), which this CPU lacks")
    model, meta = load_model(config.model, device=device)
    denoiser_meta: dict[str, Any] | None = None
    if config.denoiser is not None:  # denoised smoothing: the base classifier is model(denoiser(z))
        from smoothcert.models.denoisers import compose
        from smoothcert.training.denoiser import check_compatible, load_denoiser

        denoiser, denoiser_meta = load_denoiser(config.denoiser, device=device)
        check_compatible(denoiser_meta, meta)
        model = compose(denoiser, model).eval()
    dataset_name = config.dataset or meta["dataset"]
    default_sigma = float((denoiser_meta or meta)["sigma"])  # a denoiser's sigma is the one it was trained for
    sigma = config.sigma if config.sigma is not None else default_sigma
    trained_noise = str(meta.get("noise", "gaussian"))
    noise = config.noise or trained_noise
    if noise != trained_noise:
        warnings.warn(
            f"certifying with {noise} noise a model trained with {trained_noise} noise", UserWarning, stacklevel=2
        )
    dataset = load_dataset(dataset_name, config.split, config.data_dir)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward: Any = torch.compile(model) if config.compile else model

    indices = select_indices(len(dataset), skip=config.skip, max_examples=config.max)  # type: ignore[arg-type]
    identity = {
        "command": config.command,
        "model_sha256": checkpoint_sha256(config.model),
        **({"denoiser_sha256": checkpoint_sha256(config.denoiser)} if config.denoiser is not None else {}),
        "dataset": dataset_name,
        "split": config.split,
        "sigma": sigma,
        "n": config.n,
        "alpha": config.alpha,
        "seed": config.seed,
        "device_type": device.type,
        "amp": config.amp,
        "compile": config.compile,
    }
    # noise stream and layout: the noise is drawn in a layout-independent way, so channels-last
    # and the pass size change speed only and are not part of the identity
    if noise != "gaussian" or config.norm != "l2":  # absent from Gaussian L2 identities, as before
        identity["noise"] = noise
        identity["norm"] = config.norm
    if config.command == "certify":
        identity["n0"] = config.n0
    n_max = (config.n_max or config.n) if config.adaptive else config.n
    if config.adaptive:
        identity.update(
            adaptive=True,
            radius=config.radius,
            n_max=n_max,
            beta=config.beta,
            radius_cap=config.radius_cap,
            radius_tol=config.radius_tol,
            eval_label=config.eval_label,
        )
        identity.pop("n")
        if config.eval_label:
            identity.pop("n0")
    largest = max(n_max, config.n0) if config.command == "certify" else config.n
    if largest > config.batch:  # the batch size splits an example's noise stream only when a draw exceeds it
        identity["batch"] = config.batch
    sidecar = {
        "identity": identity,
        "config": asdict(config),
        "model": meta,
        **({"denoiser": denoiser_meta} if denoiser_meta is not None else {}),
        "versions": versions(),
        "world_size": dist.world_size,
        "torch_threads": torch.get_num_threads(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    columns = (
        (ADAPTIVE_COLUMNS if config.adaptive else CERTIFY_COLUMNS) if config.command == "certify" else PREDICT_COLUMNS
    )
    out = Path(config.out)
    if dist.world_size > 1:
        part = out.with_name(f"{out.name}.part{dist.rank}-of-{dist.world_size}")
        if config.overwrite and dist.is_main:  # the old log and its sidecar (old identity) both go
            for stale in (out, sidecar_path(out)):
                stale.unlink(missing_ok=True)
        dist.barrier()
        done_before = {int(r[0]) for r in read_resumable(out, columns, identity)} if out.exists() else set()
        mine = [i for pos, i in enumerate(indices) if pos % dist.world_size == dist.rank and i not in done_before]
        target = part
    else:
        mine, target = indices, out

    smoothed = SmoothedClassifier(
        forward,
        int(meta["num_classes"]),
        sigma,
        device=device,
        input_shape=tuple(meta["input_shape"]),
        autocast_dtype=AMP[config.amp] if config.amp else None,
        channels_last=config.channels_last,
        pass_size=config.pass_size or "auto",
        noise=noise,
        norm=config.norm,
    )
    with ResultWriter(target, columns, sidecar=sidecar, overwrite=config.overwrite) as writer:
        todo = [i for i in mine if i not in writer.done]
        # Several examples share a forward pass only when each one's draws fit in a batch; otherwise
        # each example is written as soon as it is done, with its own time, so a crash loses at
        # most one example and the progress bar moves with every example.
        smallest_draw = min(config.n0, config.n) if config.command == "certify" else config.n
        per_pass = 1 if largest > config.batch else max(1, min(256, config.batch // smallest_draw))
        if config.adaptive:  # stages of many examples share passes: first stages fill a batch
            per_pass = max(1, min(256, config.batch // 64))
        bar = _progress(len(todo), config.progress and dist.is_main)
        # chunks are aligned to positions in the full index list, so a resumed run groups examples as before
        position = {idx: p for p, idx in enumerate(mine)}
        chunk: list[int] = []
        for idx in todo:
            chunk.append(idx)
            if position[idx] % per_pass == per_pass - 1 or idx == todo[-1]:
                writer.write(_process(smoothed, dataset, chunk, config, sigma, device))
                bar.update(len(chunk))
                chunk = []
        bar.close()
    if dist.world_size > 1:
        dist.barrier()
        if dist.is_main:
            parts = [out.with_name(f"{out.name}.part{r}-of-{dist.world_size}") for r in range(dist.world_size)]
            merge_parts(out, parts, columns, indices, sidecar)
        dist.barrier()
    return out


def _process(
    smoothed: SmoothedClassifier, dataset: Any, chunk: list[int], config: RunConfig, sigma: float, device: torch.device
) -> list[list[Any]]:
    items = [dataset[i] for i in chunk]
    xs = torch.stack([x for x, _ in items])
    labels = [int(y) for _, y in items]
    gens = [example_generator(config.seed, i, device) for i in chunk]
    began = time.perf_counter()
    rows: list[list[Any]] = []
    if config.adaptive:
        acerts = smoothed.certify_adaptive_batch(
            xs,
            alpha=config.alpha,
            n_max=config.n_max or config.n,
            batch_size=config.batch,
            radius=config.radius,
            n0=config.n0,
            beta=config.beta,
            radius_cap=config.radius_cap,
            radius_tol=config.radius_tol,
            labels=labels if config.eval_label else None,
            generator=gens,
        )
        elapsed = (time.perf_counter() - began) / len(chunk)
        for i, y, a in zip(chunk, labels, acerts, strict=True):
            rows.append(
                [
                    *(i, y, a.label, repr(a.radius), int(a.label == y), f"{elapsed:.6f}"),
                    *(a.n_used, a.decision, a.stage, repr(a.p_upper), a.count, a.n, a.n0, repr(a.p_lower), a.selected),
                ]
            )
    elif config.command == "certify":
        certs = smoothed.certify_batch(
            xs, n0=config.n0, n=config.n, alpha=config.alpha, batch_size=config.batch, generator=gens
        )
        elapsed = (time.perf_counter() - began) / len(chunk)
        for i, y, c in zip(chunk, labels, certs, strict=True):
            rows.append(
                [
                    i,
                    y,
                    c.label,
                    repr(c.radius),
                    int(c.label == y),
                    f"{elapsed:.6f}",
                    c.count,
                    c.n,
                    c.n0,
                    repr(c.p_lower),
                    c.selected,
                ]
            )
    else:
        preds = smoothed.predict_batch(xs, n=config.n, alpha=config.alpha, batch_size=config.batch, generator=gens)
        elapsed = (time.perf_counter() - began) / len(chunk)
        for i, y, p in zip(chunk, labels, preds, strict=True):
            rows.append(
                [i, y, p.label, int(p.label == y), f"{elapsed:.6f}", p.count, p.runner_up_count, p.n, repr(p.pvalue)]
            )
    return rows
