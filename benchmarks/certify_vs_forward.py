"""CERTIFY throughput against the base model's best raw forward throughput, in one process.

Issue 26 §3's targets, measured on ``small_cnn`` (1 x 28 x 28, Fashion-MNIST's shape) or, with
``--arch cifar_resnet20``, the CIFAR-10 ResNet-20 (3 x 32 x 32), with random weights (throughput
does not depend on them) and the CLI's defaults for the smoothed model (channels-last, measured
pass size, batch 1000, n0 = 100):

* **raw forward**: the model alone on a fixed batch, the fastest of NCHW and channels-last at
  batch 64, 128, 256, 512 and 1000 (each measured in every round; the best median is the reference);
* **sound** and **float** CERTIFY of one 8-bit input, ``(n0 + n) / time`` (float mode's default
  float32 Gaussian draws).

Rounds interleave everything, their order rotating; the report gives the median of per-round
ratios. Timings are wall clock (``--clock cpu``: the process's CPU time, steadier when other jobs
share the machine) in one process with ``torch.get_num_threads()`` threads (``--threads``).

    python benchmarks/certify_vs_forward.py            # 5 rounds, n = 10,000 (about a minute)
    python benchmarks/certify_vs_forward.py --quick    # 2 rounds, n = 2,000
    python benchmarks/certify_vs_forward.py --arch cifar_resnet20 --n 4000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from smoothcert.models.architectures import build_model
from smoothcert.smoothing.classifier import SmoothedClassifier

__all__ = ["main"]

BATCHES = (64, 128, 256, 512, 1000)
# input shape and normalization of each benchmarked architecture
SHAPES = {
    "small_cnn": ((1, 28, 28), [0.2860], [0.3530]),
    "cifar_resnet20": ((3, 32, 32), [0.49, 0.48, 0.45], [0.25] * 3),
}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def _timed(fn: Any) -> float:
    start = _clock()
    fn()
    return _clock() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int)
    p.add_argument("--n", type=int)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--arch", choices=tuple(SHAPES), default="small_cnn")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall, or process CPU time (steadier on a shared machine)",
    )
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 5)
    n = args.n or (2_000 if args.quick else 10_000)
    n0, batch = 100, 1000
    torch.manual_seed(0)
    shape, mean, std = SHAPES[args.arch]
    model = build_model(args.arch, num_classes=10, in_channels=shape[0], mean=mean, std=std).eval()
    x = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(1)).float() / 255
    cl_model = build_model(args.arch, num_classes=10, in_channels=shape[0], mean=mean, std=std).eval()
    cl_model.load_state_dict(model.state_dict())
    cl_model = cl_model.to(memory_format=torch.channels_last)  # the CLI's default layout
    common = dict(num_classes=10, sigma=args.sigma, channels_last=True, pass_size="auto")
    smoothed = {
        "sound": SmoothedClassifier(cl_model, sound=True, grid=255, **common),  # type: ignore[arg-type]
        "float": SmoothedClassifier(cl_model, sound=False, **common),  # type: ignore[arg-type]
    }

    def certify(name: str) -> None:
        g = torch.Generator().manual_seed(0)
        smoothed[name].certify(x, n0=n0, n=n, alpha=0.001, batch_size=batch, generator=g)

    inputs = {b: torch.rand(b, *shape) for b in BATCHES}

    def forward(layout: str, b: int) -> None:
        m = cl_model if layout == "cl" else model
        xb = inputs[b].contiguous(memory_format=torch.channels_last) if layout == "cl" else inputs[b]
        with torch.inference_mode():
            for _ in range(max(1, (n0 + n) // b)):
                m(xb)

    jobs: dict[str, tuple[Any, int]] = {name: (lambda name=name: certify(name), n0 + n) for name in smoothed}
    for layout in ("nchw", "cl"):
        for b in BATCHES:
            jobs[f"forward {layout}@{b}"] = (lambda layout=layout, b=b: forward(layout, b), max(1, (n0 + n) // b) * b)
    for fn, _ in jobs.values():  # warm-up: thresholds, pass-size probe, allocator
        fn()
    rates: dict[str, list[float]] = {k: [] for k in jobs}
    names = list(jobs)
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            fn, count = jobs[k]
            rates[k].append(count / _timed(fn))
    fwd = {k: statistics.median(v) for k, v in rates.items() if k.startswith("forward")}
    best = max(fwd, key=fwd.__getitem__)

    def per_round(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    def vs_best_forward(a: str) -> float:  # per round: against the best forward configuration of that round
        return statistics.median(rates[a][r] / max(rates[k][r] for k in fwd) for r in range(rounds))

    res = {
        "arch": args.arch,
        "n0": n0,
        "n": n,
        "batch": batch,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rates": {k: statistics.median(v) for k, v in rates.items()},
        "best_forward": best,
        "sound / best forward": vs_best_forward("sound"),
        "float / best forward": vs_best_forward("float"),
        "sound / float": per_round("sound", "float"),
    }
    res["clock"] = args.clock
    print(
        f"{args.arch} {'x'.join(map(str, shape))}, n0={n0}, n={n}, batch {batch}, {rounds} rounds, "
        f"{res['threads']} threads, {args.clock} clock"
    )
    for k, v in res["rates"].items():
        print(f"  {k:22s} {v:12,.0f} samples/s")
    for k in (
        "sound / best forward",
        "float / best forward",
        "sound / float",
    ):
        print(f"{k}: {res[k]:.3f}x (median of per-round ratios; best forward: {best})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
