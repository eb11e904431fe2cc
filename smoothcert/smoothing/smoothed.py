"""What every smoothed model shares: the base model, the noise and its norm, the device, input
checks, the choice between sound and float mode, and the call into the sampling engine.

:class:`SmoothedModel` is the thin layer between a task's statistics and the one engine
(:mod:`smoothcert.smoothing.engine`): the classifier, the segmenter and the regressor build on it
and differ only in the engine's reduction and in the statistics they apply to its result.

**Input space.** ``sigma`` is measured in the space the inputs are given in. Give images as
pixels in ``[0, 1]`` and put any per-channel normalization inside the base model (as its first
layer): then the certificate is a radius in ``[0, 1]`` pixel space. Noisy inputs are never
clipped to ``[0, 1]``, since clipping would change the smoothing distribution.

**Sound and float mode** (``docs/sound.md``). An input on the grid ``i / grid`` (within
:data:`smoothcert.core.lattice.GRID_TOLERANCE` of ``grid * x`` in every coordinate) can be
certified in *sound mode*: the noise is drawn on that grid, on integers
(:class:`smoothcert.smoothing.sound.GridNoise`), and the statistics account for the sampler's
residual total variation (:meth:`SmoothedModel.tv_bound`). Any other input is certified in *float
mode* (``fl(x + fl(eps))``, whose law the radius formulas do not strictly cover). ``sound="auto"``
(the default) chooses per input; :meth:`SmoothedModel.input_modes` says what was chosen for each
input of a batch, with its tolerance offset ``||x - round_q(x)||`` (the certificate's centre is
``round_q(x)``, so sound radii are reduced by it).

**Batch independence.** Every certificate assumes that the base model's output for one noisy input
does not depend on the other inputs of its forward pass. A ``torch.nn.Module`` base model is put
in eval mode for every sampling call (and the probe's passes) and every submodule's previous mode
restored afterwards, also on an exception (:func:`eval_mode`), so BatchNorm and Dropout do not
break it; a base model that is not a Module but calls one must see to this itself.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from smoothcert.core import lattice
from smoothcert.core.checks import check_int, check_sigma
from smoothcert.core.errors import ConfigError
from smoothcert.runtime.perf import PassSizeProbe, probe_pass_size, tune_malloc
from smoothcert.smoothing.certificates import SmoothingWarning
from smoothcert.smoothing.engine import GeneratorArg, Reduction, run_samples
from smoothcert.smoothing.noises import Noise, make_noise
from smoothcert.smoothing.sound import GridNoise

__all__ = ["DEFAULT_GRID", "InputModes", "SmoothedModel", "SoundArg", "eval_mode", "grid_offsets"]

SoundArg = bool | Literal["auto"]
DEFAULT_GRID = 255
"""The grid ``q`` of sound mode when ``grid=`` is not given: 8-bit pixels ``i / 255``."""
_MAX_GRID_INT = 2**23  # |round(q x)| bound of sound mode (lattice.check_grid)


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


@contextlib.contextmanager
def eval_mode(model: Callable[..., Any]) -> Iterator[None]:
    """Run a ``torch.nn.Module`` in eval mode, then restore every submodule's own mode (also on an exception).

    Unlike ``model.train(previous)``, this keeps a submodule that was in another mode than its
    parent (a frozen BatchNorm inside a model in training mode) as it was.
    """
    if not isinstance(model, torch.nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _rows64(xs: torch.Tensor) -> NDArray[np.float64]:
    """The batch as a ``(k, d)`` float64 array on the host (exact for every float dtype)."""
    return xs.detach().to("cpu", torch.float64).reshape(len(xs), -1).numpy()


def grid_offsets(xs: torch.Tensor, grid: int, norm: str) -> NDArray[np.float64]:
    """``||x - round_q(x)||`` in ``norm`` per row of the batch ``xs``, rounded up; 0 for exact grid rows.

    Sound mode certifies the grid point ``round_q(x) = round(q x) / q`` (``docs/sound.md`` §2), so
    a radius ``R`` about it is a radius ``R - offset`` about ``x``. A coordinate equal to the float
    nearest to its grid point ``i / q`` in the input's dtype (``fl(i / q)``: how an 8-bit image is
    stored) *represents* that grid point and contributes 0; any other coordinate contributes
    ``|x - i / q|``, computed in float64 and enlarged by the rounding error of ``i / q``
    (``|i / q| 2^-52``), and the norm is enlarged by ``(d + 2) 2^-52`` relative, so the result is
    never below the exact offset.
    """
    if len(xs) == 0:
        return np.zeros(0)
    v = _rows64(xs)
    g = np.rint(v * grid) / grid  # fl64(i / q): i is an exact integer in float64
    exact = torch.from_numpy(g).to(xs.dtype).to(torch.float64).numpy() == v
    dev = np.where(exact, 0.0, np.abs(v - g) + np.abs(g) * 2.0**-52)
    if norm == "l2":
        raw = np.sqrt(np.sum(dev * dev, axis=1))
    elif norm == "l1":
        raw = np.sum(dev, axis=1)
    elif norm == "linf":
        raw = np.max(dev, axis=1, initial=0.0)
    else:
        raise ConfigError(f"norm must be one of l2, l1, linf, got {norm!r}")
    d = v.shape[1]
    up = raw * (1.0 + (d + 2) * 2.0**-52)
    return np.where(raw > 0, np.nextafter(up, np.inf), 0.0)


@dataclass(frozen=True)
class InputModes:
    """How each input of a batch is certified (:meth:`SmoothedModel.input_modes`).

    Attributes:
        sound: ``(k,)`` bool: the input is certified in sound mode (else float mode).
        grid: the grid ``q`` of the sound inputs (``None`` when no grid is set).
        tv_bound: ``(k,)`` the sampler's residual total variation per noisy input (0 in float mode).
        offset: ``(k,)`` ``||x - round_q(x)||`` in the model's norm, rounded up (:func:`grid_offsets`;
            0 in float mode and for exact grid inputs), which sound radii give up.
    """

    sound: NDArray[np.bool_]
    grid: int | None
    tv_bound: NDArray[np.float64]
    offset: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.sound)

    def fields(self, i: int) -> dict[str, Any]:
        """The result fields of input ``i``: ``sound``, ``grid`` (``None`` in float mode) and ``tv_bound``."""
        s = bool(self.sound[i])
        return {"sound": s, "grid": self.grid if s else None, "tv_bound": float(self.tv_bound[i])}

    def take(self, index: Any) -> InputModes:
        """The modes of the inputs ``index`` (an index array or mask)."""
        return InputModes(self.sound[index], self.grid, self.tv_bound[index], self.offset[index])


def _split_args(
    n: int | Sequence[int], generator: GeneratorArg, idx: NDArray[np.intp], k: int
) -> tuple[int | list[int], GeneratorArg]:
    """The sample counts and generators of the inputs ``idx`` of a batch of ``k``.

    A shared generator (or torch's default one, ``None``) serves the groups in turn.
    """
    if not isinstance(n, (int, np.integer)):
        ns = list(n)
        if len(ns) != k:
            raise ValueError(f"n must be one int or one per input ({k}), got {len(ns)}")
        n = [ns[int(i)] for i in idx]
    if generator is not None and not isinstance(generator, torch.Generator):
        gens = list(generator)
        if len(gens) != k:
            raise ValueError(f"generator must be one torch.Generator or one per input ({k}), got {len(gens)}")
        generator = [gens[int(i)] for i in idx]
    return n, generator


def _merge(parts: Sequence[tuple[NDArray[np.intp], Any]], k: int) -> Any:
    """Reassemble per-group engine results (arrays with one row per input, or lists) in input order."""
    first = parts[0][1]
    if isinstance(first, np.ndarray):
        shape = max((r.shape[1:] for _, r in parts), key=lambda s: math.prod(s))
        out = np.zeros((k, *shape), dtype=first.dtype)
        for idx, r in parts:
            if r.size:
                out[idx] = r
        return out
    if isinstance(first, list):
        merged: list[Any] = [None] * k
        for idx, r in parts:
            for j, i in enumerate(idx):
                merged[int(i)] = r[j]
        return merged
    raise TypeError(f"cannot merge engine results of type {type(first).__name__} across sound and float inputs")


class SmoothedModel:
    """A base model smoothed by a noise; the common part of the task-specific smoothed models.

    Args:
        base_model: maps a batch ``(b, *input_shape)`` to the task's outputs. Inputs are in the
            certificate's space (``[0, 1]`` pixels); normalization belongs inside it. Its output
            for one input must not depend on the other inputs of the batch (module docstring:
            a ``torch.nn.Module`` is run in eval mode).
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
            3-second budget, at most the call's ``batch_size``), an int, or ``None`` (the
            ``batch_size`` of each call). The probe *calls the base model* (about 300 passes of
            synthetic inputs; on the grid ``i / grid`` whenever a grid is set, so in sound and
            auto mode every input the model sees is a grid point) before the first sampling call;
            call :meth:`probe_pass_size` first to keep that cost out of a timing, or give an int
            to skip it. Neither the pass size nor the memory format changes the noise; the base
            model's last bits may depend on them (see :mod:`smoothcert.smoothing.engine`).
        sound: ``"auto"`` (the default), ``True`` or ``False``. ``"auto"``: each input on the grid
            ``i / grid`` is certified in sound mode, each other input in float mode, with a
            one-line :class:`~smoothcert.smoothing.certificates.SmoothingWarning` the first time
            (per smoothed model) an input is off the grid. ``True``: sound mode only; an input off
            the grid is refused (one-line ValueError). ``False``: float mode for every input (the
            default before 0.3). Every result records the mode of its input (``sound``, ``grid``,
            ``tv_bound``). In a batch the choice is **per input**: the batch is split into its
            on-grid and off-grid inputs, each group is sampled with its own sampler and the
            results are merged in input order, so with one generator per input a result never
            depends on the other inputs of the batch (a single shared generator serves the sound
            group's draws first, then the float group's).
        grid: the grid ``q`` (inputs ``i / q``) of sound and auto mode; default 255 (8-bit pixels).
            Refused with ``sound=False``.
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
        sound: SoundArg = "auto",
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
        if not (isinstance(sound, bool) or sound == "auto"):
            raise ConfigError(f"sound must be True, False or 'auto', got {sound!r}")
        if grid is not None and sound is False:
            raise ConfigError(f"grid={grid!r} applies only to sound mode: pass sound=True or sound='auto' as well")
        self.sound: SoundArg = sound
        self.grid: int | None = None
        if sound is not False:
            self.grid = DEFAULT_GRID if grid is None else check_int("grid", grid, 2)
        self.grid_sampler: GridNoise | None = GridNoise(self.noise, self.grid) if self.grid is not None else None
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
        self._warned_off_grid = False

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
        if self.sound is True:
            self.check_on_grid(x, name=name)
        if self.device is not None:
            x = x.to(self.device)
        return x if batch else x.unsqueeze(0)

    # ------------------------------------------------------------------ sound or float, per input

    def on_grid(self, xs: torch.Tensor) -> NDArray[np.bool_]:
        """``(k,)`` bool: which inputs of the batch ``xs`` lie on the grid (all False without a grid)."""
        if self.grid is None or len(xs) == 0:
            return np.zeros(len(xs), dtype=bool)
        scaled = _rows64(xs) * self.grid
        ints = np.rint(scaled)
        ok = np.abs(scaled - ints) <= lattice.GRID_TOLERANCE
        ok &= np.abs(ints) <= _MAX_GRID_INT
        return np.asarray(ok.all(axis=1), dtype=bool)

    def input_modes(self, xs: torch.Tensor) -> InputModes:
        """How each input of the batch ``xs`` is certified: mode, residual and grid offset (:class:`InputModes`).

        ``sound=True`` raises (one line) unless every input is on the grid; ``False`` gives float
        mode for all; ``"auto"`` sound mode exactly for the inputs on the grid.
        """
        k = len(xs)
        if self.sound is True:
            self.check_on_grid(xs, name="xs")
            rows = np.ones(k, dtype=bool)
        else:
            rows = self.on_grid(xs)
        tv = np.where(rows, self.tv_bound(int(xs[0].numel())) if k else 0.0, 0.0)
        offset = np.zeros(k)
        if rows.any():
            assert self.grid is not None
            on = xs[torch.as_tensor(np.flatnonzero(rows), device=xs.device)]
            offset[rows] = grid_offsets(on, self.grid, self.norm)
        return InputModes(sound=rows, grid=self.grid, tv_bound=tv, offset=offset)

    def _warn_off_grid(self, xs: torch.Tensor, rows: NDArray[np.bool_]) -> None:
        if self.sound == "auto" and not self._warned_off_grid and not rows.all():
            self._warned_off_grid = True
            assert self.grid is not None
            warnings.warn(
                f"sound='auto': an input is off the grid 1/{self.grid}, so it is certified in float mode, "
                f"whose certificates do not account for floating point (docs/sound.md); quantize the input, "
                f"or pass sound=False to choose float mode",
                SmoothingWarning,
                stacklevel=4,
            )

    def run_engine(
        self,
        xs: torch.Tensor,
        reduction: Reduction,
        *,
        n: int | Sequence[int],
        batch_size: int,
        generator: GeneratorArg,
    ) -> Any:
        """The engine on a batch, with this model's noise and options, each input in its mode.

        Inputs on the grid are sampled with the grid sampler (sound and auto mode), the others
        with the float noise; a batch holding both is split and the results merged in input
        order (class docstring). The base model runs in eval mode (module docstring).
        """
        _tune_allocator_once()
        if self.sound is True:
            self.check_on_grid(xs, name="xs")
            rows = np.ones(len(xs), dtype=bool)
        else:
            rows = self.on_grid(xs)
        self._warn_off_grid(xs, rows)
        pass_size = self.pass_size
        if pass_size == "auto":
            pass_size = self._probe(tuple(xs.shape[1:]), xs.device, batch_size).size

        def run(batch: torch.Tensor, sampler: Noise | GridNoise, n_: int | Sequence[int], gen: GeneratorArg) -> Any:
            return run_samples(
                self.base_model,
                batch,
                n=n_,
                noise=sampler,
                reduction=reduction,
                batch_size=batch_size,
                pass_size=pass_size,
                generator=gen,
                autocast_dtype=self.autocast_dtype,
                channels_last=self.channels_last,
                feed_dtype=self._feed_dtype(xs.dtype),
            )

        with eval_mode(self.base_model):
            if self.grid_sampler is None or not rows.any():
                return run(xs, self.noise, n, generator)
            if rows.all():
                return run(xs, self.grid_sampler, n, generator)
            parts = []
            for mask, sampler in ((rows, self.grid_sampler), (~rows, self.noise)):
                idx = np.flatnonzero(mask)
                n_, gen = _split_args(n, generator, idx, len(xs))
                parts.append((idx, run(xs[torch.as_tensor(idx, device=xs.device)], sampler, n_, gen)))
            return _merge(parts, len(xs))

    def _feed_dtype(self, input_dtype: torch.dtype) -> torch.dtype:
        """The dtype the base model expects: its floating weights' (a half-precision input to a float32
        model, or the reverse, is fed as the model's dtype), else the input's."""
        if self.autocast_dtype is None and isinstance(self.base_model, torch.nn.Module):
            for t in self.base_model.parameters():
                if t.is_floating_point():
                    return t.dtype
        return input_dtype

    def tv_bound(self, dim: int) -> float:
        """Bound on the total variation between the law of one noisy input and the smoothing law, in sound mode.

        ``dim`` times the grid sampler's per-coordinate residual when a grid is set (sound and auto
        mode; it applies to the inputs certified in sound mode), else 0. Float mode does not
        account for floating point at all (``docs/sound.md`` §1).
        """
        return self.grid_sampler.tv_bound(dim) if self.grid_sampler is not None else 0.0

    def check_on_grid(self, x: torch.Tensor, *, name: str = "x") -> None:
        """Raise a one-line ValueError unless ``x`` lies on the grid ``i / grid`` (nothing without a grid)."""
        if self.grid is not None:
            lattice.check_grid(x.detach().to("cpu", torch.float64).numpy(), self.grid, name=name)

    def _probe(self, input_shape: tuple[int, ...], device: torch.device, batch_size: int) -> PassSizeProbe:
        with eval_mode(self.base_model):
            self.last_probe = probe_pass_size(
                self.base_model,
                input_shape,
                device=device,
                max_size=batch_size,
                channels_last=self.channels_last,
                autocast_dtype=self.autocast_dtype,
                grid=self.grid,
            )
        return self.last_probe

    def probe_pass_size(self, *, batch_size: int, input_shape: Sequence[int] | None = None) -> PassSizeProbe | None:
        """Measure the ``"auto"`` pass size now (cached per model), e.g. before timing examples.

        Returns the probe's record (size, seconds, passes; ``as_dict()`` for a sidecar), or None
        when ``pass_size`` is not ``"auto"``. ``input_shape`` defaults to the model's. The probe
        calls the base model on synthetic inputs, grid points whenever a grid is set.
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
