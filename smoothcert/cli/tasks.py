"""``smoothcert train --task T`` and ``smoothcert certify --task T`` for the dense tasks
(T = segmentation or localization, on ``fashion-mnist-scenes``).

A dense task has settings of its own (``TaskTrainConfig``, ``TaskRunConfig``), so its options are
derived from those dataclasses in parsers of their own. :func:`route` sends a command line whose
``--task`` names a dense task to them; ``--task classification`` (the default) stays with the
classification commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from smoothcert.cli.options import add_options, build_config
from smoothcert.core.checks import FLOAT_DRAWS

__all__ = ["DENSE_TASKS", "TASKS", "register", "route"]

DENSE_TASKS = ("segmentation", "localization")
TASKS = ("classification", *DENSE_TASKS)
_HIDDEN = {"train": "train-task", "certify": "certify-task"}

_TRAIN: dict[str, dict[str, Any]] = {
    "task": {"choices": DENSE_TASKS, "help": "segmentation (per-pixel classes) or localization (one box)"},
    "sigma": {"help": "training noise level (Gaussian)"},
    "out": {"help": "model directory to write"},
    "arch": {"help": "small_fcn (segmentation) or box_regressor (localization); default: the task's"},
    "epochs": {"min": 1},
    "batch": {"min": 1},
    "train_size": {"min": 1, "help": "training scenes"},
    "test_size": {"min": 1, "help": "held-out scenes for the accuracy in model.json"},
    "scenes_seed": {"help": "seed of the scene layouts (scene i depends on (seed, split, i) only)"},
    "progress": {"flag": "--quiet", "negate": True, "help": "no progress bar"},
}
_CERTIFY: dict[str, dict[str, Any]] = {
    "task": {"choices": DENSE_TASKS, "help": "segmentation (Fischer et al. 2021) or localization (Chiang et al. 2020)"},
    "model": {"help": "model directory written by 'smoothcert train --task ...'"},
    "out": {"help": "result TSV (resumed); several --tau/--radii values: one log each (STEM_tau0.75.tsv, ...)"},
    "sigma": {"help": "noise level (default: the model's training sigma)"},
    "taus": {"flag": "--tau", "help": "segmentation: comma list of thresholds tau in (1/2, 1), one log each"},
    "radii": {"help": "localization: comma list of L2 radii, one log each"},
    "percentile": {"help": "localization: the smoothed percentile (default: 0.5, the median)"},
    "scenes_seed": {"help": "seed of the scene layouts"},
    "scenes_size": {"min": 1, "help": "scenes in the split (default: the data set's images)"},
    "n0": {"min": 1},
    "n": {"min": 1},
    "batch": {"min": 1},
    "skip": {"min": 1},
    "max": {"min": 1},
    "progress": {"flag": "--quiet", "negate": True, "help": "no progress bar"},
    "float_noise": {
        "help": "draw floating-point noise instead of sound mode's noise on the scenes' 8-bit grid (the default; "
        "docs/sound.md): certificates are then about fl(x + eps), which a model reading rounding can fool"
    },
    "float_draws": {
        "choices": FLOAT_DRAWS,
        "help": "with --float-noise: float32 Gaussian draws (the default since 0.3) or float64 (0.2's stream, "
        "to resume its float-mode logs)",
    },
}


def route(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``train``/``certify`` renamed to their dense-task parser when ``--task`` names a dense task."""
    argv = list(argv)
    command = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if command is None or argv[command] not in _HIDDEN:
        return argv
    task = None
    for i, a in enumerate(argv[command + 1 :], start=command + 1):
        if a == "--task" and i + 1 < len(argv):
            task = argv[i + 1]
        elif a.startswith("--task="):
            task = a.split("=", 1)[1]
    if task in DENSE_TASKS:
        argv[command] = _HIDDEN[argv[command]]
    return argv


def add_task_flag(parser: argparse.ArgumentParser) -> None:
    """``--task`` on the classification commands (a dense task is routed to its own parser first)."""
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="classification",
        help="classification (default); segmentation or localization take their own options "
        "(see 'smoothcert certify --task segmentation --help')",
    )


def register(sub: Any) -> None:
    """Add the dense-task parsers (reached through ``--task``, not listed as commands)."""
    from smoothcert.runs.tasks import TaskRunConfig
    from smoothcert.training.tasks import TaskTrainConfig

    t = sub.add_parser("train-task", prog="smoothcert train --task {segmentation,localization}")
    add_options(t, TaskTrainConfig, overrides=_TRAIN)
    t.set_defaults(func=cmd_train_task)
    c = sub.add_parser("certify-task", prog="smoothcert certify --task {segmentation,localization}")
    add_options(c, TaskRunConfig, overrides=_CERTIFY)
    c.add_argument(
        "--dataset",
        choices=["fashion-mnist-scenes"],
        default="fashion-mnist-scenes",
        help="the dense tasks' data set (built from Fashion-MNIST)",
    )
    c.set_defaults(func=cmd_certify_task)


def cmd_train_task(args: argparse.Namespace) -> int:
    from smoothcert.training.tasks import TaskTrainConfig, train_task

    config = build_config(TaskTrainConfig, args, overrides=_TRAIN)
    meta = train_task(config)
    if config.progress:
        print(f"trained {meta['arch']} for {config.task} at sigma={config.sigma:g} -> {config.out}")
    return 0


def cmd_certify_task(args: argparse.Namespace) -> int:
    from smoothcert.runs.tasks import TaskRunConfig, run_task
    from smoothcert.runtime.distributed import DistContext

    config = build_config(TaskRunConfig, args, overrides=_CERTIFY)
    dist = DistContext.from_env(config.device)
    try:
        paths = run_task(config, dist)
    finally:
        dist.close()
    if config.progress and dist.is_main:
        print(f"certify --task {config.task}: results in {', '.join(str(p) for p in paths)}")
    return 0
