"""Certify a split of Fashion-MNIST scenes for segmentation or localization, with resumable logs.

One row per image (:data:`~smoothcert.io.logs.SEGMENTATION_COLUMNS`,
:data:`~smoothcert.io.logs.LOCALIZATION_COLUMNS`). Scene ``idx`` draws its noise from
:func:`smoothcert.runs.certify.example_generator` seeded with ``(seed, idx)``, so a row depends
only on the settings and the index: a run can be interrupted and resumed without changing any
row (except its ``time``). Several thresholds ``taus`` (segmentation) or radii (localization)
share one sampling run and write one log each (:func:`task_log_paths`); the ``time`` of each of
those rows is the whole image's cost. Design notes: ``docs/tasks.md`` §6.

Noise is drawn in sound mode on the scenes' 8-bit grid (``i / 255``) unless ``float_noise`` is set
(``--float-noise``); the log's identity records ``sound`` and ``grid``, so a log is resumed only
in the mode that wrote it (``docs/tasks.md`` §8). The smoothed model is built with ``sound=True``
or ``sound=False``, never the library's default ``"auto"``: every row of a log is in the mode its
identity names, and a scene off the grid is refused in sound mode rather than certified in float mode.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothcert.core import percentile as pct
from smoothcert.core import segmentation as seg
from smoothcert.core.checks import check_alpha, check_float_draws, check_int, check_sigma
from smoothcert.core.errors import ConfigError, ResultFileError
from smoothcert.io.checkpoints import checkpoint_sha256, load_model, versions
from smoothcert.io.logs import (
    LOCALIZATION_COLUMNS,
    SEGMENTATION_COLUMNS,
    ResultWriter,
    merge_parts,
    part_path,
    read_resumable,
    read_sidecar,
    sidecar_path,
)
from smoothcert.io.scenes import GRID, SCENE_TASKS, SCENES_NAME, FashionScenes
from smoothcert.models.dense import register_task_architectures
from smoothcert.runs.certify import example_generator, select_indices
from smoothcert.runs.resume import FLOAT32_SAMPLER, float64_stream_refusal, float_sampler_version
from smoothcert.runtime.devices import resolve_device
from smoothcert.runtime.distributed import DistContext
from smoothcert.runtime.progress import progress
from smoothcert.smoothing.noises import Gaussian
from smoothcert.smoothing.regression import SmoothedRegressor, box_iou, worst_case_iou
from smoothcert.smoothing.segmentation import SmoothedSegmenter

BOX_KEYS = ("x0", "y0", "x1", "y1")

__all__ = ["TaskRunConfig", "run_task", "segmentation_row", "task_log_paths"]


@dataclass(frozen=True)
class TaskRunConfig:
    """Settings of ``smoothcert certify --task segmentation|localization``.

    ``taus`` (segmentation) and ``radii`` (localization) may hold several values: one log each.
    ``float_noise`` draws floating-point noise instead of sound mode's noise on the 8-bit grid;
    ``float_draws`` then picks the Gaussian's float32 (default) or float64 (0.2's) draws.
    """

    task: str
    model: str
    out: str
    split: str = "test"
    sigma: float | None = None  # None: the model's training sigma
    n0: int = 100
    n: int = 1000
    alpha: float = 0.001
    taus: tuple[float, ...] = (0.75,)
    radii: tuple[float, ...] = (0.25,)
    percentile: float = 0.5
    batch: int = 1000
    skip: int = 1
    max: int | None = None
    seed: int = 0
    scenes_seed: int = 0
    scenes_size: int | None = None
    device: str = "auto"
    data_dir: str | None = None
    threads: int | None = None
    overwrite: bool = False
    progress: bool = True
    float_noise: bool = False
    float_draws: str = "float32"

    @property
    def sound(self) -> bool:
        """Sound mode (noise on the 8-bit grid): the default; ``--float-noise`` turns it off."""
        return not self.float_noise

    def __post_init__(self) -> None:
        if self.task not in SCENE_TASKS:
            raise ConfigError(f"task must be one of {', '.join(SCENE_TASKS)}, got {self.task!r}")
        for name in ("n0", "n", "batch", "skip"):
            check_int(name, getattr(self, name))
        check_int("seed", self.seed, 0)
        check_int("scenes_seed", self.scenes_seed, 0)
        check_alpha(self.alpha)
        if self.max is not None:
            check_int("max", self.max)
        if self.sigma is not None:
            check_sigma(self.sigma)
        values = self.taus if self.task == "segmentation" else self.radii
        if not values:
            raise ConfigError(f"{'taus' if self.task == 'segmentation' else 'radii'} must not be empty")
        object.__setattr__(self, "taus", tuple(seg.check_tau(t) for t in self.taus))
        object.__setattr__(self, "radii", tuple(pct.check_radius(r) for r in self.radii))
        pct.check_percentile(self.percentile)
        if check_float_draws(self.float_draws) != "float32" and not self.float_noise:
            raise ConfigError(f"float_draws={self.float_draws!r} applies to float mode only: add --float-noise")


def task_log_paths(config: TaskRunConfig) -> dict[float, Path]:
    """The log of each tau (segmentation) or radius (localization): ``out`` itself for a single value,
    else ``STEM_tau0.9.SUFFIX`` / ``STEM_r0.25.SUFFIX`` beside it."""
    out = Path(config.out)
    values, tag = (config.taus, "tau") if config.task == "segmentation" else (config.radii, "r")
    if len(values) == 1:
        return {values[0]: out}
    return {v: out.with_name(f"{out.stem}_{tag}{v:g}{out.suffix}") for v in values}


def _counts(values: np.ndarray, num: int) -> str:
    return ",".join(str(int(c)) for c in np.bincount(values.reshape(-1), minlength=num))


def segmentation_row(
    idx: int, labels: np.ndarray, selected: np.ndarray, mask: np.ndarray, *, num_classes: int
) -> dict[str, Any]:
    """The metric fields of a segmentation row by column name (``time`` and settings filled in by the caller).

    ``labels`` and ``selected`` are at full resolution, like ``mask``; returns
    ``idx, certified_correct, abstain, selected_correct, pixels, tp, gt, pred, gt_certified``.
    """
    certified = labels >= 0
    correct = certified & (labels == mask)
    return {
        "idx": idx,
        "certified_correct": repr(float(correct.mean())),
        "abstain": repr(float(1.0 - certified.mean())),
        "selected_correct": repr(float((selected == mask).mean())),
        "pixels": int(mask.size),
        "tp": _counts(mask[correct], num_classes),
        "gt": _counts(mask, num_classes),
        "pred": _counts(labels[certified], num_classes),
        "gt_certified": _counts(mask[certified], num_classes),
    }


def _load(config: TaskRunConfig, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    register_task_architectures()
    model, meta = load_model(config.model, device=device)
    task = meta.get("task", "classification")
    if task != config.task:
        raise ConfigError(
            f"--task {config.task} needs a {config.task} model, but {config.model!r} is a {task} model "
            f"(its model.json says task={meta.get('task')!r})"
        )
    return model, meta


def _legacy_identity(path: Path, identity: dict[str, Any], *, sound: bool) -> dict[str, Any]:
    """The identity to resume ``path`` with: ``identity``, or for a log written before sound mode
    (its identity records no ``sound``: smoothcert 0.2, float noise) the same without ``sound``/``grid``
    in float mode; in sound mode such a log is refused, naming ``--float-noise``. A float-mode log
    of float64 draws (0.2: no ``sampler``) is refused under float32 draws, naming ``--float-draws``."""
    old = (read_sidecar(path) or {}).get("identity") if path.exists() else None
    refusal = float64_stream_refusal(path, old, identity) if isinstance(old, dict) else None
    if refusal is not None:
        raise ResultFileError(refusal)
    if not isinstance(old, dict) or "sound" in old:
        return identity
    if sound:
        raise ResultFileError(
            f"{path} was written with floating-point noise before sound mode became the default "
            "(its sidecar records no 'sound'); resume it with --float-noise --float-draws float64, "
            "or pass --overwrite to replace it, or choose another --out"
        )
    return {k: v for k, v in identity.items() if k not in ("sound", "grid")}


def run_task(config: TaskRunConfig, dist: DistContext | None = None) -> dict[float, Path]:
    """Certify the selected scenes; returns the complete log of each tau or radius.

    Under ``torchrun`` (``dist`` with several ranks) each rank certifies every ``world_size``-th
    remaining scene into part files, and rank 0 merges them into logs identical to a single
    process's (as ``smoothcert certify`` does for classification).
    """
    dist = dist or DistContext.single()
    if config.threads is not None:
        torch.set_num_threads(check_int("threads", config.threads))
    device = dist.device if dist.world_size > 1 else resolve_device(config.device)
    model, meta = _load(config, device)
    model = model.to(memory_format=torch.channels_last)
    sigma = config.sigma if config.sigma is not None else float(meta["sigma"])
    dataset = FashionScenes(
        config.task, config.split, size=config.scenes_size, seed=config.scenes_seed, data_dir=config.data_dir
    )
    indices = select_indices(len(dataset), skip=config.skip, max_examples=config.max)
    base = {
        "task": config.task,
        "model_sha256": checkpoint_sha256(config.model),
        "dataset": SCENES_NAME,
        "split": config.split,
        "scenes_seed": config.scenes_seed,
        "sigma": sigma,
        "n": config.n,
        "alpha": config.alpha,
        "seed": config.seed,
        "device_type": device.type,
        "sound": config.sound,
        "grid": GRID if config.sound else None,
    }
    noise = Gaussian(sigma, draws=config.float_draws)  # float mode's draws (sound mode draws on the grid)
    if float_sampler_version(noise, sound=config.sound) == FLOAT32_SAMPLER:  # recorded only for the new stream
        base["sampler"] = FLOAT32_SAMPLER
    if config.task == "segmentation":
        base["n0"] = config.n0
    else:
        base["percentile"] = config.percentile
    if max(config.n, config.n0) > config.batch:  # the batch size splits an example's noise stream
        base["batch"] = config.batch
    key = "tau" if config.task == "segmentation" else "radius"
    columns = SEGMENTATION_COLUMNS if config.task == "segmentation" else LOCALIZATION_COLUMNS
    paths = task_log_paths(config)
    writers: dict[float, ResultWriter] = {}
    sidecars: dict[float, dict[str, Any]] = {}
    finished: dict[float, set[int]] = {}
    if config.overwrite and dist.world_size > 1 and dist.is_main:  # the old logs and sidecars both go
        for path in paths.values():
            for stale in (path, sidecar_path(path)):
                stale.unlink(missing_ok=True)
    if dist.world_size > 1:
        dist.barrier()
    try:
        for value, path in paths.items():
            identity = {**base, key: value}
            if not config.overwrite:
                identity = _legacy_identity(path, identity, sound=config.sound)
            sidecar = {
                "identity": identity,
                "config": asdict(config),
                "model": meta,
                "versions": versions(),
                "torch_threads": torch.get_num_threads(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            sidecars[value] = sidecar
            log_path = path
            if dist.world_size > 1:  # each rank its part file; the scenes already in the final log are skipped
                log_path = part_path(path, dist.rank, dist.world_size)
                finished[value] = (
                    {int(r[0]) for r in read_resumable(path, columns, identity)} if path.exists() else set()
                )
            writers[value] = ResultWriter(log_path, columns, sidecar=sidecar, overwrite=config.overwrite)
        mine = indices[dist.rank :: dist.world_size] if dist.world_size > 1 else indices
        todo = [i for i in mine if any(i not in w.done and i not in finished.get(v, set()) for v, w in writers.items())]
        shape = tuple(meta["input_shape"])
        bar = progress(
            total=len(todo), desc=f"certify --task {config.task}", unit="img", enabled=config.progress and dist.is_main
        )
        # explicitly sound=True (an off-grid scene is refused, never certified in float mode behind
        # the log's back) or sound=False, never the library's per-input "auto"
        mode: dict[str, Any] = {"sound": True, "grid": GRID} if config.sound else {"sound": False, "noise": noise}
        if config.task == "segmentation":
            factor = int(meta.get("output_factor") or 1)
            smoothed: Any = SmoothedSegmenter(
                model,
                int(meta["num_classes"]),
                sigma,
                device=device,
                input_shape=shape,
                output_shape=(shape[1] // factor, shape[2] // factor),
                channels_last=True,
                **mode,
            )
        else:
            smoothed = SmoothedRegressor(model, sigma, device=device, input_shape=shape, channels_last=True, **mode)
        for idx in todo:
            x, target = dataset[idx]
            gen = example_generator(config.seed, idx, device)
            began = time.perf_counter()
            if config.task == "segmentation":
                certs = smoothed.certify_taus(
                    x,
                    n0=config.n0,
                    n=config.n,
                    alpha=config.alpha,
                    taus=config.taus,
                    batch_size=config.batch,
                    generator=gen,
                )
                elapsed = f"{time.perf_counter() - began:.6f}"
                mask = target.numpy()
                for tau, c in zip(config.taus, certs, strict=True):
                    if idx in writers[tau].done or idx in finished.get(tau, set()):
                        continue
                    up = (mask.shape[0] // c.labels.shape[0], mask.shape[1] // c.labels.shape[1])
                    labels = np.repeat(np.repeat(c.labels, up[0], axis=0), up[1], axis=1)
                    selected = np.repeat(np.repeat(c.selected, up[0], axis=0), up[1], axis=1)
                    m = segmentation_row(idx, labels, selected, mask, num_classes=int(meta["num_classes"]))
                    row = {**m, "radius": repr(c.radius), "tau": repr(tau), "n": config.n, "n0": config.n0}
                    writers[tau].write([{**row, "time": elapsed}])
            else:
                rcerts = smoothed.certify_radii(
                    x,
                    n=config.n,
                    alpha=config.alpha,
                    radii=config.radii,
                    percentile=config.percentile,
                    batch_size=config.batch,
                    generator=gen,
                )
                elapsed = f"{time.perf_counter() - began:.6f}"
                truth = target.numpy().astype(np.float64)
                for r, c in zip(config.radii, rcerts, strict=True):
                    if idx in writers[r].done or idx in finished.get(r, set()):
                        continue
                    lrow: dict[str, Any] = {"idx": idx, "radius": repr(r), "n": config.n, "time": elapsed}
                    for prefix, box in (("est", c.estimate), ("lo", c.lower), ("hi", c.upper), ("true", truth)):
                        lrow.update({f"{prefix}_{k}": repr(float(v)) for k, v in zip(BOX_KEYS, box, strict=True)})
                    lrow["iou_clean"] = repr(worst_case_iou(c.lower, c.upper, c.estimate))
                    lrow["iou_truth"] = repr(worst_case_iou(c.lower, c.upper, truth))
                    lrow["est_iou_truth"] = repr(float(box_iou(c.estimate, truth)))
                    writers[r].write([lrow])
            bar.update(1)
        bar.close()
    finally:
        for w in writers.values():
            w.close()
    if dist.world_size > 1:
        dist.barrier()
        if dist.is_main:
            for value, path in paths.items():
                parts = [part_path(path, r, dist.world_size) for r in range(dist.world_size)]
                merge_parts(path, parts, columns, indices, sidecars[value])
        dist.barrier()
    return paths
