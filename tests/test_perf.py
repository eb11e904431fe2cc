"""smoothcert.runtime.perf: allocator tuning (a page-fault count, not a timing), threads, pass-size probe."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from smoothcert.runtime import perf

FAULTS = """
import resource, sys, torch
if sys.argv[1] == "1":
    from smoothcert.runtime.perf import tune_malloc
    assert tune_malloc()
torch.set_num_threads(1)
conv = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1))
x = torch.rand(1000, 1, 28, 28)  # activations of 50 MB: above glibc's largest dynamic mmap threshold
with torch.inference_mode():
    conv(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        conv(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(tuned: bool) -> int:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, "1" if tuned else "0"], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_reuses_memory_instead_of_faulting_fresh_pages():
    # 4 passes over 50 MB activations: the default allocator maps fresh, zero-filled pages for
    # each (tens of thousands of 4 KiB faults; this positive control shows the count can see it);
    # after tune_malloc the freed blocks are reused and the passes fault almost no new pages
    untuned, tuned = _faults(False), _faults(True)
    assert untuned > 40_000, untuned
    assert tuned < untuned / 10, (tuned, untuned)


def test_tune_malloc_is_idempotent():
    first = perf.tune_malloc()
    assert perf.tune_malloc() is first


def test_set_threads():
    before = torch.get_num_threads()
    try:
        assert perf.set_threads() == perf.available_cores() == torch.get_num_threads()
        assert perf.set_threads(1) == 1 == torch.get_num_threads()
        with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
            perf.set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_cpu_supports_bf16_is_a_bool():
    assert isinstance(perf.cpu_supports_bf16(), bool)


def test_choose_pass_size_probes_within_bounds_and_caches():
    calls: list[int] = []

    def model(z: torch.Tensor) -> torch.Tensor:
        calls.append(z.shape[0])
        return z.flatten(1)[:, :2]

    size = perf.choose_pass_size(model, (3, 4, 4), device=torch.device("cpu"), max_size=300, key="probe-test")
    assert size in {32, 64, 128, 256, 300}
    assert calls and max(calls) <= 300
    n = len(calls)
    again = perf.choose_pass_size(model, (3, 4, 4), device=torch.device("cpu"), max_size=300, key="probe-test")
    assert again == size and len(calls) == n  # cached: no second probe
    tiny = perf.choose_pass_size(model, (3, 4, 4), device=torch.device("cpu"), max_size=10, key="probe-test")
    assert tiny == 10
