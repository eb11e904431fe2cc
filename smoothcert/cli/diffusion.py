"""``smoothcert train-diffusion``: options derived from :class:`~smoothcert.training.diffusion.DiffusionConfig`.

``DiffusionConfig``'s fields carry no command-line metadata: help texts and flag details live in
:data:`OVERRIDES`; flag names and defaults come from the fields. Needs the optional ``diffusers``
(``pip install 'smoothcert[diffusion]'``); without it the command fails in one line naming the extra.
"""

from __future__ import annotations

import argparse
from typing import Any

from smoothcert.cli.options import add_options, build_config

__all__ = ["OVERRIDES", "cmd_train_diffusion", "register"]

OVERRIDES: dict[str, dict[str, Any]] = {
    "dataset": {"help": "data set to learn (e.g. fashion-mnist)"},
    "out": {"help": "run directory (resumed from its last epoch if it exists); ends in diffusers' DDPMPipeline layout"},
    "epochs": {"min": 1},
    "batch": {"min": 1},
    "lr": {"help": "Adam learning rate (default: 0.0002)"},
    "lr_step": {"min": 1, "help": "multiply the lr by --gamma every this many epochs"},
    "channels": {"help": "UNet channels per resolution level, a comma list (default: 32,64,64)"},
    "layers_per_block": {"min": 1, "help": "residual layers per UNet block (default: 1)"},
    "attention": {"help": "self-attention at the lowest resolution (default: on)"},
    "norm_groups": {"min": 1, "help": "GroupNorm groups; must divide every --channels value (default: 8)"},
    "timesteps": {"min": 2, "help": "diffusion steps T of the schedule (default: 1000)"},
    "beta_schedule": {"choices": ("linear", "scaled_linear", "squaredcos_cap_v2"), "help": "noise schedule"},
    "prediction_type": {"choices": ("epsilon", "sample", "v_prediction"), "help": "what the UNet predicts"},
    "eval_sigma": {"help": "sigma of the held-out one-shot denoising MSE logged each epoch (default: 0.5)"},
    "eval_limit": {"min": 1, "help": "held-out test images evaluated each epoch (default: 500)"},
    "device": {"help": "auto (CUDA if available), cpu, cuda or cuda:N (default: auto)"},
    "train_limit": {"min": 1, "help": "use only the first N training examples"},
    "progress": {"flag": "--quiet", "negate": True, "help": "no progress bar"},
}


def register(sub: Any) -> None:
    """Add the ``train-diffusion`` sub-command."""
    from smoothcert.training.diffusion import DiffusionConfig

    d = sub.add_parser(
        "train-diffusion", help="train a small DDPM for diffusion denoised smoothing (Carlini et al. 2023)"
    )
    add_options(d, DiffusionConfig, overrides=OVERRIDES)
    d.set_defaults(func=cmd_train_diffusion)


def cmd_train_diffusion(args: argparse.Namespace) -> int:
    from smoothcert.training.diffusion import DiffusionConfig, train_diffusion

    config = build_config(DiffusionConfig, args, overrides=OVERRIDES)
    meta = train_diffusion(config)
    print(
        f"trained a DDPM on {meta['dataset']} for {meta['epochs']} epochs: held-out loss {meta['test_loss']:.4f}, "
        f"one-shot denoising mse at sigma={meta['eval_sigma']:g} {meta['denoise_mse']:.5f} -> {config.out}"
    )
    return 0
