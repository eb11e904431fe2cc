"""The sampling engine: (model, inputs, noise, n) -> counts.

This is the only place where a base model runs during PREDICT, CERTIFY and their relatives for
other tasks. For each input ``x`` it draws ``n`` noisy copies on the input's device, runs the
base model on them and hands the outputs to a *reduction*: :class:`ClassVotes` counts the
arg-max classes with ``torch.bincount`` on the device (classification); :class:`PixelVotes`
counts them per output pixel (segmentation); :class:`OutputSamples` keeps every output
(regression by percentiles). Results come to the host once, at the end.

A noise perturbs a buffer through ``perturb_(out, x, generator)`` when it has that method
(sound smoothing on a grid, :mod:`smoothcert.smoothing.sound`, does its arithmetic on integers
there and adds no floating-point noise); otherwise the engine calls ``sample_(out, generator)``
and adds ``x``.

**Noise.** A noise is any object with a ``sample_(out, generator)`` method that fills a float32
tensor in place (see :mod:`smoothcert.smoothing.noises`: Gaussian draws in float32 with a float64
tail, the other noises in float64 rounded once); ``sigma=`` alone means isotropic Gaussian
noise. Noise is always drawn and added in float32 into a contiguous (row-major) buffer, whatever
the input's dtype and whatever memory format the model runs in, so options such as channels-last
or a half-precision model change speed (or the base classifier's numerics), never the noise
stream. In float mode the model sees ``fl(x + eps)``, which the radius formulas do not strictly
cover (``docs/sound.md`` §1); sound mode removes that caveat for inputs on a grid. The noisy
batch is converted (layout, dtype) only on its way into the model; a half-precision model then
classifies ``cast(x + eps)``, a deterministic function of ``x + eps``, so it is one more
deterministic base classifier.

**Segments and passes.** Each input's ``n`` samples are split into *segments* of
``min(batch_size, remaining)``, each drawn with one ``sample_`` call from the input's
generator; consecutive segments are packed into blocks of at most ``batch_size`` samples.
Each block is then fed to the model in forward passes of at most ``pass_size`` samples.
So when ``n`` is small several inputs share a pass; when ``n`` is large one input spans many.
Memory is ``O(batch_size)``, never ``O(n)``.

**Reproducibility.** An input's random stream depends only on its generator, its ``n`` and
(when ``n > batch_size``) ``batch_size`` — never on ``pass_size``, on the model's memory format
or precision, or on which other inputs share its passes. One generator per input makes every
input's counts independent of how inputs are grouped into calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from smoothcert.core.checks import check_int, check_sigma
from smoothcert.runtime.devices import eval_mode
from smoothcert.smoothing.noises import Gaussian

__all__ = [
    "ClassVotes",
    "GeneratorArg",
    "NoiseSampler",
    "OutputSamples",
    "PixelVotes",
    "Reduction",
    "check_generator_device",
    "per_input_generators",
    "plan_batches",
    "run_samples",
    "same_device",
    "sample_counts",
]

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


class NoiseSampler(Protocol):
    """What the engine needs of a noise distribution: in-place float32 draws from a generator.

    A sampler may also define ``perturb_(out, x, generator)``, which fills ``out`` with noisy
    copies of ``x`` itself; the engine then calls it instead of ``sample_`` followed by ``+ x``.
    """

    def sample_(self, out: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor: ...


class Reduction(Protocol):
    """What the engine does with the base model's outputs.

    The engine fills a buffer of up to ``capacity`` noisy samples (consecutive *segments*, each
    belonging to one input), runs the model on it in forward passes, calls :meth:`collect` for
    each pass's outputs (rows ``start:stop`` of the buffer) and then :meth:`fold` once for the
    whole buffer with its segments ``[(input_index, size), ...]``. :meth:`result` returns the
    host-side result after the last buffer.
    """

    def start(self, k: int, capacity: int, device: torch.device) -> None: ...

    def collect(self, start: int, stop: int, outputs: torch.Tensor) -> None: ...

    def fold(self, segments: Sequence[tuple[int, int]]) -> None: ...

    def result(self) -> Any: ...


class ClassVotes:
    """Classification: ``counts[i, c] = #{j : argmax f(x_i + eps_ij) = c}`` as an ``(k, C)`` int64 array."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = check_int("num_classes", num_classes, 2)

    def start(self, k: int, capacity: int, device: torch.device) -> None:
        self.counts = torch.zeros((k, self.num_classes), dtype=torch.int64, device=device)
        self.preds = torch.empty(capacity, dtype=torch.int64, device=device)
        self._ids: dict[tuple[int, ...], torch.Tensor] = {}

    def collect(self, start: int, stop: int, outputs: torch.Tensor) -> None:
        if outputs.ndim != 2 or outputs.shape[1] != self.num_classes:
            raise ValueError(
                f"base_classifier must return logits of shape (batch, num_classes={self.num_classes}), "
                f"got shape {tuple(outputs.shape)}"
            )
        torch.argmax(outputs, dim=1, out=self.preds[start:stop])

    def fold(self, segments: Sequence[tuple[int, int]]) -> None:
        c = self.num_classes
        lo = segments[0][0]
        sizes = tuple(size for _, size in segments)
        votes_of = self.preds[: sum(sizes)]
        if len(segments) == 1:
            self.counts[lo] += torch.bincount(votes_of, minlength=c)
            return
        key = tuple(i - lo for i, _ in segments) + sizes
        ids = self._ids.get(key)
        if ids is None:
            local = torch.tensor([i - lo for i, _ in segments], device=votes_of.device)
            ids = torch.repeat_interleave(local * c, torch.tensor(sizes, device=votes_of.device))
            self._ids[key] = ids
        span = segments[-1][0] - lo + 1
        self.counts[lo : lo + span] += torch.bincount(ids + votes_of, minlength=span * c).view(span, c)

    def result(self) -> NDArray[np.int64]:
        return self.counts.cpu().numpy()


class PixelVotes:
    """Segmentation: per-pixel arg-max votes, ``counts[i, p, c]`` as an ``(k, H*W, C)`` int64 array.

    The model returns ``(batch, C, H, W)`` scores; each output pixel votes for its arg-max class.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = check_int("num_classes", num_classes, 2)

    def start(self, k: int, capacity: int, device: torch.device) -> None:
        self._k, self._capacity, self._device = k, capacity, device
        self.counts: torch.Tensor | None = None
        self.preds: torch.Tensor | None = None

    def collect(self, start: int, stop: int, outputs: torch.Tensor) -> None:
        if outputs.ndim != 4 or outputs.shape[1] != self.num_classes:
            raise ValueError(
                f"base model must return scores of shape (batch, num_classes={self.num_classes}, H, W), "
                f"got shape {tuple(outputs.shape)}"
            )
        if self.preds is None:
            pixels = outputs.shape[2] * outputs.shape[3]
            self.preds = torch.empty((self._capacity, pixels), dtype=torch.int64, device=self._device)
            self.counts = torch.zeros((self._k, pixels * self.num_classes), dtype=torch.int64, device=self._device)
            self._offsets = torch.arange(pixels, device=self._device) * self.num_classes
        torch.argmax(outputs, dim=1, out=self.preds[start:stop].view(stop - start, *outputs.shape[2:]))

    def fold(self, segments: Sequence[tuple[int, int]]) -> None:
        assert self.preds is not None and self.counts is not None
        pos = 0
        width = self.counts.shape[1]
        for i, size in segments:
            ids = (self.preds[pos : pos + size] + self._offsets).view(-1)
            self.counts[i] += torch.bincount(ids, minlength=width)
            pos += size

    def result(self) -> NDArray[np.int64]:
        if self.counts is None:
            return np.zeros((self._k, 0, self.num_classes), dtype=np.int64)
        return self.counts.view(self._k, -1, self.num_classes).cpu().numpy()


class OutputSamples:
    """Regression: every output, ``samples[i]`` an ``(n_i, D)`` float64 array, in draw order.

    The model returns ``(batch, D)`` real outputs (or ``(batch,)``, taken as ``D = 1``).
    """

    def start(self, k: int, capacity: int, device: torch.device) -> None:
        self._parts: list[list[torch.Tensor]] = [[] for _ in range(k)]
        self._rows: torch.Tensor | None = None
        self._capacity, self._device = capacity, device

    def collect(self, start: int, stop: int, outputs: torch.Tensor) -> None:
        out = outputs.reshape(outputs.shape[0], -1) if outputs.ndim != 1 else outputs[:, None]
        if self._rows is None:
            self._rows = torch.empty((self._capacity, out.shape[1]), dtype=torch.float64, device=self._device)
        self._rows[start:stop] = out

    def fold(self, segments: Sequence[tuple[int, int]]) -> None:
        assert self._rows is not None
        pos = 0
        for i, size in segments:
            self._parts[i].append(self._rows[pos : pos + size].to("cpu", copy=True))  # the buffer is reused
            pos += size

    def result(self) -> list[NDArray[np.float64]]:
        return [torch.cat(p).numpy() if p else np.zeros((0, 0)) for p in self._parts]


def plan_batches(ns: Sequence[int], batch_size: int) -> Iterator[list[tuple[int, int]]]:
    """Yield blocks as lists of ``(input_index, num_samples)`` segments.

    Input ``i`` contributes ``ns[i]`` samples in segments of ``min(batch_size, remaining)``, in
    order; a block takes consecutive segments while their total stays ``<= batch_size``.
    """
    batch: list[tuple[int, int]] = []
    used = 0
    for i, n in enumerate(ns):
        remaining = n
        while remaining > 0:
            size = min(batch_size, remaining)
            if used + size > batch_size:
                yield batch
                batch, used = [], 0
            batch.append((i, size))
            used += size
            remaining -= size
    if batch:
        yield batch


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same one: type and index (``cuda`` means the current CUDA device)."""
    if a.type != b.type:
        return False
    if a.index == b.index:
        return True
    if a.type == "cuda":
        current = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.type == "cpu"  # CPU has a single device whatever the index


def check_generator_device(generator: torch.Generator, device: torch.device) -> None:
    """Raise a ValueError naming both devices unless ``generator`` draws on ``device``."""
    if not same_device(generator.device, device):
        raise ValueError(
            f"generator is on device {generator.device} but the noise is drawn on {device}; "
            f"create it with torch.Generator(device={str(device)!r})"
        )


def per_input_generators(generator: GeneratorArg, k: int) -> list[torch.Generator] | None:
    """``generator`` as one generator per input of ``k`` (a single generator is shared), or None."""
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        return [generator] * k
    gens = list(generator)
    if len(gens) != k:
        raise ValueError(f"generator must be one torch.Generator or one per input ({k}), got {len(gens)}")
    return gens


def _generators(generator: GeneratorArg, k: int, device: torch.device) -> list[torch.Generator | None]:
    if generator is None:
        return [None] * k
    if isinstance(generator, torch.Generator):
        gens: list[torch.Generator | None] = [generator] * k
    else:
        gens = list(generator)
        if len(gens) != k:
            raise ValueError(f"generator must be one torch.Generator or one per input ({k}), got {len(gens)}")
    for g in gens:
        if not isinstance(g, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(g).__name__}")
        check_generator_device(g, device)
    return gens


def _sample_sizes(n: int | Sequence[int], k: int) -> list[int]:
    if isinstance(n, Sequence):
        ns = [check_int("n", v, 0) for v in n]
        if len(ns) != k:
            raise ValueError(f"n must be one int or one per input ({k}), got {len(ns)}")
        return ns
    return [check_int("n", n)] * k


def sample_counts(
    model: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    *,
    n: int | Sequence[int],
    num_classes: int,
    batch_size: int,
    sigma: float | None = None,
    noise: NoiseSampler | None = None,
    pass_size: int | None = None,
    generator: GeneratorArg = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> NDArray[np.int64]:
    """Count the base classifier's votes under noise: ``counts[i, c] = #{j : f(x_i + eps_ij) = c}``.

    ``inputs`` is a batch ``(k, *input_shape)`` already on the device where the model runs;
    noise is drawn there in float32 (float64 for float64 inputs) from ``noise`` (or Gaussian
    with ``sigma``). ``n`` is one sample count or one per input (0 allowed there).
    ``generator`` is ``None`` (torch's default generator), one ``torch.Generator`` shared by
    all inputs, or one per input. ``pass_size`` (default ``batch_size``) caps each forward
    pass; it never changes the noise, though a base classifier's last bits can depend on its
    batch size. Runs under ``torch.inference_mode()`` with the model in eval mode, restoring
    its mode afterwards. ``autocast_dtype`` runs the model under ``torch.autocast``;
    ``channels_last`` feeds it channels-last batches.

    Returns an ``int64`` array of shape ``(k, num_classes)`` whose row ``i`` sums to ``n_i``.
    """
    if (sigma is None) == (noise is None):
        raise ValueError("give exactly one of sigma= (Gaussian noise) or noise=")
    sampler: NoiseSampler = Gaussian(check_sigma(sigma)) if sigma is not None else noise  # type: ignore[assignment]
    result: NDArray[np.int64] = run_samples(
        model,
        inputs,
        n=n,
        noise=sampler,
        reduction=ClassVotes(num_classes),
        batch_size=batch_size,
        pass_size=pass_size,
        generator=generator,
        autocast_dtype=autocast_dtype,
        channels_last=channels_last,
    )
    return result


def run_samples(
    model: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    *,
    n: int | Sequence[int],
    noise: NoiseSampler,
    reduction: Reduction,
    batch_size: int,
    pass_size: int | None = None,
    generator: GeneratorArg = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    feed_dtype: torch.dtype | None = None,
) -> Any:
    """Run ``model`` on ``n_i`` noisy copies of each input and return ``reduction.result()``.

    The one sampling loop behind every smoothed model; arguments as in :func:`sample_counts`.
    ``feed_dtype`` (default: the inputs' dtype) is the dtype the model is fed, e.g. its weights'
    dtype: the noise is drawn and added in float32 (float64) whatever it is.
    """
    batch_size = check_int("batch_size", batch_size)
    passes = batch_size if pass_size is None else min(check_int("pass_size", pass_size), batch_size)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.ndim < 2:
        raise ValueError(f"inputs must be a batch of shape (k, ...), got shape {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must have a floating dtype, got {inputs.dtype}")
    k = inputs.shape[0]
    ns = _sample_sizes(n, k)
    device = inputs.device
    gens = _generators(generator, k, device)
    total_n = sum(ns)
    cap = max(1, min(batch_size, total_n))
    reduction.start(k, cap, device)
    if total_n == 0:
        return reduction.result()
    noise_dtype = torch.promote_types(inputs.dtype, torch.float32)  # float32, or float64 for float64 inputs
    x32 = inputs.to(noise_dtype)
    fmt = torch.channels_last if channels_last and inputs.ndim == 4 else torch.contiguous_format
    feed = inputs.dtype if feed_dtype is None else feed_dtype
    # a row-major buffer of one-channel images is already channels-last (the strides of a size-1
    # dimension do not matter): then only a dtype change needs a copy
    in_format = fmt is torch.contiguous_format or (inputs.ndim == 4 and inputs.shape[1] == 1)
    convert = not in_format or feed != noise_dtype
    perturb = getattr(noise, "perturb_", None)
    amp = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with eval_mode(model), torch.inference_mode(), amp:
        buf = torch.empty((cap, *inputs.shape[1:]), dtype=noise_dtype, device=device)
        feed_buf = (
            torch.empty((min(passes, cap), *inputs.shape[1:]), dtype=feed, device=device).contiguous(memory_format=fmt)
            if convert
            else None
        )
        for batch in plan_batches(ns, batch_size):
            total = 0
            for i, size in batch:
                seg = buf[total : total + size]
                if perturb is not None:
                    perturb(seg, x32[i], gens[i])
                else:
                    noise.sample_(seg, gens[i])
                    seg.add_(x32[i])
                total += size
            for start in range(0, total, passes):
                stop = min(start + passes, total)
                chunk = buf[start:stop]
                if feed_buf is not None:
                    chunk = feed_buf[: stop - start].copy_(chunk)
                reduction.collect(start, stop, model(chunk))
            reduction.fold(batch)
    return reduction.result()
