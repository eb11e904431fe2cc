"""Making the hardware work: allocator tuning, thread count, bf16 support and the forward-pass size.

None of these changes a result: they change how fast the same counts come out.

- :func:`tune_malloc` stops glibc's ``malloc`` from returning large blocks to the kernel after
  every forward pass. By default glibc serves blocks above its mmap threshold with fresh
  ``mmap`` calls and unmaps them on ``free``; the kernel then zero-fills new pages on every
  pass (hundreds of thousands of minor page faults per few passes of a small CNN, and ``sys``
  time as large as ``user`` time). With a high mmap threshold, a high trim threshold and a
  top pad, freed blocks stay in the heap and are reused. Cost: the process keeps its peak
  heap instead of giving memory back between passes.
- :func:`set_threads` gives torch one intra-op thread per available core.
- :func:`cpu_supports_bf16` tells whether ``torch.autocast("cpu", torch.bfloat16)`` runs on
  native bf16 instructions.
- :func:`choose_pass_size` measures, once per model, input shape, device and options, which
  forward-pass size is fastest (a CPU often runs small convolutional networks faster per sample
  at batch 100–250 than at 1000, because activations stay in cache).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["choose_pass_size", "cpu_supports_bf16", "set_threads", "tune_malloc"]

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_tuned: bool | None = None


def tune_malloc() -> bool:
    """Keep large freed blocks in glibc's heap for reuse (``mallopt``); True if it took effect.

    Sets ``M_MMAP_THRESHOLD`` to 1 GiB, ``M_TRIM_THRESHOLD`` to 2 GiB and ``M_TOP_PAD`` to
    64 MiB in this process. Safe to call more than once; on platforms other than glibc Linux it
    does nothing and returns False. The process then keeps its peak heap size.
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False  # not glibc (e.g. musl): leave the allocator alone
    ok = all(
        libc.mallopt(ctypes.c_int(param), ctypes.c_int(value))
        for param, value in ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, (1 << 31) - 1), (_M_TOP_PAD, 1 << 26))
    )
    _tuned = bool(ok)
    return _tuned


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (default: the available cores); returns it."""
    n = available_cores() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    torch.set_num_threads(n)
    return n


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic that torch's CPU kernels (oneDNN) use."""
    with contextlib.suppress(AttributeError, RuntimeError):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


_pass_cache: dict[tuple[Any, ...], int] = {}


def choose_pass_size(
    model: Callable[[torch.Tensor], torch.Tensor],
    input_shape: Sequence[int],
    *,
    device: torch.device,
    max_size: int,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
    key: Any = None,
    candidates: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
    budget_s: float = 3.0,
    min_samples: int = 2048,
) -> int:
    """The fastest forward-pass size up to ``max_size``, by a short measured probe (cached).

    First pass: one warm-up, then at least two passes and ``min_samples`` samples of random
    inputs at each candidate size in increasing order, stopping once throughput falls 15% below
    the best so far or ``budget_s`` is spent. Then two more rounds over the sizes measured,
    interleaved, so that a burst of load elsewhere on the machine hits every size alike; the
    size with the highest median samples per second wins. Cached in this process per ``(key,
    input_shape, device, channels_last, autocast_dtype, max_size)``; ``key`` identifies the
    model (default: its object id). The pass size never changes results, only speed.
    """
    sizes = sorted({min(int(c), max_size) for c in candidates if c >= 1})
    model_key = key if key is not None else id(model)
    cache_key = (model_key, tuple(input_shape), str(device), channels_last, autocast_dtype, max_size)
    if cache_key in _pass_cache:
        return _pass_cache[cache_key]
    from smoothcert.runtime.devices import eval_mode

    fmt = torch.channels_last if channels_last and len(input_shape) == 3 else torch.contiguous_format
    amp = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )

    def rate(x: torch.Tensor) -> float:
        reps = max(2, -(-min_samples // len(x)))  # enough samples that tiny passes are timed fairly
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
        _sync(device)
        return reps * len(x) / (time.perf_counter() - t0)

    rates: dict[int, list[float]] = {}
    began = time.perf_counter()
    with eval_mode(model), torch.inference_mode(), amp:
        inputs = {}
        for size in sizes:
            inputs[size] = torch.rand((size, *input_shape), device=device).contiguous(memory_format=fmt)
            model(inputs[size])
            _sync(device)
            rates[size] = [rate(inputs[size])]
            best = max(r[0] for r in rates.values())
            if rates[size][0] < 0.85 * best or time.perf_counter() - began > budget_s:
                break
        for _ in range(2):
            for size in rates:
                rates[size].append(rate(inputs[size]))
    chosen = max(rates, key=lambda s: float(np.median(rates[s])))
    _pass_cache[cache_key] = chosen
    return chosen


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
