"""``smoothcert import``: a published checkpoint (2019 reference, torchvision) to a model directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from smoothcert.core.errors import ConfigError

__all__ = ["cmd_import", "register"]


def register(sub: Any) -> None:
    """Add the ``import`` sub-command."""
    i = sub.add_parser("import", help="convert a published checkpoint (2019 reference, torchvision) to a model dir")
    i.add_argument("src", nargs="?", metavar="SRC", help="torch.save checkpoint, state_dict or .safetensors file")
    i.add_argument("--out", required=True, help="model directory to write (model.safetensors + model.json)")
    i.add_argument("--arch", help="architecture (default: the checkpoint's 'arch')")
    i.add_argument("--dataset", help="data set, for its normalization and classes (default: the checkpoint's)")
    i.add_argument("--sigma", type=float, help="training noise level, certify's default (default: the checkpoint's)")
    i.add_argument("--weights", help="torchvision pretrained weights from torch's cache, e.g. IMAGENET1K_V2")
    i.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    i.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from smoothcert.io.importing import import_checkpoint

    if args.src is not None and Path(args.src).is_dir():
        hint = (
            "it already holds a smoothcert model: pass it to certify as --model"
            if (Path(args.src) / "model.json").exists()
            else "give the checkpoint file inside it (.pth, .pth.tar, .pt or .safetensors)"
        )
        raise ConfigError(f"SRC {args.src!r} is a directory, not a checkpoint file; {hint}")
    meta = import_checkpoint(
        args.src,
        args.out,
        arch=args.arch,
        dataset=args.dataset,
        sigma=args.sigma,
        weights=args.weights,
        overwrite=args.overwrite,
    )
    src = meta["source"]
    print(
        f"imported {meta['arch']} ({src['format']}, sha256 {src['sha256'][:12]}) for {meta['dataset']} "
        f"at sigma={meta['sigma']:g} -> {args.out}"
    )
    return 0
