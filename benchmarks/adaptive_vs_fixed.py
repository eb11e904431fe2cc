"""Sequential (adaptive) certification against fixed-n CERTIFY on the same Fashion-MNIST examples.

For each model (the demo's ``small_cnn`` at each sigma), on the same test examples (every
``--skip``-th, ``--max`` of them), with the same seed and alpha:

- fixed CERTIFY: ``n0`` + ``n`` forward passes per example (the paper's 100 + 100,000);
- decision mode at each radius r (``--radii``): ``certify --adaptive --radius r --n-max n``;
- max-radius mode with a cap (``--caps``, in units of sigma): ``certify --adaptive --radius-cap``.

Certified accuracy at r is the fraction of examples certified correct with radius >= r (fixed
and max-radius logs) or decided ``certified`` with the right label (decision logs). The paired
difference adaptive - fixed is the mean of per-example differences in {-1, 0, 1}; its standard
error is their sample standard deviation / sqrt(m), the 95% interval +-1.96 SE. The average
certified radius (ACR) of max-radius mode is compared with the fixed log's ACR with both radii
capped at the cap (radii above the cap are what the user said they do not care about).
Forward passes per example are the logs' own counts (``n_used``; ``n0 + n`` for fixed).

Every run goes through ``smoothcert.runs.certify.run`` (the CLI's code path) and writes a normal,
resumable log under ``--out``; figures go to ``--json`` and a markdown table to stdout.

    python benchmarks/adaptive_vs_fixed.py --models runs/demo/model_sigma_0.25,runs/demo/model_sigma_0.5,runs/demo/model_sigma_1 \\
        --out runs/adaptive_bench --json benchmarks/results/adaptive_vs_fixed.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothcert.io.logs import read_table
from smoothcert.runs.certify import RunConfig, run
from smoothcert.runtime import perf


def _log(path: Path) -> dict[str, np.ndarray]:
    header, rows = read_table(path)
    cols = {name: [r[i] for r in rows] for i, name in enumerate(header)}
    out: dict[str, np.ndarray] = {
        "idx": np.array(cols["idx"], dtype=int),
        "correct": np.array(cols["correct"], dtype=int).astype(bool),
        "radius": np.array(cols["radius"], dtype=float),
        "time": np.array(cols["time"], dtype=float),
    }
    if "n_used" in cols:
        out["passes"] = np.array(cols["n_used"], dtype=int)
        out["decision"] = np.array(cols["decision"])
    else:
        out["passes"] = np.array(cols["n0"], dtype=int) + np.array(cols["n"], dtype=int)
    order = np.argsort(out["idx"])
    return {k: v[order] for k, v in out.items()}


def _passes(log: dict[str, np.ndarray]) -> dict[str, float]:
    p = log["passes"].astype(float)
    return {
        "mean": float(p.mean()),
        "median": float(np.median(p)),
        "p99": float(np.percentile(p, 99)),
        "max": float(p.max()),
    }


def _paired(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    d = a.astype(float) - b.astype(float)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"diff": float(d.mean()), "se": se, "ci95": [float(d.mean() - 1.96 * se), float(d.mean() + 1.96 * se)]}


def _timed_run(config: RunConfig) -> tuple[Path, float]:
    began = time.perf_counter()
    path = run(config)
    return path, time.perf_counter() - began


def bench_model(model: str, args: argparse.Namespace) -> dict[str, Any]:
    meta = json.loads((Path(model) / "model.json").read_text())
    sigma = float(meta["sigma"])
    out = Path(args.out) / Path(model).name
    common = {
        "model": model,
        "alpha": args.alpha,
        "batch": args.batch,
        "skip": args.skip,
        "max": args.max,
        "seed": args.seed,
        "progress": False,
        "data_dir": args.data_dir,
        "pass_size": args.pass_size,
    }
    fixed_path, fixed_wall = _timed_run(
        RunConfig(command="certify", out=str(out / "fixed.tsv"), n0=args.n0, n=args.n, **common)
    )
    fixed = _log(fixed_path)
    result: dict[str, Any] = {
        "model": model,
        "sigma": sigma,
        "examples": len(fixed["idx"]),
        "fixed": {"passes": _passes(fixed), "wall_s": fixed_wall},
        "decision": [],
        "max_radius": [],
    }
    for r in args.radii:
        path, wall = _timed_run(
            RunConfig(
                command="certify",
                out=str(out / f"decision_r{r:g}.tsv"),
                n0=args.n0,
                n=args.n,
                adaptive=True,
                radius=r,
                **common,
            )
        )
        log = _log(path)
        assert np.array_equal(log["idx"], fixed["idx"]), "the same examples"
        a = log["correct"] & (log["decision"] == "certified")
        f = fixed["correct"] & (fixed["radius"] >= r)
        result["decision"].append(
            {
                "radius": r,
                "passes": _passes(log),
                "wall_s": wall,
                "pass_ratio": float(fixed["passes"].mean() / log["passes"].mean()),
                "wall_ratio": fixed_wall / wall,
                "certified_accuracy": float(a.mean()),
                "fixed_certified_accuracy": float(f.mean()),
                "paired": _paired(a, f),
                "undecided": float((log["decision"] == "undecided").mean()),
            }
        )
    for c, tol in ((c, t) for c in args.caps for t in args.tols):
        cap = c * sigma
        name = f"maxradius_cap{c:g}sigma" + ("" if tol is None else f"_tol{tol:g}sigma")
        path, wall = _timed_run(
            RunConfig(
                command="certify",
                out=str(out / f"{name}.tsv"),
                n0=args.n0,
                n=args.n,
                adaptive=True,
                radius_cap=cap,
                radius_tol=None if tol is None else tol * sigma,
                **common,
            )
        )
        log = _log(path)
        assert np.array_equal(log["idx"], fixed["idx"]), "the same examples"
        acr = float(np.where(log["correct"], np.minimum(log["radius"], cap), 0.0).mean())
        acr_fixed = float(np.where(fixed["correct"], np.minimum(fixed["radius"], cap), 0.0).mean())
        grid = [round(x * sigma, 6) for x in (0.5, 1.0, 1.5, 2.0)]
        result["max_radius"].append(
            {
                "cap": cap,
                "cap_sigma": c,
                "radius_tol_sigma": 0.01 if tol is None else tol,
                "passes": _passes(log),
                "wall_s": wall,
                "pass_ratio": float(fixed["passes"].mean() / log["passes"].mean()),
                "wall_ratio": fixed_wall / wall,
                "acr_capped": acr,
                "fixed_acr_capped": acr_fixed,
                "acr_relative_difference": (acr - acr_fixed) / acr_fixed if acr_fixed else float("nan"),
                "certified_accuracy": {
                    str(r): {
                        "adaptive": float((log["correct"] & (log["radius"] >= r)).mean()),
                        "fixed": float((fixed["correct"] & (fixed["radius"] >= r)).mean()),
                        "paired": _paired(
                            log["correct"] & (log["radius"] >= r), fixed["correct"] & (fixed["radius"] >= r)
                        ),
                    }
                    for r in grid
                    if r <= cap
                },
            }
        )
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | mode | passes mean | median | p99 | fewer passes | wall s (fixed → adaptive) | cert. acc. adaptive / fixed | paired diff ± SE |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        name = f"σ = {res['sigma']:g}"
        fp = res["fixed"]["passes"]
        lines.append(
            f"| {name} | fixed n0 + n | {fp['mean']:,.0f} | {fp['median']:,.0f} | {fp['p99']:,.0f} | 1× | {res['fixed']['wall_s']:.0f} | | |"
        )
        for d in res["decision"]:
            p = d["passes"]
            lines.append(
                f"| {name} | decision r = {d['radius']:g} | {p['mean']:,.0f} | {p['median']:,.0f} | {p['p99']:,.0f} | "
                f"{d['pass_ratio']:.0f}× | {res['fixed']['wall_s']:.0f} → {d['wall_s']:.1f} | "
                f"{d['certified_accuracy']:.3f} / {d['fixed_certified_accuracy']:.3f} | "
                f"{d['paired']['diff']:+.3f} ± {d['paired']['se']:.3f} |"
            )
        for m in res["max_radius"]:
            p = m["passes"]
            lines.append(
                f"| {name} | max-radius, cap {m['cap']:g}, tol {m['radius_tol_sigma']:g}σ | {p['mean']:,.0f} | {p['median']:,.0f} | {p['p99']:,.0f} | "
                f"{m['pass_ratio']:.1f}× | {res['fixed']['wall_s']:.0f} → {m['wall_s']:.1f} | "
                f"ACR {m['acr_capped']:.3f} / {m['fixed_acr_capped']:.3f} | {100 * m['acr_relative_difference']:+.1f}% ACR |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="comma list of model directories")
    p.add_argument("--out", default="runs/adaptive_bench", help="directory for the logs (resumed)")
    p.add_argument("--data-dir")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=100_000, help="fixed n, and n_max of the adaptive runs")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--skip", type=int, default=100)
    p.add_argument("--max", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--radii", default="0.25,0.5,1.0")
    p.add_argument("--caps", default="2", help="radius caps in units of sigma")
    p.add_argument("--tols", default="", help="radius tolerances in units of sigma (default: the library's 0.01)")
    p.add_argument("--pass-size", type=int, help="fixed forward-pass size (default: measured; speed only)")
    p.add_argument("--json", help="write the figures here (rewritten after each model)")
    args = p.parse_args()
    args.radii = [float(v) for v in args.radii.split(",") if v]
    args.caps = [float(v) for v in args.caps.split(",") if v]
    args.tols = [float(v) for v in args.tols.split(",") if v] or [None]
    perf.tune_malloc()
    threads = perf.set_threads()
    results: list[dict[str, Any]] = []
    for model in (m for m in args.models.split(",") if m):
        results.append(bench_model(model, args))
        text = markdown(results)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            machine = (
                f"{platform.processor() or platform.machine()}, {threads} torch threads, torch {torch.__version__}"
            )
            doc = {"machine": machine, "settings": dict(vars(args)), "results": results, "table": text}
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
