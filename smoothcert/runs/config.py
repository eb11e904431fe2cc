"""Settings of ``smoothcert certify`` / ``predict`` (:class:`RunConfig`) and the rule that turns a
library's ``ValueError`` met while validating them into a :class:`~smoothcert.core.errors.ConfigError`.

Each field's metadata (help, flag details; see :mod:`smoothcert.cli.options`) is the single
source of its command-line option.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from smoothcert.core import confseq, sequential
from smoothcert.core.checks import FLOAT_DRAWS, check_alpha, check_float_draws, check_int, check_sigma
from smoothcert.core.errors import ConfigError, SmoothcertError
from smoothcert.core.radii import NOISES, NORMS

__all__ = ["AMP", "SPLITS", "RunConfig", "as_config_error"]

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}
SPLITS = ("train", "test", "val")


@contextmanager
def as_config_error() -> Iterator[None]:
    """Inside, a plain ``ValueError`` raised by a library check becomes a :class:`ConfigError`.

    Used only while validating a configuration, where every value checked is one the user
    chose; outside validation a ``ValueError`` is a bug and stays one.
    """
    try:
        yield
    except SmoothcertError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _nonnegative(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be >= 0 and finite, got {value!r}")


def _opt(help: str, **more: Any) -> dict[str, Any]:
    """Field metadata read by the command line (``smoothcert.cli.options``): help text and flag details."""
    return {"help": help, **more}


_CERTIFY = ("certify",)
_SEQ = "sequential certification (valid under early stopping)"


@dataclass(frozen=True)
class RunConfig:
    """Settings of ``smoothcert certify`` / ``smoothcert predict``.

    Each field's metadata (help, flag details) is the single source of the command-line option
    (:mod:`smoothcert.cli.options`). The sidecar of a log records every field.

    Sound mode is the default (``sound=True``, grid 255; ``--float-noise`` on the command line,
    ``sound=False`` here, keeps 0.2's float mode): every built-in data set is 8-bit, so its inputs
    lie on the grid and the certificate holds for the floating-point computation that runs.
    """

    command: Literal["certify", "predict"] = field(metadata={"cli": False})
    model: str = field(metadata=_opt("model directory written by 'smoothcert train'"))
    out: str = field(metadata=_opt("result TSV (resumed if it exists; FILE.json holds the configuration)", order=100))
    denoiser: str | None = field(
        default=None,
        metadata=_opt(
            "denoiser directory ('smoothcert train-denoiser'): smooth MODEL(DENOISER(x + noise)); "
            "its noise and sigma become the defaults"
        ),
    )  # denoised smoothing (Salman et al. 2020)
    diffusion: str | None = field(
        default=None,
        metadata=_opt(
            "diffusers directory (UNet2DModel + scheduler; 'smoothcert train-diffusion' or downloaded): smooth "
            "MODEL(D(x + noise)) with one denoising call at the timestep matching sigma (docs/diffusion.md)"
        ),
    )  # diffusion denoised smoothing (Carlini et al. 2023)
    ensemble: str | None = field(
        default=None,
        metadata=_opt(
            "comma list of further model directories: smooth the ensemble of --model and these "
            "(Horvath et al. 2022); every member's sha256 is in the log's identity"
        ),
    )
    combine: str = field(
        default="softmax",
        metadata=_opt("ensemble: average the members' softmax (default) or logits", choices=("softmax", "logits")),
    )
    consensus: int | None = field(
        default=None,
        metadata=_opt("ensemble: stop evaluating members for a draw once the first K agree (K-consensus)", min=1),
    )
    lift: int | None = field(
        default=None,
        metadata=_opt(
            "certify at S times the data's resolution (paper App. G): images upsampled S x, base classifier "
            "model(AvgPool_S(.)), sigma S times the model's; radii are S times larger",
            min=2,
        ),
    )
    dataset: str | None = field(default=None, metadata=_opt("data set (default: the model's)"))
    data_dir: str | None = field(
        default=None, metadata=_opt("data directory (default: the data set's; or $SMOOTHCERT_DATA)")
    )
    split: str = field(default="test", metadata=_opt("split (default: test)", choices=SPLITS))
    sigma: float | None = field(
        default=None, metadata=_opt("noise level (default: the denoiser's, else the model's training sigma)")
    )
    n0: int = field(default=100, metadata=_opt("selection samples (default: 100)", min=1, commands=_CERTIFY))
    n: int = field(default=100_000, metadata=_opt("samples (default: 100000)", min=1))
    alpha: float = field(default=0.001, metadata=_opt("failure probability (default: 0.001)"))
    batch: int = field(default=1000, metadata=_opt("forward-pass batch size (default: 1000)", min=1))
    skip: int = field(default=1, metadata=_opt("use every skip-th example (default: 1)", min=1))
    max: int | None = field(default=None, metadata=_opt("at most this many examples (default: all)", min=1))
    seed: int = field(default=0, metadata=_opt("seed; each example's noise depends on (seed, idx) only"))
    device: str = field(default="auto", metadata=_opt("auto (CUDA if available), cpu, cuda or cuda:N (default: auto)"))
    amp: str | None = field(
        default=None,
        metadata=_opt("run the base model in mixed precision (bf16: CUDA or a bf16 CPU)", choices=tuple(AMP)),
    )
    channels_last: bool = field(
        default=True,
        metadata=_opt(
            "channels-last memory format for the base model (default: on); the noise is unchanged, the "
            "logits' last bits may differ, so a near-tie vote can flip"
        ),
    )
    compile: bool = field(default=False, metadata=_opt("torch.compile the base model"))
    pass_size: int | None = field(
        default=None,
        metadata=_opt(
            "forward-pass size (default: measured, at most --batch); the noise is unchanged, the logits' "
            "last bits may differ",
            min=1,
        ),
    )  # None: measured (perf.choose_pass_size), at most batch
    noise: str | None = field(
        default=None, metadata=_opt("noise (default: the denoiser's, else the model's)", choices=NOISES)
    )
    sound: bool = field(
        default=True,
        metadata=_opt(
            "float mode: draw the noise in floating point (0.2's default) instead of sound mode, where inputs lie "
            "on the grid i/GRID and the noise is drawn on that grid with integer arithmetic, so the certificate "
            "holds in floating point for every grid input within the radius (docs/sound.md); every built-in data "
            "set is 8-bit, on the default grid",
            flag="--float-noise",
            negate=True,
        ),
    )
    grid: int | None = field(
        default=None,
        metadata=_opt("the input grid of sound mode (default: 255, 8-bit pixels); not with --float-noise", min=2),
    )
    float_draws: str = field(
        default="float32",
        metadata=_opt(
            "float mode's Gaussian draws: float32 (the default since 0.3: float32 Box-Muller with its tail redrawn "
            "in float64) or float64 (0.2's stream, to resume its float-mode logs); with --float-noise",
            choices=FLOAT_DRAWS,
        ),
    )
    norm: str = field(default="l2", metadata=_opt("threat norm of the radius (default: l2)", choices=NORMS))
    adaptive: bool = field(
        default=False,
        metadata=_opt("sequential CERTIFY: max-radius mode unless --radius", commands=_CERTIFY, group=_SEQ),
    )
    curve: bool = field(
        default=False,
        metadata=_opt(
            "curve mode: each example's largest certified radius, sampling until the reporting grid (0 to "
            "--radius-cap in 8 steps) is settled (docs/curve.md); --n-max draws at most (default: --n)",
            commands=_CERTIFY,
            group=_SEQ,
        ),
    )
    radius: float | None = field(
        default=None,
        metadata=_opt("decision mode: certify robustness at this radius", commands=_CERTIFY, group=_SEQ),
    )
    n_max: int | None = field(
        default=None, metadata=_opt("largest estimation sample (default: --n)", min=1, commands=_CERTIFY, group=_SEQ)
    )
    beta: float | None = field(
        default=None,
        metadata=_opt("futility level: affects power only (default: alpha)", commands=_CERTIFY, group=_SEQ),
    )
    radius_cap: float | None = field(
        default=None,
        metadata=_opt(
            "max-radius mode: stop once this radius is certified; curve mode: the reporting grid's largest "
            "radius (default: 2 sigma for Gaussian L2, the radius at pA = Phi(2))",
            commands=_CERTIFY,
            group=_SEQ,
        ),
    )
    radius_tol: float | None = field(
        default=None,
        metadata=_opt(
            "max-radius: stop when more samples gain less than this absolute radius (default: 1.5%% of the "
            "radius reachable at --n-max); curve: a grid radius is settled once only inputs within this "
            "of it could still be certified there (default: 5%% of the cap)",
            commands=_CERTIFY,
            group=_SEQ,
        ),
    )
    eval_label: bool = field(
        default=False,
        metadata=_opt("bound the true label's probability (no selection)", commands=_CERTIFY, group=_SEQ),
    )
    overwrite: bool = field(
        default=False,
        metadata=_opt("replace an existing result file instead of resuming it", order=100),
    )
    progress: bool = field(default=True, metadata=_opt("no progress bar", flag="--quiet", negate=True, order=100))

    def __post_init__(self) -> None:
        with as_config_error():
            self._check()

    @property
    def draws_limit(self) -> int:
        """Estimation draws per example at most: ``n_max`` (default ``n``) in sequential and curve mode, else ``n``."""
        return (self.n_max or self.n) if self.adaptive or self.curve else self.n

    def _check(self) -> None:
        if self.command not in ("certify", "predict"):
            raise ConfigError(f"command must be 'certify' or 'predict', got {self.command!r}")
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
            raise ConfigError(f"amp must be one of {', '.join(AMP)}, got {self.amp!r}")
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.noise is not None and self.noise not in NOISES:
            raise ConfigError(f"noise must be one of {', '.join(NOISES)}, got {self.noise!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.pass_size is not None:
            check_int("pass_size", self.pass_size)
        if self.lift is not None and self.denoiser is not None:
            raise ConfigError("lift applies to the smoothing of a classifier, not with a denoiser")
        if self.diffusion is not None and (self.denoiser is not None or self.lift is not None):
            raise ConfigError("diffusion (--diffusion) cannot be combined with denoiser or lift: give one front end")
        if (self.consensus is not None or self.combine != "softmax") and self.ensemble is None:
            raise ConfigError("combine and consensus apply to an ensemble: add ensemble=... (--ensemble DIR,DIR)")
        if self.consensus == 1:  # the first member alone decides every draw: the other members never run
            raise ConfigError(
                "consensus=1 certifies the ensemble's first member (--model) alone, while the log would name the "
                "whole ensemble: use consensus >= 2, or certify --model without --ensemble"
            )
        if check_float_draws(self.float_draws) != "float32" and self.sound:
            raise ConfigError(
                f"float_draws={self.float_draws!r} applies to float mode only: add --float-noise (Python: sound=False)"
            )
        if self.grid is not None:
            if not self.sound:
                raise ConfigError(
                    f"grid={self.grid!r} applies only to sound mode: drop --float-noise (Python: sound=True)"
                )
            check_int("grid", self.grid, 2)
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
        if self.curve:
            self._check_curve()
            return
        if not self.adaptive and any(given.values()):
            names = ", ".join(k for k, v in given.items() if v)
            raise ConfigError(
                f"{names} only apply to sequential certification: add adaptive=True (--adaptive) "
                "or curve=True (--curve)"
            )
        if self.radius is not None and (self.radius_cap is not None or self.radius_tol is not None):
            raise ConfigError("radius (decision mode) cannot be combined with radius_cap or radius_tol (max-radius)")
        if self.adaptive and self.command != "certify":
            raise ConfigError("adaptive applies to certify only")
        for name in ("radius", "radius_cap", "radius_tol"):
            value = getattr(self, name)
            if value is not None:
                _nonnegative(name, value)
        if self.beta is not None:
            check_alpha(self.beta, "beta")
        if self.adaptive:
            sequential.make_schedule(n_max=self.draws_limit, alpha=self.alpha, beta=self.beta)

    def _check_curve(self) -> None:
        if self.command != "certify":
            raise ConfigError("curve applies to certify only")
        if self.adaptive:
            raise ConfigError("curve (--curve) and adaptive (--adaptive) are two modes: give one")
        if self.radius is not None:
            raise ConfigError(
                f"radius={self.radius!r} is decision mode (--adaptive --radius); curve mode certifies every "
                "radius up to radius_cap (--radius-cap)"
            )
        for name in ("radius_cap", "radius_tol"):
            value = getattr(self, name)
            if value is not None:
                _nonnegative(name, value)
        if self.radius_cap == 0:
            raise ConfigError(f"radius_cap must be > 0, got {self.radius_cap!r}")
        confseq.make_confseq(alpha=self.alpha, beta=self.beta, n_max=self.draws_limit)
