"""``smoothcert visualize``: a PNG grid of examples under several noise levels."""

from __future__ import annotations

import argparse
import math
from typing import Any

from smoothcert.cli.options import floats, positive_int
from smoothcert.core.errors import ConfigError

__all__ = ["cmd_visualize", "register"]


def register(sub: Any) -> None:
    """Add the ``visualize`` sub-command."""
    v = sub.add_parser("visualize", help="a PNG grid of examples under several noise levels")
    v.add_argument("--dataset", required=True)
    v.add_argument("--data-dir")
    v.add_argument("--split", default="test", choices=["train", "test", "val"])
    v.add_argument(
        "--sigmas", type=floats, default=[0.0, 0.25, 0.5, 1.0], help="noise levels, >= 0 (default: 0,0.25,0.5,1)"
    )
    v.add_argument("--count", type=positive_int, default=6, help="number of examples (rows)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument(
        "--resolutions",
        type=floats,
        help="paper Figure 12: e.g. 28,56 draws one example at its resolution and upsampled (56/28 = 2 x) "
        "under the same per-pixel noise (the first of --sigmas above 0; --count is ignored)",
    )
    v.add_argument("--out", required=True, help="PNG (or PDF) file")
    v.set_defaults(func=cmd_visualize)


def check_sigmas(sigmas: list[float]) -> list[float]:
    """Noise levels to draw: at least one, each finite and >= 0 (0 is the clean image)."""
    if not sigmas:
        raise ConfigError("--sigmas needs at least one noise level")
    bad = [s for s in sigmas if not (math.isfinite(s) and s >= 0)]
    if bad:
        raise ConfigError(f"--sigmas must be finite and >= 0, got {','.join(f'{s:g}' for s in bad)}")
    return sigmas


def cmd_visualize(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from smoothcert.evaluation.plotting import plot_noise_grid
    from smoothcert.io.data import load_dataset

    sigmas = check_sigmas(args.sigmas)
    dataset: Any = load_dataset(args.dataset, args.split, args.data_dir)
    rng = np.random.default_rng(args.seed)
    if args.resolutions is not None:
        return _resolutions(args, dataset, sigmas, int(rng.integers(len(dataset))))
    picks = rng.choice(len(dataset), size=min(args.count, len(dataset)), replace=False)
    images = torch.stack([dataset[int(i)][0] for i in picks]).numpy()
    out = plot_noise_grid(images, sigmas, args.out, seed=args.seed)
    print(f"wrote {out}")
    return 0


def _resolutions(args: argparse.Namespace, dataset: Any, sigmas: list[float], index: int) -> int:
    from smoothcert.smoothing.lifting import render_resolution_figure

    res = args.resolutions
    image = dataset[index][0]
    if len(res) != 2 or res[0] != image.shape[-1] or res[1] % res[0] or res[1] <= res[0]:
        raise ConfigError(
            f"--resolutions must be the data's resolution and a multiple of it, e.g. "
            f"{image.shape[-1]},{2 * image.shape[-1]}; got {','.join(f'{r:g}' for r in res)}"
        )
    sigma = next((s for s in sigmas if s > 0), None)
    if sigma is None:
        raise ConfigError("--resolutions needs a noise level above 0 in --sigmas")
    out = render_resolution_figure(image, args.out, sigma=sigma, factor=int(res[1] // res[0]), seed=args.seed)
    print(f"wrote {out}")
    return 0
