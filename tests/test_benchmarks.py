"""benchmarks/certify_throughput.py: its FLOP count, peak and pass-schedule helpers (no timings asserted)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "certify_throughput.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("certify_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_per_sample_matches_closed_form(bench):
    # conv 1->4, 3x3, padding 1 on 8x8: 2 * (8*8*4) outputs * 9 MACs; linear 256->10: 2 * 2560
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(256, 10)
    )
    expected = 2 * (8 * 8 * 4 * 9) + 2 * (256 * 10)
    assert bench.flops_per_sample(model, (1, 8, 8), torch.device("cpu")) == expected
    # positive control: a model with twice the output channels counts twice the conv FLOPs
    wider = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1))
    assert bench.flops_per_sample(wider, (1, 8, 8), torch.device("cpu")) == 2 * (8 * 8 * 8 * 9)


def test_matmul_peak_is_a_finite_rate(bench):
    rate = bench.matmul_peak(torch.float32, torch.device("cpu"), size=64, repeats=2)
    assert math.isfinite(rate) and rate > 0


@pytest.mark.parametrize(
    ("n0", "n", "batch", "pass_size"), [(100, 10_000, 1000, 256), (100, 2_050, 1000, 1000), (7, 5, 3, 2)]
)
def test_certify_passes_cover_every_sample_in_blocks(bench, n0, n, batch, pass_size):
    sizes = bench.certify_passes(n0, n, batch, pass_size)
    assert sum(sizes) == n0 + n
    assert max(sizes) <= min(batch, pass_size)


def test_certify_passes_follow_the_noise_blocks(bench):
    # blocks of 1000 cut into passes of 256: 256, 256, 256, 232 per full block, never across blocks
    assert bench.certify_passes(100, 2000, 1000, 256) == [100] + [256, 256, 256, 232] * 2


def test_child_arguments_drop_the_json_file(bench):
    assert bench._without_json(["--models", "small_cnn", "--json", "out.json", "--quick"]) == [
        "--models",
        "small_cnn",
        "--quick",
    ]
    assert bench._without_json(["--json=x.json", "--repeats", "3"]) == ["--repeats", "3"]
