"""Issue 21 §4: smoothing an ensemble (Horváth et al., ICLR 2022) against a single model on Fashion-MNIST.

Trains M small_cnn members with ``smoothcert train`` (same method and sigma, seeds 0..M-1; or reuses
``--models``), then certifies on the same test examples (every ``--skip``-th, at most ``--max``), with
the same noise draws for every classifier (per-example generators seeded from ``(seed, idx)``, as
``smoothcert certify`` does):

* the single model (member 0),
* the ensemble of all members (mean softmax),
* the ensemble with K-consensus (a different, equally valid smoothed classifier; see
  ``smoothcert.models.ensemble``), counting the member evaluations it saves.

Writes one certify log per classifier (``single.tsv``, ``ensemble.tsv``, ``consensus.tsv``; readable by
``smoothcert analyze``) and ``ENSEMBLES.md``/``.json``: ACR, certified accuracy at radii 0-2, the
relative ACR gain over the single model and the member forward passes per example.

Full run (the issue's target: sigma = 0.5, n = 10,000, 500 examples, 3-5 members):
    python benchmarks/fmnist_ensembles.py --out runs/ensembles --members 5 --method gaussian
    python benchmarks/fmnist_ensembles.py --out runs/ensembles-cons --members 3 --method consistency
Smoke test (< 2 minutes on an idle 2-core CPU): ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from smoothcert.evaluation.analysis import average_certified_radius, certified_accuracy, read_certify_log
from smoothcert.io.checkpoints import load_model
from smoothcert.io.data import load_dataset
from smoothcert.io.logs import CERTIFY_COLUMNS, ResultWriter
from smoothcert.models.ensemble import Ensemble
from smoothcert.runs.certify import example_generator, select_indices
from smoothcert.smoothing.classifier import SmoothedClassifier

RADII = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]


def train_members(out: Path, args: argparse.Namespace) -> list[Path]:
    dirs = []
    for seed in range(args.members):
        d = out / f"member-{seed}"
        if not (d / "model.json").exists():
            cmd = [
                sys.executable,
                "-m",
                "smoothcert",
                "train",
                "--dataset",
                "fashion-mnist",
                "--arch",
                "small_cnn",
                "--sigma",
                str(args.sigma),
                "--method",
                args.method,
                "--seed",
                str(seed),
                "--out",
                str(d),
                "--quiet",
                *args.train_args,
            ]
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        dirs.append(d)
    return dirs


def certify(
    name: str,
    model: torch.nn.Module,
    out: Path,
    xs: list[torch.Tensor],
    ys: list[int],
    idx: list[int],
    args: argparse.Namespace,
    identity: dict,
) -> Path:
    smoothed = SmoothedClassifier(model, 10, args.sigma, input_shape=(1, 28, 28))
    smoothed.probe_pass_size(batch_size=args.batch)  # before counting: the probe's passes are not certification's
    if hasattr(model, "reset_counters"):
        model.reset_counters()
    path = out / f"{name}.tsv"
    with ResultWriter(
        path,
        CERTIFY_COLUMNS,
        sidecar={"identity": {**identity, "classifier": name}, "sigma": args.sigma},
        overwrite=True,
    ) as w:
        for x, y, i in zip(xs, ys, idx, strict=False):
            t = time.perf_counter()
            c = smoothed.certify(
                x,
                n0=args.n0,
                n=args.n,
                alpha=args.alpha,
                batch_size=args.batch,
                generator=example_generator(args.seed, i, torch.device("cpu")),
            )
            dt = time.perf_counter() - t
            row = {"idx": i, "label": y, "predict": c.label, "radius": repr(c.radius), "correct": int(c.label == y)}
            row |= {"time": f"{dt:.6f}", "count": c.count, "n": c.n, "n0": c.n0, "p_lower": repr(c.p_lower)}
            w.write([{**row, "selected": c.selected}])
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/ensembles")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--models", nargs="*", help="existing model directories (instead of training members)")
    p.add_argument("--method", default="gaussian")
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--skip", type=int, default=20)
    p.add_argument("--max", type=int, default=500)
    p.add_argument("--consensus", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="3 members on 500 examples x 1 epoch, 4 test examples, n=200")
    args = p.parse_args(argv)
    args.train_args = ["--epochs", "4", "--lr-step", "3"]
    if args.quick:
        args.members, args.n0, args.n, args.max, args.skip = 3, 20, 200, 4, 2500
        args.train_args = ["--epochs", "1", "--train-limit", "500"]
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dirs = [Path(m) for m in args.models] if args.models else train_members(out, args)
    members = [load_model(d)[0] for d in dirs]
    data = load_dataset("fashion-mnist", "test")
    idx = select_indices(len(data), skip=args.skip, max_examples=args.max)
    xs, ys = zip(*(data[i] for i in idx), strict=False)
    identity = {
        "members": [str(d) for d in dirs],
        "sigma": args.sigma,
        "n0": args.n0,
        "n": args.n,
        "alpha": args.alpha,
        "seed": args.seed,
        "idx": idx,
    }
    ensemble = Ensemble(members)
    consensus = Ensemble(members, consensus=min(args.consensus, len(members)))
    logs = {
        "single": certify("single", members[0], out, list(xs), list(ys), idx, args, identity),
        "ensemble": certify("ensemble", ensemble, out, list(xs), list(ys), idx, args, identity),
        "consensus": certify("consensus", consensus, out, list(xs), list(ys), idx, args, identity),
    }
    per_example = args.n0 + args.n
    passes = {
        "single": per_example,
        "ensemble": len(members) * per_example,
        "consensus": consensus.member_evaluations / len(idx),
    }
    rows = {}
    for name, path in logs.items():
        log = read_certify_log(path)
        rows[name] = {
            "acr": average_certified_radius(log),
            "certified": certified_accuracy(log, RADII).tolist(),
            "member_passes_per_example": passes[name],
        }
    base = rows["single"]["acr"] or float("nan")
    lines = [
        f"members {len(members)} ({args.method}, sigma {args.sigma}), n0 {args.n0}, n {args.n}, "
        f"alpha {args.alpha}, {len(idx)} examples, K-consensus K={consensus.consensus}",
        "",
        "| classifier | ACR | ACR vs single | " + " | ".join(f"r={r}" for r in RADII) + " | member passes / example |",
        "|---|---|---|" + "---|" * len(RADII) + "---|",
    ]
    for name, r in rows.items():
        gain = (r["acr"] / base - 1) * 100 if base == base and base > 0 else float("nan")
        lines.append(
            f"| {name} | {r['acr']:.3f} | {gain:+.1f}% | "
            + " | ".join(f"{a:.3f}" for a in r["certified"])
            + f" | {r['member_passes_per_example']:,.0f} |"
        )
    saved = consensus.member_evaluations_saved / max(
        1, consensus.member_evaluations + consensus.member_evaluations_saved
    )
    lines += [
        "",
        f"K-consensus skipped {consensus.member_evaluations_saved:,} of "
        f"{consensus.member_evaluations + consensus.member_evaluations_saved:,} member evaluations ({saved:.1%}).",
    ]
    text = "\n".join(lines) + "\n"
    (out / "ENSEMBLES.md").write_text(text)
    (out / "ENSEMBLES.json").write_text(json.dumps({"config": identity, "results": rows}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
