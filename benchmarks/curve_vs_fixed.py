"""Curve mode against a fixed-n CERTIFY log on the same examples.

Given a model directory and a fixed-n certify log (the TSV ``smoothcert certify`` writes: idx,
label, predict, radius, correct, time, n0, n columns), runs curve mode
(:func:`smoothcert.smoothing.curve.certify_curve_batch`, deployment: class selected from ``n0``
draws) on the log's examples (the first ``--max``) with the same seed and alpha, and reports:

- forward passes per example (mean, median, p99): the log's ``n0 + n`` against curve mode's ``n_used``;
- wall time per example (the log's ``time`` column against curve mode's);
- certified accuracy at radii 0, cap/8, ..., cap for both (certified, correct, radius >= r) and
  the largest difference;
- ACR with radii capped at the cap, for both.

    python benchmarks/curve_vs_fixed.py --model runs/demo/model_sigma_0.5 \\
        --log runs/demo_full/certify_sigma_0.5.tsv --max 500 --json benchmarks/results/curve_vs_fixed.json

A 20-example smoke run: add ``--max 20``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothcert.io.logs import read_table
from smoothcert.runs.certify import RunConfig, example_generator, prepare
from smoothcert.smoothing.curve import certify_curve_batch, default_radii


def read_fixed(path: Path, limit: int | None) -> dict[str, np.ndarray]:
    header, rows = read_table(path)
    cols = {name: [r[i] for r in rows] for i, name in enumerate(header)}
    for need in ("idx", "label", "predict", "radius", "correct", "n0", "n"):
        if need not in cols:
            raise SystemExit(f"{path}: not a fixed-n certify log (no {need!r} column)")
    out = {
        "idx": np.array(cols["idx"], dtype=int),
        "label": np.array(cols["label"], dtype=int),
        "correct": np.array(cols["correct"], dtype=int).astype(bool),
        "radius": np.array(cols["radius"], dtype=float),
        "passes": np.array(cols["n0"], dtype=int) + np.array(cols["n"], dtype=int),
        "time": np.array(cols.get("time", ["nan"] * len(rows)), dtype=float),
    }
    order = np.argsort(out["idx"])[:limit]
    return {k: v[order] for k, v in out.items()}


def summary(correct: np.ndarray, radius: np.ndarray, passes: np.ndarray, grid: list[float]) -> dict[str, Any]:
    cap = grid[-1]
    return {
        "passes": {
            "mean": float(passes.mean()),
            "median": float(np.median(passes)),
            "p99": float(np.quantile(passes, 0.99)),
        },
        "certified_accuracy": [float(np.mean(correct & (radius >= r))) for r in grid],
        "acr_capped": float(np.mean(np.where(correct, np.minimum(radius, cap), 0.0))),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--log", required=True, help="fixed-n certify log (TSV)")
    p.add_argument("--max", type=int, default=None, help="first MAX examples of the log (default: all)")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--n-max", type=int, default=100_000)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--radius-cap", type=float, default=None, help="default: the radius at pA = Phi(2) (2 sigma, L2)")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=100, help="examples certified together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    fixed = read_fixed(Path(args.log), args.max)
    config = RunConfig(
        command="certify",
        model=args.model,
        out=str(Path(tempfile.gettempdir()) / "curve_vs_fixed_unused.tsv"),  # prepare() writes nothing
        data_dir=args.data_dir,
        n0=args.n0,
        n=args.n_max,
        alpha=args.alpha,
        batch=args.batch,
        seed=args.seed,
        device=args.device,
    )
    plan = prepare(config)
    dim = int(np.prod(plan.dataset[int(fixed["idx"][0])][0].shape))
    grid = list(default_radii(plan.smoothed, dim, args.radius_cap))
    certs = []
    began = time.perf_counter()
    for start in range(0, len(fixed["idx"]), args.chunk):
        chunk = [int(i) for i in fixed["idx"][start : start + args.chunk]]
        xs = torch.stack([plan.dataset[i][0] for i in chunk])
        gens = [example_generator(args.seed, i, plan.device) for i in chunk]
        certs += certify_curve_batch(
            plan.smoothed,
            xs,
            alpha=args.alpha,
            n_max=args.n_max,
            n0=args.n0,
            batch_size=args.batch,
            radii=grid,
            generator=gens,
        )
    wall = time.perf_counter() - began
    correct = np.array([c.label == y for c, y in zip(certs, fixed["label"], strict=True)])
    radius = np.array([c.radius for c in certs])
    curve = summary(correct, radius, np.array([c.n_used for c in certs]), grid)
    ref = summary(fixed["correct"], fixed["radius"], fixed["passes"], grid)
    diff = np.array(curve["certified_accuracy"]) - np.array(ref["certified_accuracy"])
    result = {
        "model": args.model,
        "log": args.log,
        "examples": len(certs),
        "alpha": args.alpha,
        "n_max": args.n_max,
        "radii": grid,
        "curve": curve | {"wall_s_per_example": wall / len(certs)},
        "fixed": ref | {"wall_s_per_example": float(np.nanmean(fixed["time"]))},
        "largest_accuracy_difference": float(np.abs(diff).max()),
        "acr_relative_difference": curve["acr_capped"] / ref["acr_capped"] - 1 if ref["acr_capped"] else None,
        "reasons": {r: sum(c.reason == r for c in certs) for r in ("cap", "decided", "tolerance", "n_max")},
        "device": str(plan.device),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    print(
        "| | passes mean | median | p99 | s/example | " + " | ".join(f"r = {r:g}" for r in grid) + " | ACR (capped) |"
    )
    print("|---|---:|---:|---:|---:|" + "---:|" * len(grid) + "---:|")
    for name, s in (("fixed", result["fixed"]), ("curve", result["curve"])):
        acc = " | ".join(f"{a:.3f}" for a in s["certified_accuracy"])
        ps = s["passes"]
        print(
            f"| {name} | {ps['mean']:,.0f} | {ps['median']:,.0f} | {ps['p99']:,.0f} | "
            f"{s['wall_s_per_example']:.3f} | {acc} | {s['acr_capped']:.4f} |"
        )
    rel = result["acr_relative_difference"]
    print(
        f"\nlargest certified-accuracy difference {100 * result['largest_accuracy_difference']:.2f} points; "
        f"ACR difference {'n/a' if rel is None else f'{100 * rel:+.2f}%'}; stopping reasons {result['reasons']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
