"""``smoothcert certify`` and ``smoothcert predict``: options derived from ``runs.certify.RunConfig``."""

from __future__ import annotations

import argparse
from typing import Any

from smoothcert.cli.options import add_options, add_sound_flag, build_config, check_sound_flag
from smoothcert.cli.tasks import add_task_flag

__all__ = ["cmd_run", "register"]

_HELP = {
    "certify": "CERTIFY every selected example of a split",
    "predict": "PREDICT every selected example of a split",
}


def register(sub: Any) -> None:
    """Add the ``certify`` and ``predict`` sub-commands."""
    from smoothcert.runs.certify import RunConfig

    for name, helptext in _HELP.items():
        p = sub.add_parser(name, help=helptext)
        add_options(p, RunConfig, command=name)
        add_sound_flag(p)
        if name == "certify":
            add_task_flag(p)
        p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from smoothcert.runs.certify import RunConfig, run
    from smoothcert.runtime.distributed import DistContext

    config = build_config(RunConfig, args, command=args.command)
    check_sound_flag(args, sound=config.sound)
    dist = DistContext.from_env(config.device)
    try:
        out = run(config, dist)
    finally:
        dist.close()
    if dist.is_main and config.progress:
        print(f"{args.command}: results in {out}")
    return 0
