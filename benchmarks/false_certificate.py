"""A false certificate in float mode, reproduced; sound mode does not give it.

The base classifier :class:`RoundingReader` reads the low-order bits of its input, as in
Voráček & Hein (ICLR 2023, Sec. 3), with a construction of our own: it answers 1 when every
coordinate with ``0 < |z| < 2^-9`` is a multiple of ``2^-32``, else 0. In float mode the model
sees ``fl(x + eps)``:

* at ``x = 0`` it sees the float32 Gaussian draws themselves, whose small values carry bits
  below ``2^-32``: about 96% of noise vectors (784 coordinates, sigma = 0.25) have such a
  coordinate, so float-mode CERTIFY certifies class 0 with a radius near 0.43;
* at ``x' = 1/255`` everywhere (on the 8-bit grid, L2 distance ``28/255 = 0.110`` from ``x``)
  a coordinate can only be that small when ``eps`` is close to ``-1/255``, whose float32 bits stop
  at ``2^-32``, and ``fl(x' + eps)`` is then exact: every draw is classified 1.

So the certificate "class 0 within L2 radius 0.43 of x" is false at ``x'``. In sound mode the
model sees ``(i + j) / 255``: the smoothed classifier is the smoothing of ``f o round_q`` and its
certificate at ``x`` agrees with its class at ``x'``.

Since 0.3 sound mode is the command line's default: the ``sound`` row is built from
:class:`~smoothcert.runs.config.RunConfig`'s defaults (what ``smoothcert certify`` runs without
``--float-noise``), the ``float`` row is ``--float-noise`` (``sound=False``), and the
``library default`` row is whatever :class:`SmoothedClassifier` does when ``sound`` is not
given. Under the CLI default an input off the grid is refused, not certified (last line).

    python benchmarks/false_certificate.py            # about 10 s on a CPU
    python benchmarks/false_certificate.py --json out.json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from smoothcert.runs.config import RunConfig
from smoothcert.smoothing.classifier import SmoothedClassifier

__all__ = ["RoundingReader", "demonstrate", "main"]


class RoundingReader(torch.nn.Module):
    """Class 1 iff every coordinate with ``0 < |z| < band`` is a multiple of ``unit``; else class 0."""

    def __init__(self, band: float = 2.0**-9, unit: float = 2.0**-32) -> None:
        super().__init__()
        self.band, self.inv_unit = band, 1.0 / unit

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.flatten(1).double()
        small = (flat.abs() < self.band) & (flat != 0)
        k = flat * self.inv_unit  # exact: scaling by a power of two
        fine = small & (k != torch.round(k))
        one = (~fine.any(dim=1)).double()
        return torch.stack([1 - one, one], dim=1)


def demonstrate(*, n: int = 10_000, sigma: float = 0.25, alpha: float = 0.001, seed: int = 0) -> dict[str, Any]:
    """CERTIFY at ``x = 0`` and class counts at ``x' = 1/255`` (1 x 28 x 28), in float and sound mode."""
    x = torch.zeros(1, 28, 28)
    x_adv = torch.full((1, 28, 28), 1 / 255)
    dist = float((x_adv.double() - x.double()).norm())
    out: dict[str, Any] = {"n": n, "sigma": sigma, "alpha": alpha, "seed": seed, "l2_distance": dist}
    cli = RunConfig(command="certify", model="-", out="-")  # the command line's defaults (no --float-noise)
    modes: tuple[tuple[str, dict[str, Any]], ...] = (
        ("float", {"sound": False}),
        ("sound", {"sound": cli.sound, "grid": cli.grid}),
        ("library_default", {}),
    )
    for mode, kw in modes:
        sc = SmoothedClassifier(RoundingReader(), 2, sigma, **kw)
        cert = sc.certify(x, n0=100, n=n, alpha=alpha, batch_size=2000, generator=torch.Generator().manual_seed(seed))
        counts = sc.sample_counts(x_adv[None], n=n, batch_size=2000, generator=torch.Generator().manual_seed(seed + 1))[
            0
        ]
        false = cert.label >= 0 and cert.radius > dist and int(counts[cert.label]) * 2 < n
        out[mode] = {
            "label": cert.label,
            "radius": cert.radius,
            "p_lower": cert.p_lower,
            "tv_bound": cert.tv_bound,
            "counts_at_x_adv": [int(c) for c in counts],
            "false_certificate": bool(false),
            "sound": bool(sc.sound),
        }
    off_grid = x + 1e-3
    try:
        SmoothedClassifier(RoundingReader(), 2, sigma, sound=cli.sound, grid=cli.grid).check_on_grid(off_grid)
        out["cli_default_off_grid"] = "certified (not refused)"
    except ValueError as e:
        out["cli_default_off_grid"] = "refused: " + " ".join(str(e).split())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    res = demonstrate(n=args.n, seed=args.seed)
    print(f"x = 0, x' = 1/255 everywhere (1x28x28): ||x' - x||_2 = {res['l2_distance']:.4f}, sigma = {res['sigma']}")
    names = {
        "float": "float (--float-noise, sound=False)",
        "sound": "sound (the CLI default since 0.3; grid 255)",
        "library_default": "library default (SmoothedClassifier without sound=)",
    }
    print("| mode | ran | certified at x | radius | class counts at x' (0, 1) | false certificate |")
    print("|---|---|---:|---:|---:|---|")
    for mode, name in names.items():
        r = res[mode]
        c = r["counts_at_x_adv"]
        ran = "sound" if r["sound"] else "float"
        false = "yes" if r["false_certificate"] else "no"
        print(f"| {name} | {ran} | {r['label']} | {r['radius']:.3f} | {c[0]:,} / {c[1]:,} | {false} |")
    print(f"\nCLI default, x + 0.001 (off the grid): {res['cli_default_off_grid']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
