"""The sampling engine: (model, inputs, noise, n) -> class counts.

This is the only place where the base classifier runs during PREDICT and CERTIFY. For each
input ``x`` it draws ``n`` noise vectors on the input's device, runs the base classifier on
``x + eps`` and counts the arg-max classes with ``torch.bincount`` on the device. Counts come
to the host once, at the end.

**Noise.** A noise is any object with a ``sample_(out, generator)`` method that fills a float32
tensor in place (see :mod:`smoothcert.smoothing.noises`); ``sigma=`` alone means isotropic Gaussian
noise, drawn as ``out.normal_(0, sigma, generator=g)``. Noise is always drawn and added in
float32 into a contiguous (row-major) buffer, whatever the input's dtype and whatever memory
format the model runs in: the smoothing distribution is exact, and options such as
channels-last or a half-precision model change speed (or the base classifier's numerics),
never the noise stream. The noisy batch is converted (layout, dtype) only on its way into the
model; a half-precision model then classifies ``cast(x + eps)``, a deterministic function of
``x + eps``, so certificates stay exact for that base classifier.

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
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from smoothcert.core.checks import check_int, check_sigma
from smoothcert.runtime.devices import eval_mode
from smoothcert.smoothing.noises import Gaussian

__all__ = ["GeneratorArg", "NoiseSampler", "check_generator_device", "plan_batches", "same_device", "sample_counts"]

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


class NoiseSampler(Protocol):
    """What the engine needs of a noise distribution: in-place float32 draws from a generator."""

    def sample_(self, out: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor: ...


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
    pass and never changes the counts. Runs under ``torch.inference_mode()`` with the model in
    eval mode, restoring its mode afterwards. ``autocast_dtype`` runs the model under
    ``torch.autocast``; ``channels_last`` feeds it channels-last batches.

    Returns an ``int64`` array of shape ``(k, num_classes)`` whose row ``i`` sums to ``n_i``.
    """
    if (sigma is None) == (noise is None):
        raise ValueError("give exactly one of sigma= (Gaussian noise) or noise=")
    sampler: NoiseSampler = Gaussian(check_sigma(sigma)) if sigma is not None else noise  # type: ignore[assignment]
    batch_size = check_int("batch_size", batch_size)
    passes = batch_size if pass_size is None else min(check_int("pass_size", pass_size), batch_size)
    num_classes = check_int("num_classes", num_classes, 2)
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
    if total_n == 0:
        return np.zeros((k, num_classes), dtype=np.int64)
    noise_dtype = torch.promote_types(inputs.dtype, torch.float32)  # float32, or float64 for float64 inputs
    x32 = inputs.to(noise_dtype)
    fmt = torch.channels_last if channels_last and inputs.ndim == 4 else torch.contiguous_format
    convert = fmt is torch.channels_last or inputs.dtype != noise_dtype
    ids_cache: dict[tuple[int, ...], torch.Tensor] = {}
    amp = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with eval_mode(model), torch.inference_mode(), amp:
        counts = torch.zeros((k, num_classes), dtype=torch.int64, device=device)
        cap = min(batch_size, total_n)
        buf = torch.empty((cap, *inputs.shape[1:]), dtype=noise_dtype, device=device)
        feed_buf = (
            torch.empty((min(passes, cap), *inputs.shape[1:]), dtype=inputs.dtype, device=device).contiguous(
                memory_format=fmt
            )
            if convert
            else None
        )
        preds = torch.empty(cap, dtype=torch.int64, device=device)
        for batch in plan_batches(ns, batch_size):
            lo = batch[0][0]
            sizes = tuple(size for _, size in batch)
            total = sum(sizes)
            pos = 0
            for i, size in batch:
                seg = buf[pos : pos + size]
                sampler.sample_(seg, gens[i])
                seg.add_(x32[i])
                pos += size
            for start in range(0, total, passes):
                stop = min(start + passes, total)
                chunk = buf[start:stop]
                if feed_buf is not None:
                    chunk = feed_buf[: stop - start].copy_(chunk)
                logits = model(chunk)
                if logits.ndim != 2 or logits.shape[1] != num_classes:
                    raise ValueError(
                        f"base_classifier must return logits of shape (batch, num_classes={num_classes}), "
                        f"got shape {tuple(logits.shape)}"
                    )
                torch.argmax(logits, dim=1, out=preds[start:stop])
            votes_of = preds[:total]
            if len(batch) == 1:
                counts[lo] += torch.bincount(votes_of, minlength=num_classes)
                continue
            key = tuple(i - lo for i, _ in batch) + sizes
            ids = ids_cache.get(key)
            if ids is None:
                local = torch.tensor([i - lo for i, _ in batch], device=device)
                ids = torch.repeat_interleave(local * num_classes, torch.tensor(sizes, device=device))
                ids_cache[key] = ids
            span = batch[-1][0] - lo + 1
            votes = torch.bincount(ids + votes_of, minlength=span * num_classes)
            counts[lo : lo + span] += votes.view(span, num_classes)
    return counts.cpu().numpy()
