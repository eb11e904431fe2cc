"""Certification throughput: the base model's raw forward rate, smoothcert, and the 2019 loop.

For each model, on the same weights and inputs, at the same batch size:

  (a) raw forward throughput of the base model (samples/s): the ceiling for fixed-n CERTIFY;
  (b) smoothcert's CERTIFY throughput, (n0 + n) samples per example;
  (c) a re-implementation of the 2019 reference sampling loop (repeat the input, add noise,
      forward, move predictions to the CPU, count them in a Python loop) doing the same CERTIFY.

It also times PREDICT over many inputs at small n (smoothcert packs several inputs into one
forward pass; the reference runs one example at a time) and the peak memory of CERTIFY at
n = 100,000 against n = 10,000 (each in a fresh process).

    python benchmarks/certify_throughput.py                 # all CPU models, markdown table
    python benchmarks/certify_throughput.py --models small_cnn --json out.json
    python benchmarks/certify_throughput.py --channels-last --compile   # model-speed options

Every figure is the best of ``--repeats`` runs (timings on a shared machine only err upward).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from smoothcert import SmoothedClassifier, stats
from smoothcert.models import build_model

SHAPES = {
    "small_cnn": (1, 28, 28),
    "cifar_resnet20": (3, 32, 32),
    "cifar_resnet110": (3, 32, 32),
    "resnet50": (3, 224, 224),
}


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_times(fns: list[Callable[[], Any]], repeats: int, device: torch.device) -> np.ndarray:
    """Times of each function in each of ``repeats`` rounds, shape (repeats, len(fns)).

    Each round runs every function once, interleaved and in rotated order, so a change in the machine's speed hits
    them alike; ratios are then taken per round and summarized by their median.
    """
    for fn in fns:
        fn()  # warm-up (allocations, cudnn autotune, compilation)
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


def bench_model(arch: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    shape = SHAPES[arch]
    torch.manual_seed(0)
    model = (
        build_model(
            arch,
            num_classes=10 if arch != "resnet50" else 1000,
            in_channels=shape[0],
            mean=[0.5] * shape[0],
            std=[0.25] * shape[0],
        )
        .to(device)
        .eval()
    )
    k = 10 if arch != "resnet50" else 1000
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward: Any = torch.compile(model) if args.compile else model
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp or "")
    b = args.batch
    n = args.n.get(arch, 10_000)
    x = torch.rand(shape, device=device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    batch = torch.rand((b, *shape), device=device).contiguous(memory_format=fmt)

    # the same forward passes CERTIFY makes: n0 selection samples, then n estimation samples
    sizes = [min(b, args.n0)] * math.ceil(args.n0 / b) + [b] * (n // b) + ([n % b] if n % b else [])

    def raw() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            for size in sizes:
                forward(batch[:size]).argmax(1)

    smoothed = SmoothedClassifier(forward, k, 0.25, device=device, autocast_dtype=amp, channels_last=args.channels_last)
    gen = torch.Generator(device=device).manual_seed(0)

    def ours() -> None:
        smoothed.certify(x, n0=args.n0, n=n, alpha=0.001, batch_size=b, generator=gen)

    def ref() -> None:
        reference_certify(forward, x.unsqueeze(0), args.n0, n, 0.001, b, 0.25, k)

    times = round_times([raw, ours, ref], args.repeats, device)
    t_raw, t_ours, t_ref = np.median(times, axis=0)
    row: dict[str, Any] = {
        "model": arch,
        "batch": b,
        "n0": args.n0,
        "n": n,
        "raw_forward_samples_per_s": (args.n0 + n) / t_raw,
        "smoothcert_samples_per_s": (args.n0 + n) / t_ours,
        "reference_samples_per_s": (args.n0 + n) / t_ref,
    }
    row["b_over_a"] = float(np.median(times[:, 0] / times[:, 1]))
    row["b_over_c"] = float(np.median(times[:, 2] / times[:, 1]))
    row["b_over_a_range"] = [float(v) for v in np.percentile(times[:, 0] / times[:, 1], [0, 100])]
    row["seconds_per_example_at_100k"] = 100_100 / row["smoothcert_samples_per_s"]
    return row


def bench_predict(arch: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    shape = SHAPES[arch]
    torch.manual_seed(0)
    model = (
        build_model(arch, num_classes=10, in_channels=shape[0], mean=[0.5] * shape[0], std=[0.25] * shape[0])
        .to(device)
        .eval()
    )
    xs = torch.rand((args.predict_inputs, *shape), device=device)
    smoothed = SmoothedClassifier(model, 10, 0.25, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    n = args.predict_n
    t_ours, t_ref = np.median(
        round_times(
            [
                lambda: smoothed.predict_batch(xs, n=n, alpha=0.001, batch_size=args.batch, generator=gen),
                lambda: [
                    reference_predict(model, xs[i : i + 1], n, 0.001, args.batch, 0.25, 10) for i in range(len(xs))
                ],
            ],
            args.predict_repeats,
            device,
        ),
        axis=0,
    )
    return {
        "model": arch,
        "inputs": len(xs),
        "n": n,
        "batch": args.batch,
        "smoothcert_s": t_ours,
        "reference_s": t_ref,
        "speedup": t_ref / t_ours,
    }


def peak_memory(arch: str, n: int, batch: int, device: str) -> float:
    """Peak resident memory (MiB) of a fresh process that certifies one input with ``n`` samples."""
    code = f"""
import resource, torch, json
from smoothcert import SmoothedClassifier
from smoothcert.models import build_model
shape = {SHAPES[arch]!r}
m = build_model({arch!r}, num_classes=10, in_channels=shape[0], mean=[0.5]*shape[0], std=[0.25]*shape[0]).to({device!r}).eval()
s = SmoothedClassifier(m, 10, 0.25, device={device!r})
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
        cpu = (
            f"{names[0]} ({len(names)} logical cores visible, torch threads {torch.get_num_threads()})"
            if names
            else cpu
        )
    except OSError:
        pass
    if torch.cuda.is_available():
        cpu += f"; GPU {torch.cuda.get_device_name(0)}"
    return f"{cpu}; torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models",
        default=None,
        help="comma list (default: small_cnn,cifar_resnet20,cifar_resnet110 and, on a GPU, resnet50)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--predict-inputs", type=int, default=1000)
    p.add_argument("--predict-n", type=int, default=100)
    p.add_argument("--predict-repeats", type=int, default=3)
    p.add_argument(
        "--predict-models", default="small_cnn", help="models for the PREDICT comparison (comma list; empty: none)"
    )
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--amp", choices=["bf16", "fp16"])
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    models = (
        args.models.split(",")
        if args.models
        else ["small_cnn", "cifar_resnet20", "cifar_resnet110"] + (["resnet50"] if gpu else [])
    )
    # samples per CERTIFY: enough passes for a stable rate, small enough for a 2-core CPU
    args.n = {"small_cnn": 10_000, "cifar_resnet20": 2_000, "cifar_resnet110": 500, "resnet50": 10_000}
    if gpu:
        args.n = {"small_cnn": 100_000, "cifar_resnet20": 100_000, "cifar_resnet110": 100_000, "resnet50": 100_000}
    result: dict[str, Any] = {
        "machine": machine(),
        "device": str(device),
        "options": {"channels_last": args.channels_last, "compile": args.compile, "amp": args.amp},
    }
    print(f"machine: {result['machine']}; options: {result['options']}\n")
    print(
        "| model | batch | n | (a) raw forward /s | (b) smoothcert /s | (c) 2019 loop /s | b/a | b/c | s/example at N=100k |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    result["certify"] = []
    for m in models:
        r = bench_model(m, args, device)
        result["certify"].append(r)
        print(
            f"| {r['model']} | {r['batch']} | {r['n']:,} | {r['raw_forward_samples_per_s']:,.0f} | {r['smoothcert_samples_per_s']:,.0f} | "
            f"{r['reference_samples_per_s']:,.0f} | {r['b_over_a']:.3f} | {r['b_over_c']:.2f} | {r['seconds_per_example_at_100k']:.1f} |",
            flush=True,
        )
    result["predict"] = [bench_predict(m, args, device) for m in args.predict_models.split(",") if m]
    if not args.no_memory:
        result["memory"] = {str(n): peak_memory("small_cnn", n, args.batch, args.device) for n in (10_000, 100_000)}
    for r in result["predict"]:
        print(
            f"\nPREDICT, {r['inputs']} inputs at n = {r['n']}, {r['model']}: smoothcert {r['smoothcert_s']:.2f} s, "
            f"2019 loop {r['reference_s']:.2f} s, speed-up {r['speedup']:.2f}x"
        )
    if "memory" in result:
        mem = result["memory"]
        print(
            f"\npeak RSS certifying one input (small_cnn, batch {args.batch}): n = 10,000: {mem['10000']['rss_mib']:.0f} MiB; "
            f"n = 100,000: {mem['100000']['rss_mib']:.0f} MiB"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
