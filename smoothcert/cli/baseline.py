"""``smoothcert baseline``: a deterministic certified defence (Lipschitz margin) beside smoothing."""

from __future__ import annotations

import argparse
from typing import Any

from smoothcert.cli.options import add_options, build_config

__all__ = ["OVERRIDES", "cmd_baseline", "register"]

OVERRIDES: dict[str, dict[str, Any]] = {
    "out": {"help": "log to write (idx label predict radius correct time, like certify's first columns)"},
    "method": {"choices": ("lipschitz",), "help": "lipschitz: 1-Lipschitz MLP, Lipschitz-margin training and radius"},
    "dataset": {"choices": ("fashion-mnist", "mnist")},
    "epsilon": {"help": "Lipschitz-margin training radius (default: 0.5)"},
    "epochs": {"min": 1},
    "hidden": {"help": "comma list of hidden widths (even; default: 1024,1024,512)"},
    "temperature": {"help": "softmax temperature of the margin loss (default: 4)"},
    "train_limit": {"min": 1, "help": "use only the first N training examples"},
    "skip": {"min": 1, "help": "certify every skip-th test example (default: 1)"},
    "max": {"min": 1, "help": "at most this many test examples"},
    "model_dir": {
        "help": "model directory to keep the trained network in (default: OUT.model); one holding a baseline "
        "trained with the same settings is reused without training, one with other settings is refused"
    },
    "overwrite": {"help": "replace an existing log, and retrain and replace an existing baseline model"},
}


def register(sub: Any) -> None:
    """Add the ``baseline`` sub-command."""
    from smoothcert.runs.baseline import BaselineConfig

    b = sub.add_parser(
        "baseline",
        help="a deterministic certified baseline (Lipschitz margin) to compare with smoothing",
        description="Train a 1-Lipschitz MLP with Lipschitz-margin training and certify it with the sound "
        "radius margin / (sqrt(2) L), L a guaranteed bound (exact per-layer spectral norms); the log reads "
        "like a certify log, so 'smoothcert analyze' plots it beside smoothing logs (paper Figure 13).",
    )
    add_options(b, BaselineConfig, overrides=OVERRIDES)
    b.set_defaults(func=cmd_baseline)


def cmd_baseline(args: argparse.Namespace) -> int:
    from smoothcert.runs.baseline import BaselineConfig, run_baseline

    config = build_config(BaselineConfig, args, overrides=OVERRIDES)
    result = run_baseline(config)
    how = "trained and saved" if result.trained else "reused (same settings)"
    print(f"baseline: results in {result.log}; model {how} in {result.model_dir}")
    return 0
