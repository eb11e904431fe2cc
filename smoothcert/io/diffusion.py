"""Diffusion model directories in Hugging Face ``diffusers``' own format (``docs/diffusion.md`` §5).

A directory holds either the layout ``DDPMPipeline.save_pretrained`` writes (``model_index.json``,
``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors``, ``scheduler/scheduler_config.json``)
or the same files flat in one folder (``config.json``, the weights, ``scheduler_config.json``), so a
model trained by ``smoothcert train-diffusion`` and one downloaded elsewhere load alike. Weights are
read from safetensors only: a directory with only pickle weights (``.bin``) is refused.

``diffusers`` is an optional dependency (``pip install 'smoothcert[diffusion]'``), imported only when
a function here needs it; without it they raise one :class:`ConfigError` naming the extra.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothcert.core.errors import CheckpointError, ConfigError
from smoothcert.io.files import sha256_file
from smoothcert.models.diffusion import DiffusionDenoiser

__all__ = [
    "DiffusionFiles",
    "check_image_shape",
    "diffusion_files",
    "diffusion_sha256",
    "load_diffusion",
    "load_diffusion_denoiser",
    "require_diffusers",
    "save_diffusion",
]

_WEIGHTS = "diffusion_pytorch_model.safetensors"


def require_diffusers() -> Any:
    """The ``diffusers`` module, or a one-line :class:`ConfigError` naming the extra that installs it."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError(
            "diffusion models need the optional 'diffusers' package: pip install 'smoothcert[diffusion]'"
        ) from None
    return diffusers


class DiffusionFiles:
    """The files of a diffusion directory that determine the denoiser: the UNet's config and weights
    and the scheduler's config (found by :func:`diffusion_files`)."""

    def __init__(self, unet_dir: Path, scheduler_config: Path) -> None:
        self.unet_dir = unet_dir
        self.unet_config = unet_dir / "config.json"
        self.weights = unet_dir / _WEIGHTS
        self.scheduler_config = scheduler_config

    def roles(self) -> list[tuple[str, Path]]:
        """``(role, path)`` of the three files, in the order :func:`diffusion_sha256` hashes them."""
        return [("unet_config", self.unet_config), ("unet_weights", self.weights), ("scheduler", self.scheduler_config)]


def diffusion_files(path: str | Path) -> DiffusionFiles:
    """Locate the UNet and the scheduler config in ``path`` (subfolders ``unet``/``scheduler``, or flat).

    Raises :class:`CheckpointError` naming what is missing.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"diffusion model {str(path)!r} is not a directory")
    unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    if not (unet_dir / "config.json").is_file():
        raise CheckpointError(f"no UNet config in {str(path)!r} (expected unet/config.json or config.json)")
    if not (unet_dir / _WEIGHTS).is_file():
        pickled = sorted(p.name for p in unet_dir.glob("*.bin"))
        hint = f" ({pickled[0]} is a pickle file, which smoothcert never loads)" if pickled else ""
        raise CheckpointError(f"no {_WEIGHTS} in {str(unet_dir)!r}{hint}")
    for candidate in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if candidate.is_file():
            return DiffusionFiles(unet_dir, candidate)
    raise CheckpointError(
        f"no scheduler config in {str(path)!r} (expected scheduler/scheduler_config.json or scheduler_config.json): "
        "the noise schedule fixes the timestep and cannot be guessed"
    )


def diffusion_sha256(path: str | Path) -> str:
    """SHA-256 identifying a diffusion directory: over the UNet config, its weights and the scheduler config.

    The hash is of the lines ``<role> <sha256 of the file>`` for the three files in that order, so
    other files in the directory (a training checkpoint, logs) and the layout do not change it.
    """
    lines = [f"{role} {sha256_file(p)}\n" for role, p in diffusion_files(path).roles()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _read_json(p: Path) -> dict[str, Any]:
    try:
        value = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt JSON in {str(p)!r}: {e}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{str(p)!r} does not hold a JSON object")
    return value


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_diffusion(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, Any]:
    """``(unet, scheduler)`` from a diffusers directory; the UNet in eval mode on ``device``, weights frozen.

    The scheduler is the class its config names (any diffusers scheduler with ``alphas_cumprod``).
    """
    diffusers = require_diffusers()
    files = diffusion_files(path)
    unet_config = _read_json(files.unet_config)
    if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ConfigError(
            f"{str(files.unet_config)!r} describes a {unet_config['_class_name']}; smoothcert needs an "
            "unconditional UNet2DModel"
        )
    scheduler_config = _read_json(files.scheduler_config)
    name = str(scheduler_config.get("_class_name", "DDPMScheduler"))
    scheduler_cls = getattr(diffusers, name, None)
    if scheduler_cls is None or not hasattr(scheduler_cls, "from_config"):
        raise ConfigError(f"{str(files.scheduler_config)!r} names {name!r}, which is not a diffusers scheduler")
    try:
        scheduler = scheduler_cls.from_config(scheduler_config)
        unet = diffusers.UNet2DModel.from_pretrained(str(files.unet_dir), use_safetensors=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"cannot load the diffusion model {str(path)!r}: {_first_line(e)}") from None
    if not isinstance(getattr(scheduler, "alphas_cumprod", None), torch.Tensor):
        raise ConfigError(f"scheduler {name!r} in {str(path)!r} has no alphas_cumprod (not a DDPM-type schedule)")
    if getattr(unet, "class_embedding", None) is not None:  # its forward needs class labels smoothing cannot give
        settings = {k: unet_config.get(k) for k in ("num_class_embeds", "class_embed_type")}
        given = ", ".join(f"{k}={v!r}" for k, v in settings.items() if v is not None)
        raise ConfigError(
            f"the UNet in {str(path)!r} is class-conditional ({given}); smoothcert needs an unconditional UNet2DModel"
        )
    unet.requires_grad_(False)
    return unet.to(device).eval(), scheduler


def check_image_shape(unet: nn.Module, image_shape: tuple[int, ...] | list[int], *, path: str | Path = "") -> None:
    """Raise :class:`ConfigError` unless the UNet takes images of ``image_shape`` ``(c, h, w)``.

    The channels must be the UNet's ``in_channels`` and the size its ``sample_size``; a UNet without a
    ``sample_size`` takes any size its down-sampling levels divide exactly.
    """
    config: Any = getattr(unet, "config", None)
    if config is None:
        raise ConfigError(f"{type(unet).__name__} is not a diffusers UNet2DModel (it has no config)")
    size = config.sample_size
    shape = [int(v) for v in image_shape]
    where = f" {str(path)!r}" if path else ""
    if len(shape) != 3:
        raise ConfigError(f"a diffusion denoiser needs images (channels, height, width), got shape {shape}")
    if shape[0] != int(config.in_channels):
        raise ConfigError(
            f"the diffusion model{where} takes {config.in_channels}-channel images but the data have "
            f"{shape[0]} channels (shape {shape})"
        )
    if size is None:  # no training size recorded: any size its levels can halve (and double back) exactly
        halvings = len(config.block_out_channels) - 1
        if shape[1] % 2**halvings or shape[2] % 2**halvings:
            raise ConfigError(
                f"the diffusion model{where} halves images {halvings} times, which {shape[1]}x{shape[2]} "
                "images do not allow"
            )
        return
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if shape[1:] != [h, w]:
        raise ConfigError(
            f"the diffusion model{where} was trained on {h}x{w} images but the data are {shape[1]}x{shape[2]}"
        )


def load_diffusion_denoiser(
    path: str | Path,
    *,
    sigma: float,
    image_shape: tuple[int, ...] | list[int],
    device: torch.device | str = "cpu",
    timestep: int | None = None,
) -> tuple[DiffusionDenoiser, dict[str, Any]]:
    """The one-shot denoiser of the diffusion directory ``path`` at ``sigma``, and its identity.

    Checks the image size and channels against ``image_shape`` and ``sigma`` against the schedule's
    largest noise level (one-line :class:`ConfigError` each). The identity is
    ``{"diffusion_sha256", "diffusion_t"}`` (:func:`diffusion_sha256`, the chosen timestep), for a
    certify log's identity; :meth:`DiffusionDenoiser.info` has the rest for its sidecar.
    """
    unet, scheduler = load_diffusion(path, device=device)
    check_image_shape(unet, image_shape, path=path)
    prediction_type = str(scheduler.config.get("prediction_type", "epsilon"))
    denoiser = DiffusionDenoiser(
        unet, scheduler.alphas_cumprod, sigma=sigma, prediction_type=prediction_type, timestep=timestep
    ).eval()
    return denoiser, {"diffusion_sha256": diffusion_sha256(path), "diffusion_t": denoiser.timestep}


def save_diffusion(directory: str | Path, unet: nn.Module, scheduler: Any) -> Path:
    """Write ``unet`` and ``scheduler`` into ``directory`` in ``DDPMPipeline``'s layout (safetensors).

    They are written into ``directory/.pipeline.tmp`` first, then moved into place: ``unet``,
    ``scheduler``, and ``model_index.json`` last, so a directory with a ``model_index.json`` newer
    than an interrupted save holds a complete model.
    """
    diffusers = require_diffusers()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / ".pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(tmp), safe_serialization=True)
    (d / "model_index.json").unlink(missing_ok=True)
    for part in ("unet", "scheduler"):
        shutil.rmtree(d / part, ignore_errors=True)
        (tmp / part).rename(d / part)
    (tmp / "model_index.json").rename(d / "model_index.json")
    shutil.rmtree(tmp, ignore_errors=True)
    return d
