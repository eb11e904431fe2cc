"""``smoothcert train-denoiser``: options derived from :class:`~smoothcert.training.denoiser.DenoiserConfig`.

``DenoiserConfig``'s fields carry no command-line metadata: help texts and flag details live
in :data:`OVERRIDES`; flag names and defaults come from the fields.
"""

from __future__ import annotations

import argparse
from typing import Any

from smoothcert.cli.options import add_options, build_config

__all__ = ["OVERRIDES", "cmd_train_denoiser", "register"]

OVERRIDES: dict[str, dict[str, Any]] = {
    "classifier": {"help": "model directory of the frozen classifier"},
    "sigma": {"help": "noise level the denoiser removes"},
    "out": {"help": "run directory (resumed from its last epoch if it exists)"},
    "objective": {"help": "mse (to the clean image) or stability (classifier's CE)"},
    "epochs": {"min": 1},
    "batch": {"min": 1},
    "lr": {"help": "Adam learning rate (default: 0.001)"},
    "lr_step": {"min": 1, "help": "multiply the lr by --gamma every this many epochs"},
    "depth": {"min": 1, "help": "DnCNN convolutions (default: 17)"},
    "width": {"min": 1, "help": "DnCNN channels (default: 64)"},
    "init": {"help": "start from this denoiser (e.g. an MSE one, to fine-tune with stability)"},
    "device": {"help": "auto (CUDA if available), cpu, cuda or cuda:N (default: auto)"},
    "train_limit": {"min": 1, "help": "use only the first N training examples"},
    "progress": {"flag": "--quiet", "negate": True, "help": "no progress bar"},
}


def register(sub: Any) -> None:
    """Add the ``train-denoiser`` sub-command."""
    from smoothcert.training.denoiser import DenoiserConfig

    d = sub.add_parser(
        "train-denoiser", help="train a DnCNN denoiser in front of a frozen classifier (denoised smoothing)"
    )
    add_options(d, DenoiserConfig, overrides=OVERRIDES)
    d.set_defaults(func=cmd_train_denoiser)


def cmd_train_denoiser(args: argparse.Namespace) -> int:
    from smoothcert.training.denoiser import DenoiserConfig, train_denoiser

    config = build_config(DenoiserConfig, args, overrides=OVERRIDES)
    meta = train_denoiser(config)
    print(
        f"trained a {meta['objective']} denoiser at sigma={meta['sigma']:g}: test mse {meta['test_mse']:.5f}, "
        f"classifier accuracy on denoised noisy images {meta['test_noisy_accuracy']:.4f} -> {config.out}"
    )
    return 0
