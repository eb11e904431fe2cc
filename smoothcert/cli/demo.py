"""``smoothcert demo``: train, certify and tabulate on Fashion-MNIST (the README's main job)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from smoothcert.cli.options import add_device, floats
from smoothcert.core.errors import ConfigError

__all__ = ["cmd_demo", "register"]


def register(sub: Any) -> None:
    """Add the ``demo`` sub-command."""
    d = sub.add_parser("demo", help="train, certify and tabulate on Fashion-MNIST (the README's main job)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--full", action="store_true", help="the paper's settings: N = 100000, the whole test set")
    d.add_argument("--sigmas", type=floats, default=[0.25, 0.5, 1.0])
    d.add_argument("--data-dir")
    add_device(d)
    d.add_argument(
        "--float-noise",
        action="store_true",
        help="certify in float mode (0.2's default) instead of sound mode (grid 255); continues a 0.2 demo",
    )
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from smoothcert.runs.demo import run_demo

    if not args.sigmas:
        raise ConfigError("--sigmas must list at least one noise level, e.g. --sigmas 0.25,0.5,1, got none")
    bad = [s for s in args.sigmas if not (math.isfinite(s) and s > 0)]
    if bad:
        raise ConfigError(f"--sigmas must be finite and > 0, got {','.join(f'{s:g}' for s in bad)}")
    run_demo(
        out=args.out,
        full=args.full,
        sigmas=args.sigmas,
        data_dir=args.data_dir,
        device=args.device,
        progress=not args.quiet,
        sound=not args.float_noise,
    )
    return 0
