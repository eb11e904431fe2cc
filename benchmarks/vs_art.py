"""One CERTIFY against the Adversarial Robustness Toolbox's randomized smoothing, in one process.

One Fashion-MNIST-sized input (1 x 28 x 28, 8-bit), n0 = 100 selection and n = 20,000 estimation
samples, batch 1000, sigma 0.25, alpha 0.001, the same 2-conv CNN (``small_cnn``, random weights:
throughput does not depend on them) for both:

* **ART**: ``art.estimators.certification.randomized_smoothing.PyTorchRandomizedSmoothing``
  (``sample_size=100`` selection draws, ``certify(x, n=20000, batch_size=1000)``), on the CPU;
* **smoothcert** float mode and sound mode: ``SmoothedClassifier.certify`` (channels-last, measured
  pass size: the CLI's defaults).

Rounds interleave the three, their order rotating; the report gives each one's median time and the
median of per-round ratios ART time / smoothcert time (target: >= 1.2x). ART is an optional
comparison: without it the script says so and exits 0. Install it, e.g., in a separate
directory: ``pip install --target /tmp/artpkgs adversarial-robustness-toolbox scikit-learn six``
and run with ``PYTHONPATH=/tmp/artpkgs:.``.

    python benchmarks/vs_art.py             # 5 rounds (about a minute on a quiet 2-core CPU)
    python benchmarks/vs_art.py --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

from smoothcert.models.architectures import build_model
from smoothcert.smoothing.classifier import SmoothedClassifier

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    try:
        from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing
    except ImportError:
        print(
            "skipped: the Adversarial Robustness Toolbox (pip package adversarial-robustness-toolbox) is not installed"
        )
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    n0, n, batch, sigma = 100, args.n, 1000, 0.25
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, mean=[0.2860], std=[0.3530]).eval()
    x = torch.randint(0, 256, (1, 28, 28), generator=torch.Generator().manual_seed(1)).float() / 255
    art = PyTorchRandomizedSmoothing(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
        sample_size=n0,
        scale=sigma,
        alpha=0.001,
    )
    cl_model = build_model("small_cnn", num_classes=10, in_channels=1, mean=[0.2860], std=[0.3530]).eval()
    cl_model.load_state_dict(model.state_dict())
    cl_model = cl_model.to(memory_format=torch.channels_last)
    common: dict[str, Any] = dict(num_classes=10, sigma=sigma, channels_last=True, pass_size="auto")
    smoothed = {
        "smoothcert float": SmoothedClassifier(cl_model, sound=False, **common),
        "smoothcert sound": SmoothedClassifier(cl_model, sound=True, grid=255, **common),
    }
    x_np = x[None].numpy().astype(np.float32)

    def run_art() -> None:
        np.random.seed(0)  # noqa: NPY002 - ART draws its noise from numpy's global generator
        art.certify(x_np, n=n, batch_size=batch)

    jobs: dict[str, Any] = {"ART": run_art}
    for name, sc in smoothed.items():
        jobs[name] = lambda sc=sc: sc.certify(
            x, n0=n0, n=n, alpha=0.001, batch_size=batch, generator=torch.Generator().manual_seed(0)
        )
    for fn in jobs.values():  # warm-up (thresholds, pass-size probe, allocator)
        fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    names = list(jobs)
    for r in range(args.rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            jobs[k]()
            times[k].append(time.perf_counter() - start)
    print(f"one input 1x28x28, n0={n0}, n={n}, batch {batch}, {args.rounds} rounds, {torch.get_num_threads()} threads")
    for k, v in times.items():
        print(f"  {k:18s} {statistics.median(v):7.2f} s  ({(n0 + n) / statistics.median(v):,.0f} samples/s)")
    for k in smoothed:
        ratio = statistics.median(a / b for a, b in zip(times["ART"], times[k], strict=True))
        print(f"ART time / {k} time: {ratio:.2f}x (median of per-round ratios)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
