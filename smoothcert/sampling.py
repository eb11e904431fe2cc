"""The sampling engine: (model, inputs, sigma, n) -> class counts under Gaussian noise.

This is the only place where the base classifier runs during PREDICT and CERTIFY. For each
input ``x`` it draws ``n`` vectors ``eps ~ N(0, sigma^2 I)`` on the input's device in the
input's dtype, runs the base classifier on ``x + eps`` and counts the arg-max classes with
``torch.bincount`` on the device. Counts come to the host once, at the end.

Work is cut into *segments*: each input's ``n`` samples are split into pieces of
``min(batch_size, remaining)``, and consecutive segments are packed into forward passes of at
most ``batch_size`` samples. So when ``n`` is small, several inputs share one forward pass;
when ``n`` is large, one input spans many. Memory is ``O(batch_size)``, never ``O(n)``.

Reproducibility: each segment's noise is drawn with one ``normal_`` call from its input's
generator. The random stream of an input therefore depends only on its generator, ``n`` and
(when ``n > batch_size``) the batch size, never on which other inputs share its forward
passes. Passing one generator per input makes every input's counts independent of how the
inputs are grouped into calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from ._checks import check_int, check_sigma

__all__ = ["GeneratorArg", "plan_batches", "sample_counts"]

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


def plan_batches(num_inputs: int, n: int, batch_size: int) -> Iterator[list[tuple[int, int]]]:
    """Yield forward passes as lists of ``(input_index, num_samples)`` segments.

    Each input contributes segments of ``min(batch_size, remaining)`` samples, in order; a
    pass takes consecutive segments while their total stays ``<= batch_size``.
    """
    batch: list[tuple[int, int]] = []
    used = 0
    for i in range(num_inputs):
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
        if g.device.type != device.type:
            raise ValueError(
                f"generator is on device {g.device} but the noise is drawn on {device}; "
                f"create it with torch.Generator(device={str(device)!r})"
            )
    return gens


@contextlib.contextmanager
def _eval_mode(model: Callable[..., Any]) -> Iterator[None]:
    """Put an ``nn.Module`` in eval mode and restore its previous train/eval state."""
    if isinstance(model, torch.nn.Module):
        was_training = model.training
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)
    else:
        yield


def sample_counts(
    model: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    *,
    sigma: float,
    n: int,
    num_classes: int,
    batch_size: int,
    generator: GeneratorArg = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> NDArray[np.int64]:
    """Count the base classifier's votes under noise: ``counts[i, c] = #{j : f(x_i + eps_j) = c}``.

    ``inputs`` is a batch ``(k, *input_shape)`` already on the device where the model runs;
    noise is drawn there, in ``inputs.dtype``. ``generator`` is ``None`` (torch's default
    generator), one ``torch.Generator`` shared by all inputs, or one per input. Runs under
    ``torch.inference_mode()`` with the model in eval mode, restoring its mode afterwards.
    ``autocast_dtype`` runs the model under ``torch.autocast`` (mixed precision) and
    ``channels_last`` lays each batch out in channels-last memory format.

    Returns an ``int64`` array of shape ``(k, num_classes)`` whose rows sum to ``n``.
    """
    sigma = check_sigma(sigma)
    n = check_int("n", n)
    batch_size = check_int("batch_size", batch_size)
    num_classes = check_int("num_classes", num_classes, 2)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.ndim < 2:
        raise ValueError(f"inputs must be a batch of shape (k, ...), got shape {tuple(inputs.shape)}")
    k = inputs.shape[0]
    device = inputs.device
    gens = _generators(generator, k, device)
    if k == 0:
        return np.zeros((0, num_classes), dtype=np.int64)
    ids_cache: dict[tuple[int, ...], torch.Tensor] = {}
    amp = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with _eval_mode(model), torch.inference_mode(), amp:
        counts = torch.zeros((k, num_classes), dtype=torch.int64, device=device)
        fmt = torch.channels_last if channels_last and inputs.ndim == 4 else torch.contiguous_format
        buf = torch.empty((min(batch_size, k * n), *inputs.shape[1:]), dtype=inputs.dtype, device=device).contiguous(
            memory_format=fmt
        )
        for batch in plan_batches(k, n, batch_size):
            lo = batch[0][0]
            sizes = tuple(size for _, size in batch)
            total = sum(sizes)
            view = buf[:total]
            pos = 0
            for i, size in batch:
                seg = view[pos : pos + size]
                seg.normal_(0.0, sigma, generator=gens[i])
                seg.add_(inputs[i])
                pos += size
            logits = model(view)
            if logits.ndim != 2 or logits.shape[1] != num_classes:
                raise ValueError(
                    f"base_classifier must return logits of shape (batch, num_classes={num_classes}), "
                    f"got shape {tuple(logits.shape)}"
                )
            preds = logits.argmax(dim=1)
            if len(batch) == 1:
                counts[lo] += torch.bincount(preds, minlength=num_classes)
                continue
            key = tuple(i - lo for i, _ in batch) + sizes
            ids = ids_cache.get(key)
            if ids is None:
                local = torch.tensor([i - lo for i, _ in batch], device=device)
                ids = torch.repeat_interleave(local * num_classes, torch.tensor(sizes, device=device))
                ids_cache[key] = ids
            span = batch[-1][0] - lo + 1
            votes = torch.bincount(ids + preds, minlength=span * num_classes)
            counts[lo : lo + span] += votes.view(span, num_classes)
    return counts.cpu().numpy()
