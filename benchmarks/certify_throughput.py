"""Certification throughput against the machine's real limit: its measured matmul peak.

In one run, on the same weights and inputs:

**Peak.** The machine's matmul rate, ``2 m^3 / t`` for a square ``torch.mm`` of size ``m``
(2048 on a CPU, 8192 on a GPU), best of ``--peak-repeats`` timings, in float32 and, where the
device has native bf16 (:func:`smoothcert.runtime.perf.cpu_supports_bf16`, or CUDA), in bfloat16. It
is measured at the start and at the end of the run and the larger value is kept (a peak is an
upper bound; a busy machine only lowers it).

**FLOPs per sample** of each model, from ``torch.utils.flop_counter.FlopCounterMode`` on one
forward pass: matmul and convolution FLOPs (2 per multiply-add); elementwise work (ReLU, batch
norm, additions) is not counted, as in the matmul peak. Achieved GFLOP/s = samples/s x FLOPs
per sample; its share of the peak is the figure to read.

**CERTIFY rows**, per model ((n0 + n) samples per example, batch 1000 = the noise block):

- ``old defaults``: ``SmoothedClassifier`` as before issue 14: forward passes of the whole
  batch (1000), contiguous layout, glibc's default ``malloc``, torch's default thread count.
  Measured in a child process, because :func:`smoothcert.runtime.perf.tune_malloc` is process-wide and
  cannot be undone.
- ``new defaults``: :func:`~smoothcert.runtime.perf.tune_malloc`, :func:`~smoothcert.runtime.perf.set_threads`,
  a channels-last copy of the model, ``channels_last=True`` and ``pass_size="auto"`` (measured by
  :func:`~smoothcert.runtime.perf.choose_pass_size`, at most the batch).
- ``new + bf16``: the same under ``torch.autocast(dtype=torch.bfloat16)``, where supported.
- ``new + fp16`` (``--fp16``, CUDA only): the same under ``torch.autocast(dtype=torch.float16)``.

Each row times, interleaved in rounds (rotated order, after one warm-up of each):
(a) the raw forward rate of the base model on CERTIFY's own pass schedule, under the row's
settings (layout, pass size, precision; random inputs, no noise) -- the ceiling for fixed-n
CERTIFY; (b) smoothcert's CERTIFY; (c) a re-implementation of the 2019 reference loop (repeat
the input, add noise, forward 1000 at a time on the contiguous model, move predictions to the
host, count them in Python) doing the same CERTIFY, in the row's process (fp32 rows only).
Rates are ``(n0 + n) / median time``; the ratios b/a and b/c are medians of the per-round
ratios. ``old defaults`` rows skip (a). "new vs old" compares median rates from the two
processes (measured one after the other, not interleaved).

**PREDICT** over many inputs at small n: smoothcert with the new defaults (inputs packed into
shared passes, auto pass size) against the 2019 per-example loop; median times of
``--predict-repeats`` rounds. **Memory**: peak RSS of a fresh process (new defaults) certifying
one ``small_cnn`` input at n = 10,000 and n = 100,000.

    python benchmarks/certify_throughput.py                       # CPU: about 6-8 minutes on 2 cores
    python benchmarks/certify_throughput.py --json out.json       # also write every figure
    python benchmarks/certify_throughput.py --quick --models small_cnn   # a smoke run, well under a minute

On a CUDA device (the default when one is present) resnet50 is added and n = 100,000. ``--n`` sets n
for every model; ``--warmup-n`` runs each function's warm-up at a smaller n (the pass sizes, hence the
kernels autotuned, are those of the timed runs), which keeps a GPU run at N = 100,000 short
(``benchmarks/gpu.sh``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from smoothcert import SmoothedClassifier
from smoothcert.core import stats
from smoothcert.models.architectures import build_model
from smoothcert.runtime.perf import choose_pass_size, cpu_supports_bf16, set_threads, tune_malloc

SHAPES = {
    "small_cnn": (1, 28, 28),
    "cifar_resnet20": (3, 32, 32),
    "cifar_resnet110": (3, 32, 32),
    "resnet50": (3, 224, 224),
}
# samples per CERTIFY on a CPU: enough passes for a stable rate, small enough for a 2-core machine
CPU_N = {"small_cnn": 10_000, "cifar_resnet20": 2_000, "cifar_resnet110": 500, "resnet50": 500}
QUICK_N = {"small_cnn": 2_000, "cifar_resnet20": 300, "cifar_resnet110": 100, "resnet50": 100}
# inputs for the PREDICT comparison on a CPU (n = 100 each)
CPU_PREDICT_INPUTS = {"small_cnn": 1000, "cifar_resnet20": 100, "cifar_resnet110": 30, "resnet50": 20}
# the autocast dtype of each CERTIFY row's configuration
AMP: dict[str, torch.dtype | None] = {"old": None, "new": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- the hardware limit


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, *, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a square ``torch.mm`` of ``size``: ``2 size^3 / t`` for the best of ``repeats`` timings."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((size, size), generator=g, device=device).to(dtype)
    b = torch.randn((size, size), generator=g, device=device).to(dtype)
    out = torch.empty((size, size), dtype=dtype, device=device)
    torch.mm(a, b, out=out)  # warm-up
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def bf16_supported(device: torch.device) -> bool:
    """Whether the device runs bf16 natively (CPU: oneDNN's check; CUDA: torch's)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_supports_bf16()


def measure_peaks(device: torch.device, repeats: int) -> dict[str, float]:
    size = 8192 if device.type == "cuda" else 2048
    peaks = {"fp32": matmul_peak(torch.float32, device, size=size, repeats=repeats)}
    if bf16_supported(device):
        peaks["bf16"] = matmul_peak(torch.bfloat16, device, size=size, repeats=repeats)
    if device.type == "cuda":
        peaks["fp16"] = matmul_peak(torch.float16, device, size=size, repeats=repeats)
    return peaks


def flops_per_sample(model: torch.nn.Module, shape: Sequence[int], device: torch.device, batch: int = 2) -> float:
    """Matmul + convolution FLOPs of one forward pass per sample (torch's FLOP counter, 2 per multiply-add)."""
    x = torch.rand((batch, *shape), device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / batch


# ----------------------------------------------------------------------------- the 2019 loop, re-implemented


def _count_in_python(predictions: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.zeros(num_classes, dtype=int)
    for p in predictions:
        counts[p] += 1
    return counts


def reference_sample(
    model: torch.nn.Module, x: torch.Tensor, num: int, batch_size: int, sigma: float, num_classes: int
) -> np.ndarray:
    """The reference's sampling: per batch, repeat x, add fresh noise, forward, count on the host."""
    with torch.no_grad():
        counts = np.zeros(num_classes, dtype=int)
        remaining = num
        while remaining > 0:
            this = min(batch_size, remaining)
            remaining -= this
            batch = x.repeat((this, 1, 1, 1))
            noise = torch.randn_like(batch) * sigma
            predictions = model(batch + noise).argmax(1)
            counts += _count_in_python(predictions.cpu().numpy(), num_classes)
        return counts


def reference_certify(
    model: torch.nn.Module, x: torch.Tensor, n0: int, n: int, alpha: float, batch: int, sigma: float, k: int
) -> tuple[int, float]:
    model.eval()
    selection = reference_sample(model, x, n0, batch, sigma, k)
    top = int(selection.argmax())
    estimation = reference_sample(model, x, n, batch, sigma, k)
    p_lower = stats.clopper_pearson_lower(int(estimation[top]), n, alpha)
    return (top, sigma * float(stats.cohen_radius(p_lower))) if p_lower > 0.5 else (-1, 0.0)


def reference_predict(
    model: torch.nn.Module, x: torch.Tensor, n: int, alpha: float, batch: int, sigma: float, k: int
) -> int:
    model.eval()
    counts = reference_sample(model, x, n, batch, sigma, k)
    top2 = counts.argsort()[::-1][:2]
    return int(top2[0]) if stats.predict_pvalue(int(counts[top2[0]]), int(counts[top2[1]])) <= alpha else -1


# ----------------------------------------------------------------------------- timing


def round_times(
    fns: list[Callable[[], Any]],
    repeats: int,
    device: torch.device,
    warmups: Sequence[Callable[[], Any]] | None = None,
) -> np.ndarray:
    """Times of each function in each of ``repeats`` rounds, shape (repeats, len(fns)).

    Each round runs every function once, interleaved and in rotated order, so a change in the machine's speed hits
    them alike; rates are then taken from median times and ratios from the median of the per-round ratios.
    ``warmups`` (default: ``fns``) run once first, e.g. the same work at a smaller n.
    """
    for fn in fns if warmups is None else warmups:
        fn()  # warm-up (allocations, pass-size probe, cudnn autotune)
    times = np.zeros((repeats, len(fns)))
    for r in range(repeats):
        for j in range(len(fns)):
            i = (j + r) % len(fns)  # rotate the order, so no function always runs first
            fn = fns[i]
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[r, i] = time.perf_counter() - t
    return times


def certify_passes(n0: int, n: int, batch: int, pass_size: int) -> list[int]:
    """The forward-pass sizes of one CERTIFY: blocks of at most ``batch`` samples, each cut into passes of ``pass_size``."""
    sizes: list[int] = []
    for total in (n0, n):
        for start in range(0, total, batch):
            block = min(batch, total - start)
            sizes += [min(pass_size, block - s) for s in range(0, block, pass_size)]
    return sizes


def build(arch: str, device: torch.device) -> tuple[torch.nn.Module, int]:
    shape = SHAPES[arch]
    k = 1000 if arch == "resnet50" else 10
    torch.manual_seed(0)
    model = build_model(arch, num_classes=k, in_channels=shape[0], mean=[0.5] * shape[0], std=[0.25] * shape[0])
    return model.to(device).eval(), k


def bench_certify(arch: str, config: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One CERTIFY row: ``config`` is ``old`` (child process, untuned), ``new`` or ``bf16`` (tuned process)."""
    shape = SHAPES[arch]
    model, k = build(arch, device)
    b, n0, n = args.batch, args.n0, args.n[arch]
    wn = min(n, args.warmup_n) if args.warmup_n else n  # n of the warm-up runs
    x = torch.rand(shape, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    alpha, sigma = 0.001, 0.25

    def ref(m: int = n) -> None:
        reference_certify(model, x.unsqueeze(0), n0, m, alpha, b, sigma, k)

    row: dict[str, Any] = {"model": arch, "config": config, "batch": b, "n0": n0, "n": n}
    if config == "old":
        smoothed = SmoothedClassifier(model, k, sigma, device=device, pass_size=None, sound=False)
        row["pass_size"] = b

        def old(m: int = n) -> None:
            smoothed.certify(x, n0=n0, n=m, alpha=alpha, batch_size=b, generator=gen)

        times = round_times([old, ref], args.old_repeats, device, warmups=[lambda: old(wn), lambda: ref(wn)])
        t_ours, t_ref = np.median(times, axis=0)
        row["raw_forward_samples_per_s"] = None
        row["b_over_a"] = None
        row["b_over_c"] = float(np.median(times[:, 1] / times[:, 0]))
    else:
        amp = AMP[config]
        fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
        p = choose_pass_size(fast, shape, device=device, max_size=b, channels_last=True, autocast_dtype=amp)
        row["pass_size"] = p
        # pass_size="auto" finds the value just probed in choose_pass_size's cache (same model, shape, options)
        smoothed = SmoothedClassifier(
            fast, k, sigma, device=device, channels_last=True, pass_size="auto", autocast_dtype=amp, sound=False
        )
        data = torch.rand((p, *shape), device=device).contiguous(memory_format=torch.channels_last)

        def raw(m: int = n) -> None:
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None),
            ):
                for size in certify_passes(n0, m, b, p):
                    fast(data[:size]).argmax(1)

        def ours(m: int = n) -> None:
            smoothed.certify(x, n0=n0, n=m, alpha=alpha, batch_size=b, generator=gen)

        fns: list[Callable[[], Any]] = [raw, ours] + ([ref] if amp is None else [])
        warm: list[Callable[[], Any]] = [lambda: raw(wn), lambda: ours(wn)] + ([lambda: ref(wn)] if amp is None else [])
        times = round_times(fns, args.repeats, device, warmups=warm)
        med = np.median(times, axis=0)
        t_raw, t_ours = med[0], med[1]
        t_ref = med[2] if amp is None else None
        row["raw_forward_samples_per_s"] = (n0 + n) / t_raw
        row["b_over_a"] = float(np.median(times[:, 0] / times[:, 1]))
        row["b_over_a_range"] = [float(v) for v in np.percentile(times[:, 0] / times[:, 1], [0, 100])]
        row["b_over_c"] = float(np.median(times[:, 2] / times[:, 1])) if amp is None else None
    row["rounds"] = int(times.shape[0])
    row["smoothcert_samples_per_s"] = (n0 + n) / t_ours
    row["reference_samples_per_s"] = (n0 + n) / t_ref if t_ref is not None else None
    row["seconds_per_example_at_100k"] = 100_100 / row["smoothcert_samples_per_s"]
    return row


def bench_predict(arch: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """PREDICT over many inputs: smoothcert (new defaults, packed passes) vs the 2019 per-example loop."""
    shape = SHAPES[arch]
    model, k = build(arch, device)
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    count = args.predict_inputs or (1000 if device.type == "cuda" else CPU_PREDICT_INPUTS[arch])
    if args.quick and not args.predict_inputs:
        count = max(5, count // 10)
    xs = torch.rand((count, *shape), device=device)
    smoothed = SmoothedClassifier(fast, k, 0.25, device=device, channels_last=True, pass_size="auto", sound=False)
    gen = torch.Generator(device=device).manual_seed(0)
    n, b = args.predict_n, args.batch
    times = round_times(
        [
            lambda: smoothed.predict_batch(xs, n=n, alpha=0.001, batch_size=b, generator=gen),
            lambda: [reference_predict(model, xs[i : i + 1], n, 0.001, b, 0.25, k) for i in range(len(xs))],
        ],
        args.predict_repeats,
        device,
    )
    t_ours, t_ref = np.median(times, axis=0)
    return {
        "model": arch,
        "inputs": count,
        "n": n,
        "batch": b,
        "pass_size": choose_pass_size(fast, shape, device=device, max_size=b, channels_last=True),
        "smoothcert_s": float(t_ours),
        "reference_s": float(t_ref),
        "speedup": float(np.median(times[:, 1] / times[:, 0])),
    }


def peak_memory(arch: str, n: int, batch: int, device: str) -> dict[str, Any]:
    """Peak resident memory (MiB) of a fresh process (new defaults) that certifies one input with ``n`` samples."""
    code = f"""
import resource, torch, json
from smoothcert import SmoothedClassifier
from smoothcert.models.architectures import build_model
from smoothcert.runtime.perf import set_threads, tune_malloc
tune_malloc(); set_threads()
shape = {SHAPES[arch]!r}
m = build_model({arch!r}, num_classes=10, in_channels=shape[0], mean=[0.5]*shape[0], std=[0.25]*shape[0]).to({device!r}).eval()
m = m.to(memory_format=torch.channels_last)
s = SmoothedClassifier(m, 10, 0.25, device={device!r}, channels_last=True, pass_size="auto", sound=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s.certify(torch.rand(shape), n0=100, n={n}, alpha=0.001, batch_size={batch})
gpu = torch.cuda.max_memory_allocated() / 2**20 if {device!r}.startswith('cuda') else None
print(json.dumps({{"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "before_mib": before / 1024, "gpu_mib": gpu}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} logical cores visible)" if names else cpu
    except OSError:
        pass
    if torch.cuda.is_available():
        cpu += f"; GPU {torch.cuda.get_device_name(0)}"
    return f"{cpu}; torch {torch.__version__}"


# ----------------------------------------------------------------------------- report


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def annotate(row: dict[str, Any], flops: float, peaks: dict[str, float]) -> None:
    """Add MFLOP/sample, achieved GFLOP/s and its share of each peak to a CERTIFY row."""
    row["mflop_per_sample"] = flops / 1e6
    row["gflop_per_s"] = row["smoothcert_samples_per_s"] * flops / 1e9
    for kind, peak in peaks.items():
        row[f"share_of_{kind}_peak"] = row["gflop_per_s"] / peak


def print_certify_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| model | config | pass | n | MFLOP/sample | (a) raw forward /s | (b) CERTIFY /s | GFLOP/s | "
        "% fp32 peak | % bf16/fp16 peak | b/a | (c) 2019 loop /s | b/c | s/example at N=100k |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        fp32, bf16 = r.get("share_of_fp32_peak"), r.get("share_of_bf16_peak", r.get("share_of_fp16_peak"))
        print(
            f"| {r['model']} | {r['config']} | {r['pass_size']} | {r['n']:,} | {r['mflop_per_sample']:.1f} | "
            f"{_fmt(r['raw_forward_samples_per_s'], ',.0f')} | {r['smoothcert_samples_per_s']:,.0f} | "
            f"{r['gflop_per_s']:.1f} | {_fmt(None if fp32 is None else 100 * fp32, '.0f')} | "
            f"{_fmt(None if bf16 is None else 100 * bf16, '.0f')} | {_fmt(r['b_over_a'], '.3f')} | "
            f"{_fmt(r['reference_samples_per_s'], ',.0f')} | {_fmt(r['b_over_c'], '.2f')} | "
            f"{r['seconds_per_example_at_100k']:.1f} |",
            flush=True,
        )


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models",
        default=None,
        help="comma list (default: small_cnn,cifar_resnet20,cifar_resnet110 and, on a GPU, resnet50)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--batch", type=int, default=1000, help="noise block and upper bound of the pass size (default 1000)"
    )
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds of the new-default rows (default 5)")
    p.add_argument("--old-repeats", type=int, default=3, help="timed rounds of the old-default rows (default 3)")
    p.add_argument("--peak-repeats", type=int, default=5, help="timings of the matmul peak, best kept (default 5)")
    p.add_argument("--predict-inputs", type=int, default=None, help="inputs per PREDICT comparison (default per model)")
    p.add_argument("--predict-n", type=int, default=100)
    p.add_argument("--predict-repeats", type=int, default=3)
    p.add_argument(
        "--predict-models",
        default=None,
        help="models for the PREDICT comparison (comma list; default: --models; '' none)",
    )
    p.add_argument("--no-old", action="store_true", help="skip the old-default rows (and their child process)")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast rows")
    p.add_argument("--fp16", action="store_true", help="add fp16 autocast rows (CUDA only)")
    p.add_argument("--n", dest="n_all", type=int, default=None, help="samples per CERTIFY for every model")
    p.add_argument("--warmup-n", type=int, default=None, help="n of each function's warm-up run (default: the timed n)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: small n, 2 rounds (1 for old defaults), few PREDICT inputs, no memory",
    )
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child-old", action="store_true", help=argparse.SUPPRESS)  # internal: old-default rows, JSON out
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.models = (
        args.models.split(",")
        if args.models
        else ["small_cnn", "cifar_resnet20", "cifar_resnet110"] + (["resnet50"] if gpu else [])
    )
    for m in args.models:
        if m not in SHAPES:
            p.error(f"unknown model {m!r}; choose from {', '.join(SHAPES)}")
    args.predict_models = (
        args.models if args.predict_models is None else [m for m in args.predict_models.split(",") if m]
    )
    args.n = dict.fromkeys(SHAPES, 100_000) if gpu else dict(QUICK_N if args.quick else CPU_N)
    if args.n_all is not None:
        args.n = dict.fromkeys(SHAPES, args.n_all)
    if args.fp16 and not gpu:
        p.error("--fp16 needs a CUDA device")
    if args.quick:
        args.repeats, args.old_repeats, args.peak_repeats, args.predict_repeats = 2, 1, 3, 1
        args.no_memory = True
    return args


def run_old_in_child(argv: Sequence[str]) -> dict[str, Any]:
    """The old-default rows, in a fresh process that never tunes malloc or sets threads."""
    out = subprocess.run([sys.executable, __file__, *argv, "--child-old"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"old-defaults child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _without_json(argv: Sequence[str]) -> list[str]:
    """``argv`` less ``--json FILE`` / ``--json=FILE`` (the child reports on stdout only)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--json":
            skip = True
        elif not a.startswith("--json="):
            out.append(a)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    device = torch.device(args.device)
    if args.child_old:
        rows = [bench_certify(m, "old", args, device) for m in args.models]
        print(json.dumps({"threads": torch.get_num_threads(), "rows": rows}))
        return
    # the untuned process first, while this one is idle
    old = run_old_in_child(_without_json(argv)) if not args.no_old else None
    tuned = tune_malloc()
    threads = set_threads()
    result: dict[str, Any] = {
        "machine": machine(),
        "device": str(device),
        "malloc_tuned": tuned.as_dict(),
        "threads_new": threads,
        "threads_old": old["threads"] if old else None,
    }
    peaks_start = measure_peaks(device, args.peak_repeats)
    rows = list(old["rows"]) if old else []
    use_bf16 = bf16_supported(device) and not args.no_bf16
    flops: dict[str, float] = {}
    for m in args.models:
        model, _ = build(m, device)
        flops[m] = flops_per_sample(model, SHAPES[m], device)
        rows.append(bench_certify(m, "new", args, device))
        if use_bf16:
            rows.append(bench_certify(m, "bf16", args, device))
        if args.fp16:
            rows.append(bench_certify(m, "fp16", args, device))
    predict = [bench_predict(m, args, device) for m in args.predict_models]
    peaks_end = measure_peaks(device, args.peak_repeats)
    peaks = {kind: max(peaks_start[kind], peaks_end[kind]) for kind in peaks_start}
    result["peak_gflop_per_s"] = peaks
    result["peak_gflop_per_s_start_end"] = {"start": peaks_start, "end": peaks_end}
    order = {"old": 0, "new": 1, "bf16": 2, "fp16": 3}
    rows.sort(key=lambda r: (args.models.index(r["model"]), order[r["config"]]))
    for r in rows:
        # the share of the bf16 (fp16) peak is meaningful only for the bf16 (fp16) row, of fp32 for the others
        kind = r["config"] if r["config"] in ("bf16", "fp16") else "fp32"
        annotate(r, flops[r["model"]], {k: v for k, v in peaks.items() if k == kind})
        base = next((o for o in rows if o["model"] == r["model"] and o["config"] == "old"), None)
        r["speedup_over_old"] = r["smoothcert_samples_per_s"] / base["smoothcert_samples_per_s"] if base else None
    result["certify"] = rows
    result["predict"] = predict

    peak_txt = ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in peaks.items())
    print(
        f"machine: {result['machine']}; threads: old {result['threads_old']}, new {threads}; "
        f"{tuned.describe()}\nmatmul peak (best of start and end of run): {peak_txt}\n"
    )
    print_certify_table(rows)
    print()
    for r in rows:
        if r["speedup_over_old"] is not None and r["config"] != "old":
            print(f"{r['model']}: {r['config']} CERTIFY {r['speedup_over_old']:.2f}x the old defaults")
    for r in predict:
        print(
            f"\nPREDICT, {r['inputs']} inputs at n = {r['n']}, {r['model']} (pass {r['pass_size']}): smoothcert "
            f"{r['smoothcert_s']:.2f} s, 2019 loop {r['reference_s']:.2f} s, speed-up {r['speedup']:.2f}x"
        )
    if not args.no_memory:
        mem = {str(n): peak_memory("small_cnn", n, args.batch, args.device) for n in (10_000, 100_000)}
        result["memory"] = mem
        print(
            f"\npeak RSS certifying one input (small_cnn, batch {args.batch}, new defaults): "
            f"n = 10,000: {mem['10000']['rss_mib']:.0f} MiB; n = 100,000: {mem['100000']['rss_mib']:.0f} MiB"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
