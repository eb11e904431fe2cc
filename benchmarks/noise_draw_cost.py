"""What the exact-tail noise draws cost against a forward pass (Fashion-MNIST size, 1,000 draws).

Times, per 1,000 draws of 1x28x28: smoothcert's Gaussian sampler (float64 draws rounded once, the
0.2 noise stream), torch's float32 ``randn`` (0.1's stream) and a small_cnn forward pass on the
same batch (channels-last, inference mode). Median of ``--repeats`` rounds of 50 calls each.

    python benchmarks/noise_draw_cost.py [--model runs/demo/model_sigma_0.5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from smoothcert.smoothing.noises import make_noise


def per_call_ms(f: Callable[[], object], *, calls: int = 50, repeats: int = 5) -> float:
    f()
    rounds = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            f()
        rounds.append((time.perf_counter() - t) / calls * 1e3)
    return statistics.median(rounds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a small_cnn model directory (default: an untrained small_cnn)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    g = torch.Generator().manual_seed(0)
    out = torch.empty(1000, 1, 28, 28)
    noise = make_noise("gaussian", 0.5)
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

    rows = {
        "smoothcert Gaussian sampler (float64 draws, rounded)": per_call_ms(
            lambda: noise.sample_(out, g), repeats=args.repeats
        ),
        "torch.randn float32": per_call_ms(lambda: torch.randn(out.shape, generator=g, out=out), repeats=args.repeats),
        "small_cnn forward pass": per_call_ms(forward, repeats=args.repeats),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per 1,000 inputs of 1x28x28 (median)")
    for name, ms in rows.items():
        print(f"{name}: {ms:.1f} ms")


if __name__ == "__main__":
    main()
