"""The least forward passes any curve procedure needs for a given fidelity to fixed N: an oracle frontier.

An *oracle* knows each example's pA exactly and picks, per example, the sample size n whose
Clopper–Pearson bound at level alpha gives the best trade between passes and expected radius
(minimise ``n + lam * E[R_fixed - R_n]``, radii capped at the cap). No real procedure can beat it:
a real one must also learn pA (which costs passes) and pay for looking more than once. Sweeping
``lam`` traces the frontier: mean passes per example (n0 = 100 selection draws included) against
the expected ACR shortfall and the largest expected certified-accuracy difference at the grid
radii 0, cap/8, ..., cap, both relative to fixed N = 100,000 on the same examples.

pA per example is read from a fixed-N certify log (``count / n`` of the selected class; an example
whose selected class is wrong counts as never certified correct). The Clopper–Pearson bound at n
draws is approximated by ``p - (z_alpha - Z) sqrt(p (1 - p) / n)``, Z ~ N(0, 1), integrated by
64-point quantile quadrature (the normal approximation is accurate at the n that matter here,
n p (1 - p) > 10; it flatters the oracle, if anything, at p near 1). Gaussian noise, L2.

    python benchmarks/curve_frontier.py --log runs/curve/fixed_0.5.tsv --sigma 0.5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import stats as st

from smoothcert.io.logs import read_table

N0 = 100
Q = (np.arange(64) + 0.5) / 64


def read_pa(path: Path) -> tuple[np.ndarray, np.ndarray]:
    header, rows = read_table(path)
    col = {name: i for i, name in enumerate(header)}
    p = np.array([int(r[col["count"]]) / int(r[col["n"]]) for r in rows])
    correct = np.array([r[col["selected"]] == r[col["label"]] for r in rows])
    return np.clip(p, 1e-9, 1 - 1e-9), correct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", required=True, help="fixed-N certify log with count, n, selected, label columns")
    ap.add_argument("--sigma", type=float, required=True)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--n-ref", type=int, default=100_000)
    args = ap.parse_args()
    sigma, cap = args.sigma, 2 * args.sigma
    grid = cap * np.arange(9) / 8
    p, correct = read_pa(Path(args.log))
    z = st.norm.isf(args.alpha)
    zq = st.norm.ppf(Q)
    cands = np.unique(np.round(np.geomspace(200, args.n_ref, 120)).astype(int))

    def lower(n: np.ndarray) -> np.ndarray:  # (examples, len(n), quadrature)
        sd = np.sqrt(p * (1 - p))[:, None, None] / np.sqrt(n)[None, :, None]
        return p[:, None, None] - (z - zq[None, None, :]) * sd

    def capped(lo: np.ndarray) -> np.ndarray:
        return np.where(lo > 0.5, np.minimum(sigma * st.norm.ppf(np.clip(lo, 0.5, 1 - 1e-15)), cap), 0.0)

    def accuracy(lo: np.ndarray) -> np.ndarray:  # expected certified accuracy at the grid radii
        t = st.norm.cdf(grid / sigma)
        return np.array([np.mean(correct * (lo > ti).mean(-1)) for ti in t])

    ref_lo = lower(np.array([args.n_ref]))[:, 0, :]
    ref_r = capped(ref_lo).mean(-1)
    ref_acr, ref_acc = float(np.mean(correct * ref_r)), accuracy(ref_lo)
    all_lo = lower(cands)
    all_r = capped(all_lo).mean(-1)  # (examples, candidates)
    print(
        f"{len(p)} examples, sigma = {sigma:g}, alpha = {args.alpha:g}; fixed N = {args.n_ref:,}: ACR {ref_acr:.4f}\n"
    )
    print("| lam | oracle passes (mean) | ACR shortfall | largest accuracy difference (points) |")
    print("|---:|---:|---:|---:|")
    for lam in (1e5, 2e5, 3e5, 5e5, 7e5, 1e6, 2e6):
        k = np.argmin(cands[None, :] + lam * (ref_r[:, None] - all_r), axis=1)
        n = cands[k]
        lo = all_lo[np.arange(len(p)), k, :]
        acr = float(np.mean(correct * capped(lo).mean(-1)))
        diff = 100 * np.abs(accuracy(lo) - ref_acc).max()
        print(f"| {lam:.0e} | {n.mean() + N0:,.0f} | {100 * (1 - acr / ref_acr):.2f}% | {diff:.2f} |")


if __name__ == "__main__":
    main()
