"""What every smoothed model shares: the base model, the noise and its norm, the device, input
checks, and the call into the sampling engine.

:class:`SmoothedModel` is the thin layer between a task's statistics and the one engine
(:mod:`smoothcert.smoothing.engine`): the classifier, the segmenter and the regressor build on it
and differ only in the engine's reduction and in the statistics they apply to its result.

**Input space.** ``sigma`` is measured in the space the inputs are given in. Give images as
pixels in ``[0, 1]`` and put any per-channel normalization inside the base model (as its first
layer): then the certificate is a radius in ``[0, 1]`` pixel space. Noisy inputs are never
clipped to ``[0, 1]``, since clipping would change the smoothing distribution.

**Sound mode** (``sound=True``, ``docs/sound.md``): inputs must lie on the grid ``i / grid``
(within :data:`smoothcert.core.lattice.GRID_TOLERANCE` of ``grid * x``) and the noise is drawn on
that grid, on integers (:class:`smoothcert.smoothing.sound.GridNoise`); :meth:`SmoothedModel.tv_bound`
is then the sampler's residual total variation per noisy input, which the statistics account for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from smoothcert.core import lattice
from smoothcert.core.checks import check_int, check_sigma
from smoothcert.core.errors import ConfigError
from smoothcert.runtime.perf import PassSizeProbe, probe_pass_size, tune_malloc
from smoothcert.smoothing.engine import GeneratorArg, Reduction, run_samples
from smoothcert.smoothing.noises import Noise, make_noise
from smoothcert.smoothing.sound import GridNoise

__all__ = ["SmoothedModel"]


def _tune_allocator_once() -> None:
    """glibc's allocator keeps large freed blocks for reuse (:func:`smoothcert.runtime.perf.tune_malloc`).

    The one process-wide side effect of the library, taken on the first sampling call because
    without it every forward pass returns its activations to the kernel and faults them in again
    (PREDICT through the API: 0.74x the 2019 loop without, 1.89x with; ``benchmarks/api_vs_2019.py``).
    ``SMOOTHCERT_TUNE_MALLOC=0`` in the environment turns it off. A no-op off glibc.
    """
    if os.environ.get("SMOOTHCERT_TUNE_MALLOC", "1") != "0":
        tune_malloc()  # computed once per process


def _model_device(model: Callable[..., object]) -> torch.device | None:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return None


class SmoothedModel:
    """A base model smoothed by a noise; the common part of the task-specific smoothed models.

    Args:
        base_model: maps a batch ``(b, *input_shape)`` to the task's outputs. Inputs are in the
            certificate's space (``[0, 1]`` pixels); normalization belongs inside it.
        sigma: noise level: the per-coordinate standard deviation, > 0.
        noise: ``"gaussian"`` (default), ``"laplace"``, ``"uniform"`` or a
            :class:`smoothcert.smoothing.noises.Noise` with this ``sigma``.
        norm: the threat norm of certified radii: ``"l2"`` (default), ``"l1"`` or ``"linf"``;
            it must be one the noise certifies.
        device: where noise is drawn and the model runs; by default the device of the
            model's parameters, or of each input when the model has none. An explicit
            ``device`` moves a ``torch.nn.Module`` base model there.
        input_shape: if given, every input must have exactly this shape.
        autocast_dtype: run the base model under ``torch.autocast`` with this dtype.
        channels_last: feed 4-d batches to the model in channels-last memory format.
        pass_size: the largest forward pass: ``"auto"`` (the default: measured once per model,
            input shape and device by :func:`smoothcert.runtime.perf.probe_pass_size` within a
            3-second budget, at most the call's ``batch_size``; call :meth:`probe_pass_size` first
            to keep that cost out of a timing), an int, or ``None`` (the ``batch_size`` of each call). Neither the pass
            size nor the memory format changes the noise; the base model's last bits may
            depend on them (see :mod:`smoothcert.smoothing.engine`).
        sound: draw the noise on the inputs' grid, on integers (sound mode; default False).
        grid: the grid ``q`` of sound mode (inputs ``i / q``); default 255 (8-bit pixels).
            Only with ``sound=True``.
    """

    def __init__(
        self,
        base_model: Callable[[torch.Tensor], torch.Tensor],
        sigma: float,
        *,
        noise: str | Noise = "gaussian",
        norm: str = "l2",
        device: torch.device | str | None = None,
        input_shape: Sequence[int] | None = None,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        pass_size: int | Literal["auto"] | None = "auto",
        sound: bool = False,
        grid: int | None = None,
    ) -> None:
        if not callable(base_model):
            raise TypeError(f"the base model must be callable, got {type(base_model).__name__}")
        self.base_model = base_model
        self.sigma = check_sigma(sigma)
        if isinstance(noise, Noise):
            if noise.sigma != self.sigma:
                raise ValueError(f"noise has sigma={noise.sigma!r} but sigma={self.sigma!r} was given")
            self.noise = noise
        elif isinstance(noise, str):
            self.noise = make_noise(noise, self.sigma)
        else:
            raise TypeError(f"noise must be a noise name or a smoothing.noises.Noise, got {type(noise).__name__}")
        self.norm = self.noise.check_norm(norm)
        if not isinstance(sound, bool):
            raise TypeError(f"sound must be a bool, got {type(sound).__name__} {sound!r}")
        if grid is not None and not sound:
            raise ValueError(f"grid={grid!r} applies only to sound mode: pass sound=True as well")
        self.sound = sound
        self.grid: int | None = (255 if grid is None else check_int("grid", grid, 2)) if sound else None
        self.sampler: Noise | GridNoise = GridNoise(self.noise, self.grid) if self.grid is not None else self.noise
        self.device = torch.device(device) if device is not None else _model_device(base_model)
        if device is not None and isinstance(base_model, torch.nn.Module):
            base_model.to(self.device)
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        if pass_size is not None and pass_size != "auto":
            check_int("pass_size", pass_size)
        self.pass_size = pass_size
        self.last_probe: PassSizeProbe | None = None  # the latest "auto" pass-size probe (or cache hit)

    def _prepare(self, x: torch.Tensor, *, batch: bool) -> torch.Tensor:
        """Check one input (or a batch) and return it as a batch on the model's device."""
        name = "xs" if batch else "x"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
        shape = tuple(x.shape[1:]) if batch else tuple(x.shape)
        if self.input_shape is not None and shape != self.input_shape:
            want = ("(batch, " + ", ".join(map(str, self.input_shape)) + ")") if batch else str(self.input_shape)
            hint = "" if batch else "; use the *_batch methods for a batch"
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}{hint}")
        if x.ndim < (2 if batch else 1):
            raise ValueError(f"{name} has the wrong rank: got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
        if self.grid is not None:
            self.check_on_grid(x, name=name)
        if self.device is not None:
            x = x.to(self.device)
        return x if batch else x.unsqueeze(0)

    def run_engine(
        self,
        xs: torch.Tensor,
        reduction: Reduction,
        *,
        n: int | Sequence[int],
        batch_size: int,
        generator: GeneratorArg,
    ) -> Any:
        """The engine on a prepared batch, with this model's noise and options."""
        _tune_allocator_once()
        pass_size = self.pass_size
        if pass_size == "auto":
            pass_size = self._probe(tuple(xs.shape[1:]), xs.device, batch_size).size
        return run_samples(
            self.base_model,
            xs,
            n=n,
            noise=self.sampler,
            reduction=reduction,
            batch_size=batch_size,
            pass_size=pass_size,
            generator=generator,
            autocast_dtype=self.autocast_dtype,
            channels_last=self.channels_last,
            feed_dtype=self._feed_dtype(xs.dtype),
        )

    def _feed_dtype(self, input_dtype: torch.dtype) -> torch.dtype:
        """The dtype the base model expects: its floating weights' (a half-precision input to a float32
        model, or the reverse, is fed as the model's dtype), else the input's."""
        if self.autocast_dtype is None and isinstance(self.base_model, torch.nn.Module):
            for t in self.base_model.parameters():
                if t.is_floating_point():
                    return t.dtype
        return input_dtype

    def tv_bound(self, dim: int) -> float:
        """Bound on the total variation between the law of one noisy input and the smoothing law.

        0 in float mode (which does not account for floating point; see ``docs/sound.md``); in
        sound mode ``dim`` times the sampler's per-coordinate residual.
        """
        return self.sampler.tv_bound(dim) if isinstance(self.sampler, GridNoise) else 0.0

    def check_on_grid(self, x: torch.Tensor, *, name: str = "x") -> None:
        """Sound mode: raise a one-line ValueError unless ``x`` lies on the grid ``i / grid``."""
        if self.grid is not None:
            lattice.check_grid(x.detach().to("cpu", torch.float64).numpy(), self.grid, name=name)

    def _probe(self, input_shape: tuple[int, ...], device: torch.device, batch_size: int) -> PassSizeProbe:
        self.last_probe = probe_pass_size(
            self.base_model,
            input_shape,
            device=device,
            max_size=batch_size,
            channels_last=self.channels_last,
            autocast_dtype=self.autocast_dtype,
        )
        return self.last_probe

    def probe_pass_size(self, *, batch_size: int, input_shape: Sequence[int] | None = None) -> PassSizeProbe | None:
        """Measure the ``"auto"`` pass size now (cached per model), e.g. before timing examples.

        Returns the probe's record (size, seconds, passes; ``as_dict()`` for a sidecar), or None
        when ``pass_size`` is not ``"auto"``. ``input_shape`` defaults to the model's.
        """
        if self.pass_size != "auto":
            return None
        shape = tuple(int(d) for d in input_shape) if input_shape is not None else self.input_shape
        if shape is None:
            raise ConfigError("probe_pass_size needs input_shape= (the smoothed model was built without one)")
        device = self.device if self.device is not None else torch.device("cpu")
        return self._probe(shape, device, check_int("batch_size", batch_size))

    def radius_of(self, p_lower: Any, *, dim: int) -> NDArray[np.float64]:
        """The noise's certified radius in ``self.norm`` for lower bounds on ``pA`` (0 where ``<= 1/2``)."""
        r = self.noise.radius(p_lower, norm=self.norm, dim=dim)
        return np.atleast_1d(np.asarray(r, dtype=np.float64))
