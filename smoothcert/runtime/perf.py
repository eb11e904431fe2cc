"""Making the hardware work: allocator tuning, thread count, bf16 support and the forward-pass size.

None of these changes the noise or the counting; they change how fast the counts come out. (The
base classifier's logits may differ in their last bits between layouts and pass sizes, as any
change of kernel can make them differ.)

- :func:`tune_malloc` stops glibc's ``malloc`` from returning large blocks to the kernel after
  every forward pass. By default glibc serves blocks above its mmap threshold with fresh
  ``mmap`` calls and unmaps them on ``free``; the kernel then zero-fills new pages on every
  pass (hundreds of thousands of minor page faults per few passes of a small CNN, and ``sys``
  time as large as ``user`` time). With a high mmap threshold, a high trim threshold and a
  top pad, freed blocks stay in the heap and are reused. Cost: the process keeps its peak
  heap instead of giving memory back between passes. Each parameter is set on its own, with
  smaller fallbacks where glibc refuses a value; a :class:`MallocTuning` record says what took
  effect. It is a process-wide side effect, so the library never calls it on import.
- :func:`set_threads` gives torch its intra-op thread count: ``OMP_NUM_THREADS`` when set,
  otherwise the available cores divided among the processes ``torchrun`` started on this
  machine (``LOCAL_WORLD_SIZE``), so that k ranks do not oversubscribe the CPU k-fold.
- :func:`cpu_supports_bf16` tells whether the CPU has native bf16 instructions (AVX512-BF16 or
  AMX on x86, the BF16 extension on Arm), from its feature flags.
- :func:`probe_pass_size` measures, once per model, input shape, device and options, which
  forward-pass size is fastest (a CPU often runs small convolutional networks faster per sample
  at batch 100–250 than at 1000, because activations stay in cache), within a wall-time budget;
  :func:`choose_pass_size` returns just the size. The probe calls the model on synthetic
  inputs: uniform in ``[0, 1)``, or with ``grid=q`` random grid points ``i / q``, ``i`` in
  ``0..q`` (so that a model certified in sound mode only ever sees grid points).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import inspect
import math
import os
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smoothcert.core.errors import ConfigError

__all__ = [
    "MallocTuning",
    "PassSizeProbe",
    "available_cores",
    "choose_pass_size",
    "cpu_flags",
    "cpu_supports_bf16",
    "default_threads",
    "probe_pass_size",
    "set_threads",
    "tune_malloc",
]

# ----------------------------------------------------------------------------- malloc

# glibc's mallopt parameter numbers, and the values tried for each, largest first: a glibc may
# refuse a value (some builds cap the mmap threshold at half their heap size, 32 MiB on 64-bit)
_MALLOPT_LADDERS: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    ("M_MMAP_THRESHOLD", -3, tuple(1 << s for s in range(30, 24, -1))),  # 1 GiB ... 32 MiB
    ("M_TRIM_THRESHOLD", -1, ((1 << 31) - 1, *(1 << s for s in range(30, 26, -1)))),  # 2 GiB ... 128 MiB
    ("M_TOP_PAD", -2, (1 << 26, 1 << 25, 1 << 24)),  # 64 MiB ... 16 MiB
)


@dataclass(frozen=True)
class MallocTuning:
    """What :func:`tune_malloc` set: each parameter's value that took effect, and those refused.

    True when at least one parameter took effect; :attr:`complete` when every one did (perhaps
    at a fallback value). ``reason`` says why nothing was tried (not Linux, not glibc), else "".
    """

    applied: tuple[tuple[str, int], ...] = ()
    refused: tuple[str, ...] = ()
    reason: str = ""

    def __bool__(self) -> bool:
        return bool(self.applied)

    @property
    def complete(self) -> bool:
        return bool(self.applied) and not self.refused

    @property
    def values(self) -> dict[str, int]:
        return dict(self.applied)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"applied": {name: value}, "refused": [...], "reason": ...}``."""
        return {"applied": self.values, "refused": list(self.refused), "reason": self.reason}

    def describe(self) -> str:
        """One line for a log: what took effect, what was refused."""
        if not self.applied and not self.refused:
            return f"default allocator ({self.reason or 'not tuned'})"
        parts = [f"{name}={value >> 20} MiB" for name, value in self.applied]
        parts += [f"{name} refused" for name in self.refused]
        return "malloc: " + ", ".join(parts)


_tuned: MallocTuning | None = None


def _glibc_mallopt() -> tuple[Callable[[int, int], int] | None, str]:
    if not sys.platform.startswith("linux"):
        return None, f"not Linux ({sys.platform})"
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None, "not glibc"  # e.g. musl: leave the allocator alone
    fn = libc.mallopt
    return (lambda param, value: int(fn(ctypes.c_int(param), ctypes.c_int(value)))), ""


def tune_malloc(*, mallopt: Callable[[int, int], int] | None = None) -> MallocTuning:
    """Keep large freed blocks in glibc's heap for reuse (``mallopt``); returns what took effect.

    Tries ``M_MMAP_THRESHOLD`` 1 GiB, ``M_TRIM_THRESHOLD`` 2 GiB and ``M_TOP_PAD`` 64 MiB, each
    on its own, falling back to smaller values (down to 32 MiB, 128 MiB and 16 MiB) where glibc
    refuses one. A process-wide change that lasts until exit: the process keeps its peak heap.
    Computed once per process (later calls return the same record); on platforms other than
    glibc Linux it does nothing. ``mallopt(param, value) -> nonzero on success`` replaces
    glibc's function (for tests); it is then called every time and nothing is cached.
    """
    global _tuned
    if mallopt is None:
        if _tuned is not None:
            return _tuned
        mallopt, reason = _glibc_mallopt()
        if mallopt is None:
            _tuned = MallocTuning(reason=reason)
            return _tuned
        _tuned = _apply_mallopt(mallopt)
        return _tuned
    return _apply_mallopt(mallopt)


def _apply_mallopt(mallopt: Callable[[int, int], int]) -> MallocTuning:
    applied: list[tuple[str, int]] = []
    refused: list[str] = []
    for name, param, values in _MALLOPT_LADDERS:
        took = next((v for v in values if mallopt(param, v)), None)
        if took is None:
            refused.append(name)
        else:
            applied.append((name, took))
    return MallocTuning(applied=tuple(applied), refused=tuple(refused))


# ----------------------------------------------------------------------------- threads


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _positive_int(text: str | None) -> int | None:
    """The first entry of an OpenMP-style value (``"4"`` or ``"4,2"``) if a positive integer."""
    if text is None:
        return None
    head = text.split(",")[0].strip()
    return int(head) if head.isdigit() and int(head) >= 1 else None


def default_threads(environ: Mapping[str, str] | None = None, *, cores: int | None = None) -> int:
    """Intra-op threads for this process: ``OMP_NUM_THREADS`` if set to a positive integer, else
    ``cores // LOCAL_WORLD_SIZE`` (the processes ``torchrun`` started on this machine; 1 without
    it), at least 1. ``environ`` defaults to ``os.environ``, ``cores`` to :func:`available_cores`.

    Note that ``torchrun`` itself sets ``OMP_NUM_THREADS=1`` for every rank when more than one is
    started and the variable was unset; that setting is then respected.
    """
    env = os.environ if environ is None else environ
    omp = _positive_int(env.get("OMP_NUM_THREADS"))
    if omp is not None:
        return omp
    local = _positive_int(env.get("LOCAL_WORLD_SIZE")) or 1
    return max(1, (available_cores() if cores is None else int(cores)) // local)


def set_threads(threads: int | None = None, *, environ: Mapping[str, str] | None = None) -> int:
    """Set torch's intra-op thread count (default: :func:`default_threads`); returns it."""
    n = default_threads(environ) if threads is None else int(threads)
    if n < 1:
        raise ConfigError(f"threads must be >= 1, got {threads!r}")
    torch.set_num_threads(n)
    return n


# ----------------------------------------------------------------------------- bf16

_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 flags; Arm's "Features: ... bf16"


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags in a ``/proc/cpuinfo`` text (x86 ``flags`` and Arm ``Features`` lines)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in {"flags", "features"}:
            flags.update(value.split())
    return frozenset(flags)


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16, AMX-BF16 or Arm BF16).

    With ``cpuinfo`` (a ``/proc/cpuinfo`` text) the answer comes from its flags alone. Otherwise
    torch's oneDNN must report bf16 support (it also does so where it would only emulate bf16 on
    AVX-512) and, where ``/proc/cpuinfo`` is readable, the CPU must list a native bf16 flag.
    """
    if cpuinfo is not None:
        return bool(cpu_flags(cpuinfo) & _BF16_FLAGS)
    torch_says = False
    with contextlib.suppress(AttributeError, RuntimeError):
        torch_says = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not torch_says:
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return True  # no flags to read (not Linux): trust torch
    return bool(cpu_flags(text) & _BF16_FLAGS)


# ----------------------------------------------------------------------------- the pass size


@dataclass(frozen=True)
class PassSizeProbe:
    """The outcome of :func:`probe_pass_size`.

    ``size``: the pass size chosen. ``seconds``: how long the probe took (by its clock; 0 when
    a single size was possible). ``passes``: forward passes it ran, warm-ups included.
    ``rates``: ``(size, median samples per second)`` of each size measured. ``budget_spent``:
    whether it stopped early because the budget ran out. ``cached``: this record was served
    from the cache and cost nothing now (``seconds`` is that of the original probe).
    """

    size: int
    seconds: float
    passes: int
    rates: tuple[tuple[int, float], ...]
    budget_s: float
    budget_spent: bool
    cached: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, e.g. for a run's sidecar (infinite budgets become None)."""
        return {
            "size": self.size,
            "seconds": self.seconds,
            "passes": self.passes,
            "rates": {str(s): r for s, r in self.rates},
            "budget_s": self.budget_s if math.isfinite(self.budget_s) else None,
            "budget_spent": self.budget_spent,
            "cached": self.cached,
        }


# Cache: per model object, held weakly (an entry dies with its model, so a new model at the same
# address is never served an old entry); models that cannot be weakly referenced are not cached.
# With an explicit ``key`` the caller names the model and a plain dict holds the entries.
_by_model: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], PassSizeProbe]] = weakref.WeakKeyDictionary()
_by_key: dict[tuple[Any, ...], PassSizeProbe] = {}
_CALIBRATION = 4  # samples in the probe's first pass


def _layout(model: Any) -> tuple[Any, ...]:
    """Dtype, device, shape and strides of a module's parameters: a re-laid-out or moved model re-probes."""
    if not isinstance(model, torch.nn.Module):
        return ()
    return tuple((p.dtype, str(p.device), tuple(p.shape), p.stride()) for p in model.parameters())


def _cache_slot(model: Any, key: Any) -> tuple[dict[tuple[Any, ...], PassSizeProbe] | None, tuple[Any, ...]]:
    """The dict holding this model's entries and the model's part of the key (None: not cacheable)."""
    if key is not None:
        return _by_key, (key,)
    owner: Any = model
    extra: tuple[str, ...] = ()
    if inspect.ismethod(model):  # a bound method is created afresh on each access: key on its object
        owner, extra = model.__self__, (model.__func__.__qualname__,)
    try:
        slot = _by_model.setdefault(owner, {})
    except TypeError:  # not weakly referenceable
        return None, ()
    return slot, (*extra, _layout(owner))


def probe_pass_size(
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
    clock: Callable[[], float] = time.perf_counter,
    grid: int | None = None,
) -> PassSizeProbe:
    """Measure the fastest forward-pass size up to ``max_size`` within ``budget_s`` seconds (cached).

    Candidates (each capped at ``max_size``) are tried in increasing order: a warm-up pass, then
    passes of random inputs until ``min_samples`` samples (at least two passes) or a share of the
    budget (``budget_s / (candidates + 2)``, at least one pass) is spent, stopping once a
    size's throughput falls 15% below the best so far. Then up to two more rounds over the
    sizes measured, interleaved, so that a burst of load elsewhere on the machine hits every size
    alike; the size with the highest median samples per second wins.

    The budget bounds wall time: three passes of 4 samples give a rate; a candidate is tried only
    if its warm-up and one pass, predicted from the best rate so far, fit in what is left of the
    budget (when not even the smallest fits, it is chosen unmeasured), and no pass starts once
    the budget is spent. The probe so takes about ``budget_s`` at most, plus one pass where a
    prediction was wrong, however slow the model. ``clock`` (seconds) is injectable.

    Cached in this process per model object (held weakly), its parameters' layout, ``input_shape``,
    ``device``, ``channels_last``, ``autocast_dtype``, ``max_size`` and ``candidates``; an explicit
    ``key`` names the model instead. Run it before timing examples to keep its cost out of them.

    The model is called (about 300 passes for a small CPU model) on synthetic inputs: uniform
    in ``[0, 1)``, or with ``grid=q`` grid points ``i / q`` (``i`` uniform in ``0..q``, the
    values float32 ``fl(i / q)``), as sound mode needs. The inputs' values do not enter the
    cache key (they do not change the speed).
    """
    if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or grid < 2):
        raise ConfigError(f"grid must be None or an integer >= 2, got {grid!r}")
    if int(max_size) < 1:
        raise ConfigError(f"max_size must be >= 1, got {max_size!r}")
    if not budget_s > 0:
        raise ConfigError(f"budget_s must be > 0, got {budget_s!r}")
    sizes = sorted({min(int(c), int(max_size)) for c in candidates if c >= 1})
    if len(sizes) <= 1:
        size = sizes[0] if sizes else int(max_size)
        return PassSizeProbe(size, 0.0, 0, (), float(budget_s), False)
    slot, model_key = _cache_slot(model, key)
    options = (tuple(input_shape), str(device), channels_last, autocast_dtype, int(max_size), tuple(sizes))
    cache_key = (*model_key, *options)
    if slot is not None and cache_key in slot:
        return dataclasses.replace(slot[cache_key], cached=True)
    result = _probe(
        model, input_shape, device, sizes, channels_last, autocast_dtype, budget_s, min_samples, clock, grid
    )
    if slot is not None:
        slot[cache_key] = result
    return result


def _probe(
    model: Callable[[torch.Tensor], torch.Tensor],
    input_shape: Sequence[int],
    device: torch.device,
    sizes: list[int],
    channels_last: bool,
    autocast_dtype: torch.dtype | None,
    budget_s: float,
    min_samples: int,
    clock: Callable[[], float],
    grid: int | None,
) -> PassSizeProbe:
    from smoothcert.runtime.devices import eval_mode

    fmt = torch.channels_last if channels_last and len(input_shape) == 3 else torch.contiguous_format
    amp = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    began = clock()
    passes = 0
    spent = False

    def left() -> float:
        return budget_s - (clock() - began)

    def forward(x: torch.Tensor) -> None:
        nonlocal passes
        model(x)
        _sync(device)
        passes += 1

    share = budget_s / (len(sizes) + 2)  # time for one measurement: every size gets its turn

    def rate(x: torch.Tensor) -> float:
        """Samples per second over ``min_samples`` samples (>= 2 passes) or ``share`` seconds, >= one pass."""
        reps = max(2, -(-min_samples // len(x)))
        t0, done = clock(), 0
        while done < reps and (done == 0 or (left() > 0 and clock() - t0 < share)):
            forward(x)
            done += 1
        elapsed = clock() - t0
        return done * len(x) / elapsed if elapsed > 0 else math.inf

    rates: dict[int, list[float]] = {}
    local = torch.Generator(device=device).manual_seed(0)  # the probe never touches the global RNG

    def synthetic(size: int) -> torch.Tensor:
        if grid is None:
            return torch.rand((size, *input_shape), device=device, generator=local)
        i = torch.randint(0, grid + 1, (size, *input_shape), device=device, generator=local)
        return i.to(torch.float32).div_(grid)  # fl(i / q), as an 8-bit image is stored

    with eval_mode(model), torch.inference_mode(), amp:
        # passes of a few samples (the first pays one-time costs, the best of two more is kept): a
        # pessimistic rate that predicts what larger passes cost
        tiny = synthetic(min(_CALIBRATION, sizes[0]))
        tiny = tiny.contiguous(memory_format=fmt)
        forward(tiny)
        first = 0.0
        for _ in range(2):
            if left() <= 0:
                break
            t0 = clock()
            forward(tiny)
            elapsed = clock() - t0
            first = max(first, len(tiny) / elapsed if elapsed > 0 else math.inf)
        inputs: dict[int, torch.Tensor] = {}
        for size in sizes:
            best = max((r[0] for r in rates.values()), default=first)
            if left() <= 0 or best <= 0 or (math.isfinite(best) and 2 * size / best > left()):
                spent = True
                break
            x = synthetic(size)
            inputs[size] = x.contiguous(memory_format=fmt)
            forward(inputs[size])  # warm-up
            if left() <= 0 and rates:
                spent = True
                break
            rates[size] = [rate(inputs[size])]
            if rates[size][0] < 0.85 * max(r[0] for r in rates.values()):
                break
        for _ in range(2):
            for size in list(rates):
                if left() <= 0:
                    spent = True
                    break
                rates[size].append(rate(inputs[size]))
    medians = {s: float(np.median(r)) for s, r in rates.items()}
    chosen = max(medians, key=lambda s: medians[s]) if medians else sizes[0]  # no time to measure: the smallest
    return PassSizeProbe(
        size=chosen,
        seconds=clock() - began,
        passes=passes,
        rates=tuple(sorted(medians.items())),
        budget_s=float(budget_s),
        budget_spent=spent,
    )


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
    clock: Callable[[], float] = time.perf_counter,
    grid: int | None = None,
) -> int:
    """The pass size :func:`probe_pass_size` chooses (same arguments, same cache)."""
    return probe_pass_size(
        model,
        input_shape,
        device=device,
        max_size=max_size,
        channels_last=channels_last,
        autocast_dtype=autocast_dtype,
        key=key,
        candidates=candidates,
        budget_s=budget_s,
        min_samples=min_samples,
        clock=clock,
        grid=grid,
    ).size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
