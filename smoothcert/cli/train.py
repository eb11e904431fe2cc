"""``smoothcert train``: options derived from :class:`~smoothcert.training.loop.TrainConfig`.

``TrainConfig``'s fields carry no command-line metadata, so the help texts and flag details
live here (:data:`OVERRIDES`); flag names and defaults still come from the fields. The method
hyperparameters (``--num-noise``, ``--lbd``, ...) fill ``TrainConfig.method_params``.
"""

from __future__ import annotations

import argparse
from typing import Any

from smoothcert.cli.options import add_options, build_config, positive_int
from smoothcert.cli.tasks import add_task_flag
from smoothcert.core.errors import ConfigError

__all__ = ["METHOD_FLAGS", "OVERRIDES", "cmd_train", "method_params", "register"]

_METHOD_GROUP = "training method (defaults: the method's paper, per sigma)"


def _overrides() -> dict[str, dict[str, Any]]:
    from smoothcert.core.radii import NOISES

    return {
        "arch": {"help": "small_cnn, cifar_resnet20, cifar_resnet110, resnet50 or a torchvision model"},
        "sigma": {"help": "training noise level"},
        "out": {"help": "run directory (resumed from its last epoch if it exists)"},
        "epochs": {"min": 1},
        "batch": {"min": 1},
        "lr_step": {"min": 1, "help": "multiply the lr by --gamma every this many epochs"},
        "device": {"help": "auto (CUDA if available), cpu, cuda or cuda:N (default: auto)"},
        "workers": {"help": "data-loading worker processes"},
        "train_limit": {"min": 1, "help": "use only the first N training examples"},
        "progress": {"flag": "--quiet", "negate": True, "help": "no progress bar"},
        "noise": {"choices": NOISES, "help": "training noise"},
        "channels_last": {"help": "(default: on)"},
        "amp": {"choices": ("bf16",), "help": "bf16 autocast for the forward pass (CUDA or a bf16 CPU)"},
        "method": {
            "group": _METHOD_GROUP,
            "help": "gaussian (augmentation, the default), consistency (Jeong & Shin 2020), "
            "smoothadv (Salman et al. 2019) or macer (Zhai et al. 2020; on networks without normalization "
            "layers, such as small_cnn, add --clip-grad 2 or --lbd 4: README)",
        },
        "method_params": {"cli": False},
        "clip_grad": {
            "metavar": "NORM",
            "help": "clip the gradient's L2 norm (all parameters together) to NORM before each step "
            "(default: no clipping); keeps MACER stable on networks without normalization",
        },
    }


OVERRIDES = _overrides()

# training-method flags: flag dest -> {method: its hyperparameter}
METHOD_FLAGS: dict[str, dict[str, str]] = {
    "num_noise": {"consistency": "m", "smoothadv": "m", "macer": "k"},
    "lbd": {"consistency": "lbd", "macer": "lbd"},
    "eta": {"consistency": "eta"},
    "epsilon": {"smoothadv": "epsilon"},
    "attack_steps": {"smoothadv": "steps"},
    "warmup": {"smoothadv": "warmup"},
    "beta": {"macer": "beta"},
    "margin": {"macer": "gamma"},
}


def register(sub: Any) -> None:
    """Add the ``train`` sub-command."""
    from smoothcert.training.loop import TrainConfig

    t = sub.add_parser("train", help="train a base classifier under noise (Gaussian augmentation or another --method)")
    groups = add_options(t, TrainConfig, overrides=OVERRIDES)
    add_task_flag(t)
    g = groups[_METHOD_GROUP]
    g.add_argument(
        "--num-noise", type=positive_int, help="noisy copies per example: m (consistency, smoothadv), k (macer)"
    )
    g.add_argument("--lbd", type=float, help="weight of the regularizer: consistency's lambda, macer's lambda")
    g.add_argument("--eta", type=float, help="consistency: weight of the entropy term")
    g.add_argument("--epsilon", type=float, help="smoothadv: L2 radius of the attack")
    g.add_argument("--attack-steps", type=positive_int, help="smoothadv: PGD steps")
    g.add_argument("--warmup", type=int, help="smoothadv: epochs over which the radius grows from 0 to --epsilon")
    g.add_argument("--beta", type=float, help="macer: inverse temperature of the soft smoothed classifier")
    g.add_argument("--margin", type=float, help="macer: hinge margin gamma on the radius surrogate")
    t.set_defaults(func=cmd_train)


def method_params(args: argparse.Namespace) -> dict[str, Any]:
    """The method hyperparameters given on the command line; a flag the method does not take is an error."""
    params: dict[str, Any] = {}
    for dest, per_method in METHOD_FLAGS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if args.method not in per_method:
            flag = "--" + dest.replace("_", "-")
            takers = ", ".join(per_method)
            raise ConfigError(f"{flag} does not apply to method {args.method!r} (it applies to: {takers})")
        params[per_method[args.method]] = value
    return params


def cmd_train(args: argparse.Namespace) -> int:
    from smoothcert.runtime.distributed import DistContext
    from smoothcert.training.loop import TrainConfig, train

    config = build_config(TrainConfig, args, overrides=OVERRIDES, method_params=method_params(args))
    dist = DistContext.from_env(config.device)
    try:
        meta = train(config, dist)
    finally:
        dist.close()
    if dist.is_main:
        print(
            f"trained {meta['arch']} on {meta['dataset']} at sigma={meta['sigma']:g}: "
            f"clean accuracy {meta['clean_accuracy']:.4f}, noisy accuracy {meta['noisy_accuracy']:.4f} -> {config.out}"
        )
    return 0
