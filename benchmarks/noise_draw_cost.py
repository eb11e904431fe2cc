"""What the exact-tail noise draws cost against a forward pass (Fashion-MNIST size, 1,000 draws).

Times, per 1,000 draws of 1x28x28: smoothcert's Gaussian sampler with its default float32 draws
(Box-Muller with a float64 tail, tail cut 2^-63 per pair) and with ``draws="float64"`` (0.2's
stream, rounded once), torch's float32 ``randn`` (0.1's stream, tail cut 2^-24 per pair), sound
mode's grid noise (``GridNoise(Gaussian(0.5), 255)``, integer draws added to a grid input) and a
small_cnn forward pass on the same batch (channels-last, inference mode). Rounds interleave the
rows; median of ``--repeats`` rounds of 50 calls each.

    python benchmarks/noise_draw_cost.py [--model runs/demo/model_sigma_0.5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from smoothcert.smoothing.noises import make_noise
from smoothcert.smoothing.sound import GridNoise


def per_call_ms(rows: dict[str, Callable[[], object]], *, calls: int = 50, repeats: int = 5) -> dict[str, float]:
    """Median ms per call of each row, in ``repeats`` rounds that interleave the rows."""
    times: dict[str, list[float]] = {name: [] for name in rows}
    for f in rows.values():
        f()
    for _ in range(repeats):
        for name, f in rows.items():
            t = time.perf_counter()
            for _ in range(calls):
                f()
            times[name].append((time.perf_counter() - t) / calls * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a small_cnn model directory (default: an untrained small_cnn)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    g = torch.Generator().manual_seed(0)
    out = torch.empty(1000, 1, 28, 28)
    noise = make_noise("gaussian", 0.5)
    legacy = make_noise("gaussian", 0.5, draws="float64")
    grid = GridNoise(noise, 255)
    x = torch.randint(0, 256, (1, 28, 28), generator=torch.Generator().manual_seed(1)).float() / 255
    if args.model:
        from smoothcert.io.checkpoints import load_model

        model = load_model(args.model)[0]
    else:
        from smoothcert.models.architectures import build_model

        model = build_model("small_cnn", num_classes=10, in_channels=1, mean=[0.286], std=[0.353]).eval()
    model = model.to(memory_format=torch.channels_last)

    def forward() -> object:
        with torch.inference_mode():
            return model(out)

    rows = per_call_ms(
        {
            "smoothcert Gaussian, float32 draws (the default)": lambda: noise.sample_(out, g),
            "smoothcert Gaussian, float64 draws (0.2's stream)": lambda: legacy.sample_(out, g),
            "torch.randn float32 (0.1's stream)": lambda: torch.randn(out.shape, generator=g, out=out),
            "sound mode's grid noise (perturb_)": lambda: grid.perturb_(out, x, g),
            "small_cnn forward pass": forward,
        },
        repeats=args.repeats,
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per 1,000 inputs of 1x28x28 (median)")
    for name, ms in rows.items():
        print(f"{name}: {ms:.1f} ms")


if __name__ == "__main__":
    main()
