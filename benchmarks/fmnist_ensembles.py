"""Issue 21 §4: smoothing an ensemble (Horváth et al., ICLR 2022) against a single model on Fashion-MNIST.

Trains M small_cnn members with ``smoothcert train`` (same method and sigma, seeds 0..M-1; or reuses
``--models``), then certifies on the same test examples (every ``--skip``-th, at most ``--max``):

* ``single``: member 0 alone,
* ``ensemble-m``: the mean softmax of members 0..m-1, for each m in ``--sizes``,
* ``consensus-m-K``: the same with K-consensus (:class:`smoothcert.models.ensemble.Ensemble` with
  ``consensus=K``; a different, equally valid smoothed classifier), for each K in ``--consensus``
  below m, counting the member evaluations it skips.

**One shared pass.** Every classifier above is a function of the members' outputs on the same noisy
input, and ``smoothcert certify`` draws each example's noise from a generator seeded by
``(seed, idx)``. So the script runs each member once per noisy input and lets every classifier
("head") vote on it: the counts are those each classifier would get on its own from the same
generator, at the cost of one run of the largest ensemble. ``--check K`` proves it on the first K
examples: it certifies them again through the library's own path
(``SmoothedClassifier(Ensemble(...)).certify``, one classifier at a time) and reports how many
certificates are identical (label, selected class, count). The logs' ``time`` column is the shared
pass's time for all heads together (so it is the same in every log); the cost of each classifier is
given in member forward passes per example, counted.

Writes one certify log per classifier (``<head>.tsv``, readable by ``smoothcert analyze``) and
``ENSEMBLES.md``/``.json``: ACR, certified accuracy at radii 0-2, the ACR gain over the single model
with a paired 95% interval, and the member forward passes per example.

Full run (the issue's target: sigma = 0.5, n = 10,000, 500 examples, 3-5 members):
    python benchmarks/fmnist_ensembles.py --out runs/ensembles --members 5 --check 3
Smoke test (< 2 minutes on an idle 2-core CPU): ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from smoothcert.evaluation.analysis import CertifyLog, average_certified_radius, certified_accuracy, read_certify_log
from smoothcert.evaluation.compare import paired_difference
from smoothcert.io.checkpoints import load_model
from smoothcert.io.data import load_dataset
from smoothcert.io.logs import CERTIFY_COLUMNS, ResultWriter, read_sidecar
from smoothcert.models.ensemble import Ensemble
from smoothcert.runs.certify import example_generator, select_indices
from smoothcert.smoothing.classifier import SmoothedClassifier

RADII = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
NUM_CLASSES = 10
SHAPE = (1, 28, 28)


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


@dataclass(frozen=True)
class Head:
    """One classifier voting in the shared pass: the first ``m`` members, with ``consensus`` K or None."""

    name: str
    m: int
    consensus: int | None = None

    def module(self, members: list[nn.Module]) -> nn.Module:
        """The same classifier as a model of its own, for the library-path check."""
        return members[0] if self.m == 1 else Ensemble(members[: self.m], consensus=self.consensus)


class Heads(nn.Module):
    """Runs every member once and returns each head's output, concatenated: ``(B, H * classes)``.

    Each head's output is computed exactly as :class:`Ensemble` computes it (same combination, same
    consensus rule), and ``saved[h]`` counts the member evaluations head ``h``'s consensus skips.
    """

    def __init__(self, members: list[nn.Module], heads: list[Head]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.heads = heads
        self.combiner = Ensemble(members)
        self.saved = [0] * len(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [member(x) for member in self.members]
        results = []
        for h, head in enumerate(self.heads):
            if head.m == 1:
                results.append(outs[0].float())
                continue
            full = self.combiner.combine_outputs(outs[: head.m])
            k = head.consensus
            if k is None:
                results.append(full)
                continue
            agree = Ensemble.agree(outs[:k])
            self.saved[h] += (head.m - k) * int(agree.sum())
            results.append(torch.where(agree[:, None], self.combiner.combine_outputs(outs[:k]), full))
        return torch.cat(results, dim=1)


class HeadVotes:
    """Engine reduction: ``counts[i, h, c]``, the votes of head ``h`` for class ``c`` on input ``i``."""

    def __init__(self, heads: int, num_classes: int) -> None:
        self.heads, self.num_classes = heads, num_classes

    def start(self, k: int, capacity: int, device: torch.device) -> None:
        self.counts = torch.zeros((k, self.heads, self.num_classes), dtype=torch.int64, device=device)
        self.preds = torch.empty((capacity, self.heads), dtype=torch.int64, device=device)

    def collect(self, start: int, stop: int, outputs: torch.Tensor) -> None:
        self.preds[start:stop] = outputs.view(-1, self.heads, self.num_classes).argmax(dim=2)

    def fold(self, segments: list[tuple[int, int]]) -> None:
        offset = 0
        for i, size in segments:
            block = self.preds[offset : offset + size]
            for h in range(self.heads):
                self.counts[i, h] += torch.bincount(block[:, h], minlength=self.num_classes)
            offset += size

    def result(self) -> np.ndarray:
        return self.counts.cpu().numpy()


def make_heads(members: int, sizes: list[int], consensus: list[int]) -> list[Head]:
    heads = [Head("single", 1)]
    for m in sizes:
        heads.append(Head(f"ensemble-{m}", m))
        heads += [Head(f"consensus-{m}-K{k}", m, k) for k in consensus if 1 < k < m]
    return heads


def paired_gain(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of ``b - a`` over the same examples and its 95% normal half-width."""
    d = paired_difference(b, a, binary=False)
    return d.difference, d.ci_high - d.difference


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/ensembles")
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--models", nargs="*", help="existing model directories (instead of training members)")
    p.add_argument("--method", default="gaussian")
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--sizes", default="3,5", help="ensemble sizes to certify (each <= --members)")
    p.add_argument("--consensus", default="2,3", help="K values for K-consensus heads (each below the size)")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--skip", type=int, default=20)
    p.add_argument("--max", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--baseline",
        help="certify log of another single model on the same examples (e.g. a Gaussian-trained one, certified "
        "by this script with the same --seed/--n0/--n/--alpha): gains are also reported against it",
    )
    p.add_argument("--check", type=int, default=0, help="re-certify the first K examples through the library path")
    p.add_argument("--quick", action="store_true", help="3 members on 500 examples x 1 epoch, 4 test examples, n=200")
    args = p.parse_args(argv)
    args.train_args = ["--epochs", "4", "--lr-step", "3"]
    if args.quick:
        args.members, args.sizes, args.consensus = 3, "3", "2"
        args.n0, args.n, args.max, args.skip, args.check = 20, 200, 4, 2500, 2
        args.train_args = ["--epochs", "1", "--train-limit", "500"]
    sizes = [int(s) for s in args.sizes.split(",")]
    ks = [int(k) for k in args.consensus.split(",")]
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dirs = [Path(m) for m in args.models] if args.models else train_members(out, args)
    for d in dirs:  # reused member directories must hold what the arguments describe
        meta = json.loads((d / "model.json").read_text())
        if meta.get("method", "gaussian") != args.method or meta.get("sigma") != args.sigma:
            p.error(
                f"{d} holds a {meta.get('method', 'gaussian')} model at sigma {meta.get('sigma')}, "
                f"not --method {args.method} at --sigma {args.sigma}"
            )
    if max(sizes) > len(dirs):
        p.error(f"--sizes {args.sizes} needs {max(sizes)} members, got {len(dirs)}")
    members = [load_model(d)[0] for d in dirs[: max(sizes)]]
    heads = make_heads(len(members), sizes, ks)
    data = load_dataset("fashion-mnist", "test")
    idx = select_indices(len(data), skip=args.skip, max_examples=args.max)
    identity = {
        "members": [str(d) for d in dirs[: max(sizes)]],
        "sigma": args.sigma,
        "n0": args.n0,
        "n": args.n,
        "alpha": args.alpha,
        "seed": args.seed,
        "idx": idx,
    }

    baseline = read_certify_log(args.baseline) if args.baseline else None
    if baseline is not None and list(baseline.idx) != idx:
        p.error(f"--baseline {args.baseline} does not hold the same examples as --skip/--max select")
    if baseline is not None:
        theirs = (read_sidecar(Path(args.baseline)) or {}).get("identity", {})
        differ = [k for k in ("sigma", "n0", "n", "alpha", "seed") if theirs.get(k) != identity[k]]
        if differ:
            p.error(f"--baseline {args.baseline} was certified with other {', '.join(differ)}: not paired")
    model = Heads(members, heads)
    smoothed = SmoothedClassifier(model, NUM_CLASSES, args.sigma, input_shape=SHAPE, sound=False)
    smoothed.probe_pass_size(batch_size=args.batch)
    model.saved = [0] * len(heads)  # the probe's passes are not certification's
    writers = {
        h.name: ResultWriter(
            out / f"{h.name}.tsv",
            CERTIFY_COLUMNS,
            sidecar={"identity": {**identity, "classifier": h.name}, "sigma": args.sigma, "shared_pass": True},
            overwrite=True,
        )
        for h in heads
    }
    certs: dict[str, list[tuple[int, int, int]]] = {h.name: [] for h in heads}
    started = time.perf_counter()
    try:
        for j, i in enumerate(idx):
            x, y = data[i]
            xs = x[None]
            t = time.perf_counter()
            gen = example_generator(args.seed, i, torch.device("cpu"))
            sel = smoothed.run_engine(
                xs, HeadVotes(len(heads), NUM_CLASSES), n=args.n0, batch_size=args.batch, generator=gen
            )[0]
            est = smoothed.run_engine(
                xs, HeadVotes(len(heads), NUM_CLASSES), n=args.n, batch_size=args.batch, generator=gen
            )[0]
            dt = time.perf_counter() - t
            found = smoothed.certificates_from_counts(sel, est, n0=args.n0, n=args.n, alpha=args.alpha, dim=x.numel())
            for head, c in zip(heads, found, strict=True):  # one row of counts per head
                certs[head.name].append((c.label, c.selected, c.count))
                row = {"idx": i, "label": y, "predict": c.label, "radius": repr(c.radius), "correct": int(c.label == y)}
                row |= {"time": f"{dt:.6f}", "count": c.count, "n": args.n, "n0": args.n0, "p_lower": repr(c.p_lower)}
                writers[head.name].write([{**row, "selected": c.selected}])
            if (j + 1) % max(1, len(idx) // 10) == 0:
                print(f"{j + 1}/{len(idx)} examples, {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        for w in writers.values():
            w.close()

    check = {}
    for h in heads:
        same = 0
        lib = SmoothedClassifier(h.module(members), NUM_CLASSES, args.sigma, input_shape=SHAPE, sound=False)
        for j, i in enumerate(idx[: args.check]):
            x, _ = data[i]
            c = lib.certify(
                x,
                n0=args.n0,
                n=args.n,
                alpha=args.alpha,
                batch_size=args.batch,
                generator=example_generator(args.seed, i, torch.device("cpu")),
            )
            same += (c.label, c.selected, c.count) == certs[h.name][j]
        check[h.name] = same

    per_example = args.n0 + args.n
    rows = {}
    logs = {h.name: read_certify_log(out / f"{h.name}.tsv") for h in heads}
    base = logs["single"]
    for h, head in enumerate(heads):
        log = logs[head.name]
        passes = head.m * per_example - model.saved[h] / len(idx)
        gain, half = paired_gain(_radii(base), _radii(log))
        if baseline is not None:
            vs, vs_half = paired_gain(_radii(baseline), _radii(log))
            b_acr = float(_radii(baseline).mean())
            rows[head.name] = {"acr_gain_vs_baseline": vs, "acr_gain_vs_baseline_half_width_95": vs_half}
            rows[head.name]["acr_gain_vs_baseline_relative"] = vs / b_acr if b_acr > 0 else float("nan")
        else:
            rows[head.name] = {}
        rows[head.name] |= {
            "acr": average_certified_radius(log),
            "certified": certified_accuracy(log, RADII).tolist(),
            "member_passes_per_example": passes,
            "skipped_fraction": model.saved[h] / (head.m * per_example * len(idx)),
            "acr_gain_vs_single": gain,
            "acr_gain_half_width_95": half,
            "library_check_identical": f"{check[head.name]}/{min(args.check, len(idx))}",
        }
    base_acr = rows["single"]["acr"] or float("nan")
    lines = []
    if baseline is not None:
        lines += [
            f"baseline: {args.baseline} (ACR {float(_radii(baseline).mean()):.3f} on the same examples)",
            "",
            "| classifier | ACR | vs baseline | paired gain vs baseline (95%) |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {r['acr']:.3f} | {100 * r['acr_gain_vs_baseline_relative']:+.1f}% | "
            f"{r['acr_gain_vs_baseline']:+.3f} ± {r['acr_gain_vs_baseline_half_width_95']:.3f} |"
            for name, r in rows.items()
        ]
        lines.append("")
    lines += [
        f"members {len(members)} ({args.method}, sigma {args.sigma}), n0 {args.n0}, n {args.n}, alpha {args.alpha}, "
        f"{len(idx)} examples (every {args.skip}-th test image), one shared pass: "
        f"{time.perf_counter() - started:.0f} s in all",
        "",
        "| classifier | ACR | ACR vs single | paired gain (95%) | "
        + " | ".join(f"r={r}" for r in RADII)
        + " | member passes / example | skipped by consensus | library check |",
        "|---|---|---|---|" + "---|" * len(RADII) + "---|---|---|",
    ]
    for name, r in rows.items():
        rel = (r["acr"] / base_acr - 1) * 100 if base_acr == base_acr and base_acr > 0 else float("nan")
        lines.append(
            f"| {name} | {r['acr']:.3f} | {rel:+.1f}% | {r['acr_gain_vs_single']:+.3f} ± {r['acr_gain_half_width_95']:.3f} | "
            + " | ".join(f"{a:.3f}" for a in r["certified"])
            + f" | {r['member_passes_per_example']:,.0f} | {r['skipped_fraction']:.1%} | {r['library_check_identical']} |"
        )
    lines += [
        "",
        "library check: of the first examples, how many certificates (label, selected class, count) the library's own "
        "path (`SmoothedClassifier(Ensemble(...)).certify`, one classifier at a time) reproduces exactly.",
    ]
    text = "\n".join(lines) + "\n"
    (out / "ENSEMBLES.md").write_text(text)
    (out / "ENSEMBLES.json").write_text(json.dumps({"config": identity, "results": rows}, indent=2) + "\n")
    print(text)


def _radii(log: CertifyLog) -> np.ndarray:
    """Per-example certified radius, 0 where wrong or abstained (the terms of ACR)."""
    return np.where(np.asarray(log.correct, dtype=bool), np.asarray(log.radius, dtype=np.float64), 0.0)


if __name__ == "__main__":
    main()
