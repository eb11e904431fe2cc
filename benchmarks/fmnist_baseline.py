"""Issue 21 §2 (paper App. H.1, Figure 13): a deterministic certified baseline beside smoothing on Fashion-MNIST.

Trains a 1-Lipschitz MLP (orthonormal dense layers + MaxMin, ``smoothcert.models.lipschitz``) with
Lipschitz-margin training (Tsuzuku et al. 2018) at radius ``--epsilon``, certifies the same test examples
as ``smoothcert certify --skip 20`` (every 20th, 500) with the Lipschitz-margin radius
``margin / (sqrt(2) L)`` (``smoothcert.baselines``), and writes

* ``lipschitz.tsv``: a certify-style log ``idx label predict radius correct time`` (``smoothcert analyze``
  reads it beside smoothing logs),
* ``BASELINE.md``: certified accuracy at radii 0-1.5, ACR and certification time per example, for the
  baseline and for each ``--smoothed`` certify log given, and ``BASELINE.png``: the curves (Figure 13).

Full run:  python benchmarks/fmnist_baseline.py --out runs/baseline --smoothed runs/methods/gaussian-0.5.tsv
Smoke test (< 2 minutes on an idle 2-core CPU): ``--quick``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from smoothcert.evaluation.analysis import average_certified_radius, certified_accuracy, read_certify_log
from smoothcert.runs.baseline import BaselineConfig, run_baseline

RADII = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/baseline")
    p.add_argument("--epsilon", type=float, default=0.5, help="LMT training radius")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--hidden", default="1024,1024,512")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--skip", type=int, default=20)
    p.add_argument("--max", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoothed", nargs="*", default=[], help="certify logs of smoothed classifiers to compare with")
    p.add_argument(
        "--quick", action="store_true", help="2,000 training examples, 2 epochs, widths 256,256, 100 test examples"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.train_limit, args.hidden, args.max, args.skip = 2, 2000, "256,256", 100, 100
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "lipschitz.tsv"
    config = BaselineConfig(
        out=str(log_path),
        epsilon=args.epsilon,
        epochs=args.epochs,
        hidden=args.hidden,
        lr=args.lr,
        temperature=args.temperature,
        train_limit=args.train_limit,
        skip=args.skip,
        max=args.max,
        seed=args.seed,
        overwrite=True,
    )
    run_baseline(config)  # the same code path as `smoothcert baseline`
    sidecar = json.loads((out / "lipschitz.tsv.json").read_text())
    name = "Lipschitz margin (LMT, 1-Lipschitz MLP)"
    logs = [(name, read_certify_log(log_path, name=name))]
    logs += [
        (f"{Path(s).stem} (smoothing)", read_certify_log(s, name=f"{Path(s).stem} (smoothing)")) for s in args.smoothed
    ]
    grid = np.round(np.arange(0, 2.0001, 0.01), 2)
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    lines = [
        f"L = {sidecar['lipschitz']:.4f} (bound computed in {sidecar['bound_seconds']:.2f} s), "
        f"training {sidecar['train_seconds']:.0f} s, last epoch: {sidecar['last_epoch']}",
        "",
        "| classifier | " + " | ".join(f"r={r}" for r in RADII) + " | ACR | s / example |",
        "|---|" + "---|" * len(RADII) + "---|---|",
    ]
    for name, log in logs:
        acc = certified_accuracy(log, RADII)
        lines.append(
            f"| {name} | "
            + " | ".join(f"{a:.3f}" for a in acc)
            + f" | {average_certified_radius(log):.3f} | {float(np.mean(log.time)):.2e} |"
        )
        ax.plot(grid, certified_accuracy(log, grid), label=name)
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out / "BASELINE.png", dpi=120)
    text = "\n".join(lines) + "\n"
    (out / "BASELINE.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
