"""CERTIFY throughput in sound mode against float mode, on the demo architecture.

Sound mode (``docs/sound.md``) draws integer noise on the input's grid by inverse CDF against
exact thresholds; float mode draws Gaussian noise in float64 and adds it in float32. This script
times fixed-n CERTIFY of the same 8-bit input with the same base model (``small_cnn``, random
weights: throughput does not depend on them) in both modes, interleaved in rounds whose order
alternates, and reports each mode's rate ``(n0 + n) / median time`` and the median of the
per-round ratios sound / float. It also times the noise alone (samples per second of the noisy
batch, no model) so that the cost of the sampler itself is visible.

    python benchmarks/sound_throughput.py                 # about 2-3 minutes on 2 CPU cores
    python benchmarks/sound_throughput.py --quick         # a smoke run, well under a minute

Writes ``benchmarks/results/sound_throughput.{json,md}`` (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from smoothcert.models.architectures import build_model
from smoothcert.smoothing.classifier import SmoothedClassifier
from smoothcert.smoothing.noises import Gaussian
from smoothcert.smoothing.sound import GridNoise

__all__ = ["main", "measure"]

RESULTS = Path(__file__).resolve().parent / "results"


def _time(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(*, n0: int, n: int, batch_size: int, rounds: int, sigma: float, device: str) -> dict[str, Any]:
    """Interleaved timings of CERTIFY (and of the noise alone) in float and sound mode."""
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, mean=[0.2860], std=[0.3530]).to(device).eval()
    x = (torch.randint(0, 256, (1, 28, 28), generator=torch.Generator().manual_seed(1)).float() / 255).to(device)
    modes = {
        "float": SmoothedClassifier(model, 10, sigma, device=device, sound=False),
        "sound": SmoothedClassifier(model, 10, sigma, device=device, sound=True, grid=255),
    }
    samplers = {"float": Gaussian(sigma), "sound": GridNoise(Gaussian(sigma), 255)}
    buf = torch.empty((batch_size, 1, 28, 28), device=device)

    def certify(mode: str) -> None:
        g = torch.Generator(device=device).manual_seed(0)
        modes[mode].certify(x, n0=n0, n=n, alpha=0.001, batch_size=batch_size, generator=g)

    def noise(mode: str) -> None:
        g = torch.Generator(device=device).manual_seed(0)
        s = samplers[mode]
        for _ in range(max(1, (n0 + n) // batch_size)):
            if isinstance(s, GridNoise):
                s.perturb_(buf, x, g)
            else:
                s.sample_(buf, g).add_(x)

    for mode in modes:  # warm-up (also builds and caches the sound thresholds)
        certify(mode)
        noise(mode)
    times: dict[str, dict[str, list[float]]] = {m: {"certify": [], "noise": []} for m in modes}
    ratios: list[float] = []
    for r in range(rounds):
        order = list(modes) if r % 2 == 0 else list(reversed(modes))
        got = {m: _time(lambda m=m: certify(m)) for m in order}
        for m in order:
            times[m]["certify"].append(got[m])
            times[m]["noise"].append(_time(lambda m=m: noise(m)))
        ratios.append(got["float"] / got["sound"])
    total = n0 + n
    noise_n = max(1, total // batch_size) * batch_size
    return {
        "n0": n0,
        "n": n,
        "batch_size": batch_size,
        "rounds": rounds,
        "sigma": sigma,
        "device": device,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "certify_samples_per_s": {m: total / statistics.median(t["certify"]) for m, t in times.items()},
        "noise_samples_per_s": {m: noise_n / statistics.median(t["noise"]) for m, t in times.items()},
        "ratio_sound_over_float": statistics.median(ratios),
        "ratios": ratios,
    }


def to_markdown(res: dict[str, Any]) -> str:
    c, z = res["certify_samples_per_s"], res["noise_samples_per_s"]
    return "\n".join(
        [
            f"# Sound vs float mode: CERTIFY throughput (small_cnn, 1x28x28, sigma={res['sigma']})",
            "",
            f"n0 = {res['n0']}, n = {res['n']}, batch {res['batch_size']}, {res['rounds']} interleaved rounds, "
            f"device {res['device']} ({res['threads']} threads), torch {res['torch']}.",
            "",
            "| mode | CERTIFY samples/s (median) | noise only, samples/s |",
            "|---|---:|---:|",
            f"| float (Gaussian, float64 draws) | {c['float']:,.0f} | {z['float']:,.0f} |",
            f"| sound (grid 1/255, integer noise) | {c['sound']:,.0f} | {z['sound']:,.0f} |",
            "",
            f"Sound / float CERTIFY throughput: **{res['ratio_sound_over_float']:.3f}x** "
            "(median of the per-round ratios).",
            "",
            *(["A `--quick` smoke run (few samples and rounds): indicative only.", ""] if res.get("quick") else []),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: n = 2,000, 3 rounds")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(RESULTS / "sound_throughput"), help="output stem (.json, .md)")
    args = parser.parse_args(argv)
    n = args.n if args.n is not None else (2_000 if args.quick else 10_000)
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 7)
    res = measure(n0=100, n=n, batch_size=args.batch_size, rounds=rounds, sigma=args.sigma, device=args.device)
    res["quick"] = args.quick
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    md = to_markdown(res)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
