"""CERTIFY (fixed-n or sequential) and PREDICT over a data set split, with resumable logs and torchrun sharding.

Each example's noise comes from its own generator, seeded from ``(seed, idx)``, so the noise an
example sees depends only on the seed, the example's index and the settings: a run can be
interrupted and resumed, or sharded over processes, and every example still sees the same noise.
What the base classifier computes from that noise may differ in its last bits with the memory
layout (channels-last or not) and the forward-pass size: logits differ by about 1e-7 between
NCHW and NHWC, or between batches of 512 and 100, on CPU. A vote on a near-tie can therefore
flip, and so can a row. Both settings are recorded in the sidecar (``layout``), not in the
log's identity: a run resumed with another layout is accepted, as the noise is unchanged.

Sound mode (``sound=True``, grid 255) is the default since 0.3; the identity records ``sound``
and ``grid`` always. A 0.2 float-mode log (no ``sound`` in its identity) continues only in float
mode (``--float-noise``), and a 0.2 sound-mode log is not continued (:func:`check_legacy_resume`).

The ``time`` column: an example certified alone (its draws exceed the batch) gets its own
wall-clock time; examples that share forward passes get the chunk's time split by their share
of the passes (:func:`shared_times`): equal shares for fixed-n rows, shares in proportion to
``n_used`` for sequential ones.

:func:`prepare` validates the whole configuration (settings, the sequential schedule, the
radius's reachability, the model against the data and the denoiser) before :func:`run` opens
any file, so a refused configuration leaves no log and no sidecar behind.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from smoothcert.core.errors import ConfigError
from smoothcert.io.checkpoints import check_compatible, checkpoint_sha256, load_denoiser, load_model, versions
from smoothcert.io.data import load_dataset
from smoothcert.io.logs import (
    ADAPTIVE_COLUMNS,
    CERTIFY_COLUMNS,
    CURVE_COLUMNS,
    PREDICT_COLUMNS,
    ResultWriter,
    merge_parts,
    part_path,
    read_resumable,
    sidecar_path,
)
from smoothcert.runs.config import AMP, SPLITS, RunConfig, as_config_error
from smoothcert.runs.resume import LEGACY, SOUND_RADII, check_legacy_resume, float_sampler_version
from smoothcert.runs.rows import certify_rows, example_generator, shared_times
from smoothcert.runtime.devices import resolve_device
from smoothcert.runtime.distributed import DistContext
from smoothcert.runtime.perf import cpu_supports_bf16
from smoothcert.runtime.progress import progress
from smoothcert.smoothing.adaptive import DEFAULT_RADIUS_RTOL
from smoothcert.smoothing.classifier import SmoothedClassifier
from smoothcert.smoothing.noises import Noise, make_noise

__all__ = [
    "AMP",
    "LEGACY",
    "SOUND_RADII",
    "SPLITS",
    "PreparedRun",
    "RunConfig",
    "as_config_error",
    "check_legacy_resume",
    "example_generator",
    "prepare",
    "run",
    "select_indices",
    "shared_times",
]


def _check_on_grid(smoothed: SmoothedClassifier, x: torch.Tensor, name: str) -> None:
    """Sound mode: refuse data off the grid in one line that names ``--float-noise``."""
    try:
        smoothed.check_on_grid(x, name=name)
    except ValueError as e:
        raise ConfigError(
            f"{' '.join(str(e).split())}; sound mode (the default) needs inputs on the grid i/{smoothed.grid}: "
            "pass --float-noise (Python: sound=False) to certify these inputs in float mode"
        ) from e


def select_indices(size: int, *, skip: int, max_examples: int | None) -> list[int]:
    """Every ``skip``-th index of a data set of ``size`` examples, at most ``max_examples`` of them."""
    return list(range(0, size, skip))[:max_examples]


def _progress(total: int, enabled: bool, command: str) -> Any:
    return progress(total=total, desc=command, unit="ex", enabled=enabled)


@dataclass(frozen=True)
class PreparedRun:
    """A validated run: everything :func:`run` needs, built before any file is opened."""

    config: RunConfig
    device: torch.device
    dataset: Any
    indices: list[int]
    smoothed: SmoothedClassifier
    sigma: float
    identity: dict[str, Any]
    sidecar: dict[str, Any]
    columns: tuple[str, ...]


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def _noise_and_sigma(
    config: RunConfig, meta: dict[str, Any], denoiser_meta: dict[str, Any] | None
) -> tuple[str, float]:
    """The noise and sigma to smooth with: the user's, else the denoiser's, else the model's; warnings on mismatch."""
    trained_noise = str(meta.get("noise", "gaussian"))
    if denoiser_meta is not None:  # the base classifier is model(denoiser(z)): the denoiser sets the defaults
        d_noise, d_sigma = str(denoiser_meta.get("noise", "gaussian")), float(denoiser_meta["sigma"])
        noise = config.noise or d_noise
        if noise != d_noise:
            _warn(f"smoothing with {noise} noise a denoiser trained to remove {d_noise} noise")
        if config.sigma is not None and config.sigma != d_sigma:
            _warn(f"smoothing at sigma={config.sigma:g} with a denoiser trained at sigma={d_sigma:g}")
        default_sigma = d_sigma
    else:
        noise = config.noise or trained_noise
        if noise != trained_noise:
            _warn(f"certifying with {noise} noise a model trained with {trained_noise} noise")
        default_sigma = float(meta["sigma"])
    if config.sigma is not None:
        return noise, config.sigma
    if not default_sigma > 0:
        raise ConfigError(
            f"model {config.model!r} was trained without noise (sigma={default_sigma:g}): "
            "pass --sigma or --denoiser (Python: sigma=..., denoiser=...)"
        )
    return noise, default_sigma


class _Upsampled:
    """A data set's images upsampled ``factor`` times by pixel repetition (``certify --lift``)."""

    def __init__(self, dataset: Any, factor: int) -> None:
        self.dataset, self.factor = dataset, factor

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from smoothcert.smoothing.lifting import upsample

        x, y = self.dataset[i]
        return upsample(x.unsqueeze(0), self.factor)[0], y


def _ensemble(
    config: RunConfig, model: torch.nn.Module, meta: dict[str, Any], device: torch.device
) -> tuple[torch.nn.Module, list[str]]:
    """The ensemble of ``model`` and ``config.ensemble``'s members, and the members' sha256 (Horvath et al. 2022)."""
    from smoothcert.models.ensemble import Ensemble

    members, hashes = [model], []
    for path in [p for p in str(config.ensemble).split(",") if p.strip()]:
        member, mmeta = load_model(path.strip(), device=device)
        for key in ("input_shape", "num_classes"):
            if mmeta.get(key) != meta.get(key):
                raise ConfigError(
                    f"ensemble member {path!r} has {key}={mmeta.get(key)!r} but --model has {meta.get(key)!r}"
                )
        if mmeta.get("dataset") != meta.get("dataset") or mmeta.get("sigma") != meta.get("sigma"):
            _warn(
                f"ensemble member {path!r} was trained on {mmeta.get('dataset')!r} at sigma={mmeta.get('sigma')} "
                f"but --model on {meta.get('dataset')!r} at sigma={meta.get('sigma')}"
            )
        members.append(member)
        hashes.append(checkpoint_sha256(path.strip()))
    if len(members) < 2:
        raise ConfigError(f"ensemble needs at least one further model directory, got {config.ensemble!r}")
    if config.consensus is not None and config.consensus > len(members):
        raise ConfigError(f"consensus={config.consensus} exceeds the ensemble's {len(members)} members")
    return Ensemble(members, combine=config.combine, consensus=config.consensus).to(device).eval(), hashes


def _require_reachable(name: str, radius: float, noise: Noise, norm: str, dim: int) -> None:
    """Refuse (before any file is written) a radius that no pA can certify with this noise, norm and dimension."""
    if not float(noise.threshold(radius, norm=norm, dim=dim)) < 1:
        raise ConfigError(
            f"{name}={radius!r} cannot be certified in {norm} with {noise.name} noise at "
            f"sigma={noise.sigma:g} for inputs of dimension {dim} at any pA"
        )


def _curve_identity(config: RunConfig, smoothed: SmoothedClassifier, dim: int) -> dict[str, Any]:
    """What fixes a curve log's rows: the reporting grid, the confidence sequence and the tolerances."""
    from smoothcert.smoothing.curve import default_radii

    grid = default_radii(smoothed, dim, config.radius_cap)
    if config.radius_cap is not None:
        _require_reachable("radius_cap", config.radius_cap, smoothed.noise, smoothed.norm, dim)
    return {
        "curve": True,
        "curve_radii": list(grid),
        "n_max": config.draws_limit,
        "beta": config.beta,
        "radius_tol": config.radius_tol,
        "confseq": "union",
        "eval_label": config.eval_label,
    }


def prepare(config: RunConfig, dist: DistContext | None = None) -> PreparedRun:
    """Validate the whole configuration and build the smoothed classifier; opens no file for writing.

    Refuses with a :class:`ConfigError` (or a :class:`~smoothcert.core.errors.CheckpointError`,
    or an ``OSError`` for missing files): an amp the device lacks, a model trained without
    noise and no sigma, a noise that does not certify the norm, a denoiser that does not fit
    the classifier, a split whose inputs are not the model's input shape, an empty selection,
    and a decision radius the noise cannot reach at any pA for this input dimension. Warns when
    the data set, noise or sigma differ from the model's or the denoiser's.
    """
    dist = dist or DistContext.single()
    with as_config_error():
        return _prepare(config, dist)


def _prepare(config: RunConfig, dist: DistContext) -> PreparedRun:
    device = dist.device if dist.world_size > 1 else resolve_device(config.device)
    if config.amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"amp 'fp16' needs a CUDA device, got {device.type!r}")
    if config.amp == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        raise ConfigError("amp 'bf16' on CPU needs native bf16 instructions (AVX512-BF16 or AMX), which this CPU lacks")
    model, meta = load_model(config.model, device=device)
    member_hashes: list[str] = []
    if config.ensemble is not None:
        model, member_hashes = _ensemble(config, model, meta, device)
    denoiser_meta: dict[str, Any] | None = None
    if config.denoiser is not None:  # denoised smoothing: the base classifier is model(denoiser(z))
        from smoothcert.models.denoisers import compose

        denoiser, denoiser_meta = load_denoiser(config.denoiser, device=device)
        check_compatible(denoiser_meta, meta)
        model = compose(denoiser, model).eval()
    noise, sigma = _noise_and_sigma(config, meta, denoiser_meta)
    diffusion: dict[str, Any] = {}  # diffusion denoised smoothing: model(D(z)), D one call of a diffusers UNet
    if config.diffusion is not None:
        from smoothcert.io.diffusion import load_diffusion_denoiser
        from smoothcert.models.denoisers import compose

        shape = tuple(int(v) for v in meta["input_shape"])
        den, diffusion = load_diffusion_denoiser(config.diffusion, sigma=sigma, image_shape=shape, device=device)
        model = compose(den, model).eval()
        if noise != "gaussian":
            _warn(f"smoothing with {noise} noise through a diffusion model trained to remove Gaussian noise")
    noise_obj = make_noise(noise, sigma, draws=config.float_draws if noise == "gaussian" else None)
    noise_obj.check_norm(config.norm)
    dataset_name = config.dataset or str(meta["dataset"])
    if dataset_name != meta["dataset"]:
        _warn(f"the model was trained on {meta['dataset']!r} but the data set is {dataset_name!r}")
    if denoiser_meta is not None and denoiser_meta.get("dataset", dataset_name) != dataset_name:
        _warn(f"the denoiser was trained on {denoiser_meta['dataset']!r} but the data set is {dataset_name!r}")
    dataset: Any = load_dataset(dataset_name, config.split, config.data_dir)
    if config.lift is not None:
        dataset = _Upsampled(dataset, config.lift)
    indices = select_indices(len(dataset), skip=config.skip, max_examples=config.max)
    if not indices:
        raise ConfigError(f"{dataset_name} {config.split} has no examples to {config.command}")
    model_shape = tuple(int(v) for v in meta["input_shape"])
    input_shape = model_shape  # what the smoothed classifier takes: the model's, or S times larger when lifted
    if config.lift is not None:
        input_shape = (*model_shape[:-2], config.lift * model_shape[-2], config.lift * model_shape[-1])
    data_shape = tuple(int(v) for v in dataset[indices[0]][0].shape)
    if data_shape != input_shape:
        raise ConfigError(
            f"the model takes inputs of shape {list(input_shape)} but {dataset_name} {config.split} "
            f"has inputs of shape {list(data_shape)}"
        )
    n_max = config.draws_limit
    if config.adaptive and config.radius is not None:
        reach = make_noise(noise, sigma * config.lift) if config.lift is not None else noise_obj
        _require_reachable("radius", config.radius, reach, config.norm, math.prod(input_shape))
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward: Any = torch.compile(model) if config.compile else model
    smoothed = SmoothedClassifier(
        forward,
        int(meta["num_classes"]),
        sigma,
        device=device,
        input_shape=model_shape,
        autocast_dtype=AMP[config.amp] if config.amp else None,
        channels_last=config.channels_last,
        pass_size=config.pass_size or "auto",
        noise=noise_obj,
        norm=config.norm,
        sound=config.sound,
        grid=config.grid,
    )
    if config.lift is not None:  # App. G: model(AvgPool_S(.)) at S times the resolution, sigma S times larger
        from smoothcert.smoothing.lifting import lift

        smoothed = lift(smoothed, factor=config.lift)
        if config.sound and smoothed.sound is not True:  # never a float- or auto-mode run under a sound identity
            raise ConfigError(
                "lift does not carry sound mode in this version of smoothcert.smoothing.lifting: pass --float-noise "
                "(Python: sound=False) to certify the lifted classifier in float mode"
            )
    if smoothed.sound is True:  # refuse a data set that is not on the grid before any file is written
        _check_on_grid(smoothed, dataset[indices[0]][0], f"{dataset_name} {config.split} example {indices[0]}")
    identity: dict[str, Any] = {
        "command": config.command,
        "model_sha256": checkpoint_sha256(config.model),
        **({"denoiser_sha256": checkpoint_sha256(config.denoiser)} if config.denoiser is not None else {}),
        **diffusion,
        "dataset": dataset_name,
        "split": config.split,
        "sigma": sigma,
        "n": config.n,
        "alpha": config.alpha,
        "seed": config.seed,
        "device_type": device.type,
        "amp": config.amp,
        "compile": config.compile,
        # the noise stream: 2 for 0.2's float64 samplers (and sound mode, whose stream they do not
        # touch), 3 for float mode's float32 Gaussian draws (0.3): logs of another stream are not resumed
        "sampler": float_sampler_version(noise_obj, sound=config.sound),
    }
    # The noise is drawn in a layout-independent way, so channels-last and the pass size leave
    # every example's noise unchanged; they may change the base classifier's last bits (and so a
    # near-tie vote). They are recorded in the sidecar's "layout", not in the identity.
    if noise != "gaussian" or config.norm != "l2":  # absent from Gaussian L2 identities, as before
        identity["noise"] = noise
        identity["norm"] = config.norm
    if member_hashes:
        identity.update(ensemble_sha256=member_hashes, combine=config.combine, consensus=config.consensus)
    if config.lift is not None:
        identity.update(lift=config.lift, lifted_sigma=smoothed.sigma)
    identity["sound"] = config.sound  # always recorded since 0.3 (absent: a 0.2 float-mode log, see LEGACY)
    identity["grid"] = smoothed.grid
    if config.sound:  # 0.3's sound radii (the grid offset subtracted): rows a 0.2 sound-mode log did not write
        identity["sound_radii"] = SOUND_RADII
    if config.command == "certify":
        identity["n0"] = config.n0
    if config.curve:  # the reporting grid and the confidence sequence fix every row
        identity.update(_curve_identity(config, smoothed, math.prod(input_shape)))
        identity.pop("n")
        if config.eval_label:
            identity.pop("n0")
    if config.adaptive:
        identity.update(
            adaptive=True,
            radius=config.radius,
            n_max=n_max,
            beta=config.beta,
            radius_cap=config.radius_cap,
            radius_tol=config.radius_tol,
            radius_rtol=None if config.radius_tol is not None or config.radius is not None else DEFAULT_RADIUS_RTOL,
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
        "layout": {"channels_last": config.channels_last, "pass_size": config.pass_size or "auto"},
        **(
            {"sound": {"grid": smoothed.grid, "tv_bound": smoothed.tv_bound(math.prod(input_shape))}}
            if config.sound
            else {}
        ),
        "versions": versions(),
        "world_size": dist.world_size,
        "torch_threads": torch.get_num_threads(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    columns: tuple[str, ...] = PREDICT_COLUMNS
    if config.command == "certify":
        columns = CURVE_COLUMNS if config.curve else ADAPTIVE_COLUMNS if config.adaptive else CERTIFY_COLUMNS
    return PreparedRun(config, device, dataset, indices, smoothed, sigma, identity, sidecar, columns)


def run(config: RunConfig, dist: DistContext | None = None) -> Path:
    """Certify or predict the selected examples of a split; returns the path of the complete log.

    The whole configuration is validated first (:func:`prepare`): a refused one writes nothing.
    """
    dist = dist or DistContext.single()
    plan = prepare(config, dist)
    indices, columns, identity, sidecar = plan.indices, plan.columns, plan.identity, plan.sidecar
    out = Path(config.out)
    if not config.overwrite:
        check_legacy_resume(out, identity)
    if dist.world_size > 1:
        part = part_path(out, dist.rank, dist.world_size)
        if config.overwrite and dist.is_main:  # the old log and its sidecar (old identity) both go
            for stale in (out, sidecar_path(out)):
                stale.unlink(missing_ok=True)
        dist.barrier()
        done = read_resumable(out, columns, identity, absent=LEGACY) if out.exists() else []
        done_before = {int(r[0]) for r in done}
        mine = [i for pos, i in enumerate(indices) if pos % dist.world_size == dist.rank and i not in done_before]
        target = part
    else:
        mine, target = indices, out

    largest = max(config.draws_limit, config.n0) if config.command == "certify" else config.n
    # the pass-size probe runs now, so its cost is in no example's time; the sidecar records it
    probe = plan.smoothed.probe_pass_size(batch_size=config.batch)
    sidecar = {**sidecar, "pass_size_probe": probe.as_dict() if probe is not None else None}
    with ResultWriter(target, columns, sidecar=sidecar, overwrite=config.overwrite, absent=LEGACY) as writer:
        todo = [i for i in mine if i not in writer.done]
        # Several examples share a forward pass only when each one's draws fit in a batch; otherwise
        # each example is written as soon as it is done, with its own time, so a crash loses at
        # most one example and the progress bar moves with every example.
        smallest_draw = min(config.n0, config.n) if config.command == "certify" else config.n
        per_pass = 1 if largest > config.batch else max(1, min(256, config.batch // smallest_draw))
        if config.adaptive:  # stages of many examples share passes: first stages fill a batch
            per_pass = max(1, min(256, config.batch // 64))
        if config.curve:  # looks of many examples share passes; later looks, of fewer examples, too
            per_pass = max(1, min(256, config.batch // 10))
        bar = _progress(len(todo), config.progress and dist.is_main, config.command)
        # chunks are aligned to positions in the full index list, so a resumed run groups examples as before
        position = {idx: p for p, idx in enumerate(mine)}
        chunk: list[int] = []
        for idx in todo:
            chunk.append(idx)
            if position[idx] % per_pass == per_pass - 1 or idx == todo[-1]:
                writer.write(certify_rows(plan.config, plan.smoothed, plan.dataset, chunk, device=plan.device))
                bar.update(len(chunk))
                chunk = []
        bar.close()
    if dist.world_size > 1:
        dist.barrier()
        if dist.is_main:
            parts = [part_path(out, r, dist.world_size) for r in range(dist.world_size)]
            merge_parts(out, parts, columns, indices, sidecar)
        dist.barrier()
    return out
