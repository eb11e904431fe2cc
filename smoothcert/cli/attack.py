"""``smoothcert attack``: options derived from :class:`~smoothcert.runs.attack.AttackConfig`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from smoothcert.cli.options import add_options, build_config

__all__ = ["cmd_attack", "register"]


def register(sub: Any) -> None:
    """Add the ``attack`` sub-command."""
    from smoothcert.runs.attack import AttackConfig

    k = sub.add_parser(
        "attack",
        help="PGD on the smoothed classifier a certify log certified (tightness) or DeepFool on the base model",
    )
    add_options(k, AttackConfig)
    k.add_argument("--deepfool", action="store_true", help="instead: DeepFool's minimal L2 norm against the base model")
    k.set_defaults(func=cmd_attack)


def cmd_attack(args: argparse.Namespace) -> int:
    from smoothcert.runs.attack import AttackConfig, run_deepfool, run_tightness

    config = build_config(AttackConfig, args)
    summary = run_deepfool(config) if args.deepfool else run_tightness(config)
    print(json.dumps(summary, indent=2))
    return 0
