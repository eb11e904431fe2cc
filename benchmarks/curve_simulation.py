"""Curve mode by simulation: passes and fidelity to fixed N = 100,000 over a realistic pA distribution.

No model runs: each example's votes are Binomial(n, pA) draws, so the figures isolate the
statistics (the confidence sequence and the stopping rule of :mod:`smoothcert.core.confseq`).
For every design it reports forward passes per example (n0 = 100 selection draws included),
the largest difference in certified accuracy at the grid radii 0, cap/8, ..., cap against
fixed-N CERTIFY (Clopper–Pearson at level alpha from N draws) on the same pA values, and the
ACR (radii capped at the cap) of both. Gaussian noise, L2, sigma = 0.5, cap 2 sigma.

pA distribution: ``--pa-log LOG`` reads a certify log with ``count``, ``n``, ``predict``,
``label`` columns (an example's pA is its count / n where the prediction is right, 0.25
otherwise: never certified correct either way); without it, a mixture shaped like the demo's
sigma = 0.5 model (20% pA < 1/2, 25% radius uniform on [0, 2 sigma], 25% pA in (0.98, 1), 30% pA = 1).

    python benchmarks/curve_simulation.py --examples 20000 [--pa-log runs/demo/certify_sigma_0.5.tsv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import stats as st

from smoothcert.core import confseq as cs
from smoothcert.core import stats as S
from smoothcert.io.logs import read_table

SIGMA, CAP, N0 = 0.5, 1.0, 100
GRID = np.arange(9) * CAP / 8
THR = st.norm.cdf(GRID / SIGMA)


def radius_of(p: np.ndarray) -> np.ndarray:
    return SIGMA * st.norm.ppf(np.clip(np.asarray(p, dtype=np.float64), 0.5, 1.0))


def mixture_pa(m: int, rng: np.random.Generator) -> np.ndarray:
    u = rng.random(m)
    pa = np.ones(m)
    low, mid, high = u < 0.2, (u >= 0.2) & (u < 0.45), (u >= 0.45) & (u < 0.7)
    pa[low] = 0.5 * rng.random(low.sum())
    pa[mid] = st.norm.cdf(2.0 * rng.random(mid.sum()))
    pa[high] = 1 - 10 ** rng.uniform(-5, -1.7, high.sum())
    return pa


def log_pa(path: Path, m: int, rng: np.random.Generator) -> np.ndarray:
    header, rows = read_table(path)
    col = {name: i for i, name in enumerate(header)}
    pa = np.array(
        [int(r[col["count"]]) / int(r[col["n"]]) if r[col["predict"]] == r[col["label"]] else 0.25 for r in rows]
    )
    return rng.choice(pa, size=m)


def simulate(pa, seq, *, radius_tol, acr_tol, rng):
    m = len(pa)
    count, used = np.zeros(m), np.zeros(m)
    lower, upper = np.zeros(m), np.ones(m)
    active, drawn = np.arange(m), 0
    for look, size in enumerate(seq.sizes):
        count[active] += rng.binomial(size - drawn, pa[active])
        drawn = size
        lo, up = seq.bounds(count[active], look)
        lower[active] = np.maximum(lower[active], lo)
        upper[active] = np.minimum(upper[active], up)
        stop, _, _ = cs.curve_step(
            lower[active],
            upper[active],
            GRID,
            THR,
            radius_of=radius_of,
            radius_tol=radius_tol,
            acr_tol=acr_tol,
            last=look == len(seq.sizes) - 1,
        )
        used[active[stop]] = size
        active = active[~stop]
        if not len(active):
            break
    return lower, used + N0


def curve_of(lower: np.ndarray) -> tuple[np.ndarray, float]:
    return np.array([(lower > t).mean() for t in THR]), float(np.minimum(radius_of(lower), CAP).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=20_000)
    p.add_argument("--pa-log", default=None)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--n-max", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    pa = log_pa(Path(args.pa_log), args.examples, rng) if args.pa_log else mixture_pa(args.examples, rng)
    ref_acc, ref_acr = curve_of(
        np.asarray(S.clopper_pearson_lower(rng.binomial(args.n_max, pa), args.n_max, args.alpha))
    )
    print(f"fixed N = {args.n_max:,}: passes {args.n_max + N0:,}, ACR (capped) {ref_acr:.4f}\n")
    print(
        "| confidence sequence | beta | radius_tol | acr_tol | passes mean | median | p99 | max curve diff (pt) | ACR diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    designs = [
        ("union, looks x1.25 from 32", {"method": "union", "growth": 1.25}),
        ("union, doubling looks from 64", {"method": "union", "growth": 2.0, "n_first": 64}),
        ("beta-binomial Beta(1, 1)", {"method": "betabinomial", "growth": 1.25}),
        ("beta-binomial Beta(1/2, 1/2)", {"method": "betabinomial", "growth": 1.25, "prior": (0.5, 0.5)}),
    ]
    # each construction over the same tolerances (the passes / ACR frontier), then the defaults' beta
    settings = [(None, 0.05, 0.05), (None, 0.05, 0.07), (None, 0.05, 0.09)]
    runs = [(name, kw, s) for name, kw in designs for s in settings]
    runs += [(designs[0][0], designs[0][1], (0.01, 0.05, a)) for a in (0.06, 0.07, 0.08)]
    for name, kw, (beta, rtol, atol) in runs:
        seq = cs.make_confseq(alpha=args.alpha, beta=beta, n_max=args.n_max, **kw)
        lower, used = simulate(pa, seq, radius_tol=rtol, acr_tol=atol, rng=np.random.default_rng(args.seed + 1))
        acc, acr = curve_of(lower)
        print(
            f"| {name} | {seq.beta:g} | {rtol} | {atol} | {used.mean():,.0f} | {np.median(used):,.0f} | "
            f"{np.quantile(used, 0.99):,.0f} | {100 * np.abs(acc - ref_acc).max():.2f} | "
            f"{100 * (acr / ref_acr - 1):+.2f}% |",
            flush=True,
        )


if __name__ == "__main__":
    main()
