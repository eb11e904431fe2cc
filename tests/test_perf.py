"""smoothcert.runtime.perf: allocator tuning (a page-fault count, not a timing), threads, bf16 flags, the pass-size probe."""

from __future__ import annotations

import gc
import math
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


# ----------------------------------------------------------------------------- tune_malloc


def _fake_mallopt(refuse: set[int], cap: dict[int, int] | None = None):
    """A mallopt that refuses every value of the parameters in ``refuse`` and values above ``cap``."""
    calls: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        if param in refuse or value > (cap or {}).get(param, value):
            return 0
        return 1

    return mallopt, calls


def test_tune_malloc_sets_each_parameter_on_its_own():
    # M_MMAP_THRESHOLD (-3) refused at every value: the other two are still set, and the record says so
    mallopt, calls = _fake_mallopt(refuse={-3})
    rec = perf.tune_malloc(mallopt=mallopt)
    assert rec.values == {"M_TRIM_THRESHOLD": (1 << 31) - 1, "M_TOP_PAD": 1 << 26}
    assert rec.refused == ("M_MMAP_THRESHOLD",) and rec and not rec.complete
    assert {p for p, _ in calls} == {-1, -2, -3}
    assert "M_MMAP_THRESHOLD refused" in rec.describe()
    # positive control: the old all(...) stopped at the first refusal and set nothing after it
    mallopt, calls = _fake_mallopt(refuse={-3})
    old = all(mallopt(p, v) for p, v in ((-3, 1 << 30), (-1, (1 << 31) - 1), (-2, 1 << 26)))
    assert not old and [p for p, _ in calls] == [-3]


def test_tune_malloc_falls_back_to_a_smaller_value():
    # a glibc capping the mmap threshold at 32 MiB: 1 GiB ... 64 MiB refused, 32 MiB taken
    mallopt, calls = _fake_mallopt(refuse=set(), cap={-3: 32 << 20})
    rec = perf.tune_malloc(mallopt=mallopt)
    assert rec.values["M_MMAP_THRESHOLD"] == 32 << 20 and rec.complete
    assert [v for p, v in calls if p == -3] == [1 << 30, 1 << 29, 1 << 28, 1 << 27, 1 << 26, 1 << 25]
    assert rec.as_dict()["applied"]["M_MMAP_THRESHOLD"] == 32 << 20
    nothing = perf.tune_malloc(mallopt=_fake_mallopt(refuse={-1, -2, -3})[0])
    assert not nothing and nothing.refused == ("M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD", "M_TOP_PAD")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_malloc_on_this_glibc_records_what_took_effect():
    rec = perf.tune_malloc()
    assert set(rec.values) | set(rec.refused) == {"M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD", "M_TOP_PAD"}
    assert perf.tune_malloc() == rec  # once per process


# ----------------------------------------------------------------------------- threads


def test_set_threads():
    before = torch.get_num_threads()
    try:
        assert perf.set_threads(environ={}) == perf.available_cores() == torch.get_num_threads()
        assert perf.set_threads(1) == 1 == torch.get_num_threads()
        with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
            perf.set_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("env", "cores", "expected"),
    [
        ({}, 16, 16),  # one process: every core
        ({"LOCAL_WORLD_SIZE": "4"}, 16, 4),  # torchrun, 4 ranks on this machine: a quarter each
        ({"LOCAL_WORLD_SIZE": "3"}, 2, 1),  # more ranks than cores: at least one thread
        ({"LOCAL_WORLD_SIZE": "4", "OMP_NUM_THREADS": "3"}, 16, 3),  # the user's setting wins
        ({"OMP_NUM_THREADS": "2,1"}, 16, 2),  # an OpenMP list: its first level
        ({"OMP_NUM_THREADS": "lots", "LOCAL_WORLD_SIZE": "2"}, 16, 8),  # not a number: ignored
        ({"OMP_NUM_THREADS": "0"}, 16, 16),
    ],
)
def test_default_threads_divides_cores_among_local_ranks(env, cores, expected):
    assert perf.default_threads(env, cores=cores) == expected


def test_set_threads_reads_the_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(perf.available_cores() * 2))
        assert perf.set_threads() == 1 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert perf.set_threads() == 2 == torch.get_num_threads()
        # positive control: without the environment every rank would take all cores
        assert perf.set_threads(environ={}) == perf.available_cores()
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- bf16

INTEL_SPR = (
    "processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_tile amx_bf16\n\n"
)
INTEL_SKX = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl avx512dq avx512_vnni\n"
ARM_V9 = "processor\t: 0\nFeatures\t: fp asimd sve sve2 i8mm bf16\nCPU implementer\t: 0x41\n"
ARM_V8 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n"


@pytest.mark.parametrize(("text", "native"), [(INTEL_SPR, True), (ARM_V9, True), (INTEL_SKX, False), (ARM_V8, False)])
def test_cpu_supports_bf16_reads_the_flags(text, native):
    # AVX-512 without its BF16 extension (INTEL_SKX) is the case torch's own check calls
    # supported (emulated): the flags tell it apart
    assert perf.cpu_supports_bf16(text) is native


def test_cpu_flags_parses_only_flag_lines():
    flags = perf.cpu_flags("model name\t: bf16 inside a name\nflags\t: a b\nflags\t: c\n")
    assert flags == {"a", "b", "c"}  # the model name's words are not flags
    assert not perf.cpu_supports_bf16("model name\t: bf16\nflags\t: avx2\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/cpuinfo")
def test_cpu_supports_bf16_on_this_machine_agrees_with_its_flags():
    with open("/proc/cpuinfo") as fh:
        from_flags = perf.cpu_supports_bf16(fh.read())
    assert perf.cpu_supports_bf16() == (from_flags and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


# ----------------------------------------------------------------------------- the pass-size probe

SHAPE = (3, 4, 4)
CPU = torch.device("cpu")


class FakeClock:
    """Time advances only by the model's passes: ``dt`` seconds per forward pass, whatever its size."""

    def __init__(self, dt: float) -> None:
        self.now, self.dt = 0.0, dt

    def __call__(self) -> float:
        return self.now


class Counting(torch.nn.Module):
    def __init__(self, clock: FakeClock | None = None, slow_above: int = 10**9) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.clock, self.slow_above = clock, slow_above

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.sizes.append(z.shape[0])
        if self.clock is not None:  # sizes above slow_above cost twice per sample: smaller wins
            per = 2.0 if z.shape[0] > self.slow_above else 1.0
            self.clock.now += self.clock.dt * per * z.shape[0] / 32
        return z.flatten(1)[:, :2]


@pytest.mark.parametrize("budget", [0.5, 2.0, 8.0])
def test_probe_stops_once_its_budget_is_spent(budget):
    # one pass of 32 samples costs 0.05 s on the fake clock, 256 samples 0.4 s. Bound: no pass
    # starts after the budget is spent, so the passes' total fake time is below the budget plus one
    # pass of the largest size (0.4 s), and the probe's own record agrees with the clock
    clock = FakeClock(0.05)
    model = Counting(clock)
    rec = perf.probe_pass_size(model, SHAPE, device=CPU, max_size=256, budget_s=budget, clock=clock)
    cost = sum(0.05 * s / 32 for s in model.sizes)
    assert cost <= budget + 0.4 + 1e-9, (cost, budget, model.sizes)
    assert rec.passes == len(model.sizes) and rec.seconds == pytest.approx(cost)
    assert rec.budget_spent and rec.size in dict(rec.rates)
    # positive control: with the budget check disabled (infinite budget) the same probe runs past it
    unbounded = Counting(clock)
    free = perf.probe_pass_size(unbounded, SHAPE, device=CPU, max_size=256, budget_s=math.inf, clock=clock)
    assert sum(0.05 * s / 32 for s in unbounded.sizes) > budget + 0.4
    assert not free.budget_spent and len(free.rates) == 4  # 32, 64, 128, 256 all measured


class Step(torch.nn.Module):
    """Each forward pass advances the fake time ``t`` by 0.1 s, whatever its size."""

    def __init__(self) -> None:
        super().__init__()
        self.count, self.t = 0, 0.0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.count += 1
        self.t += 0.1
        return z.flatten(1)[:, :2]


def test_probe_counts_passes_within_budget():
    # 0.1 s per pass and a 5 s budget: at most 51 passes (50 start before the budget is spent, the
    # one in progress may end past it); at least the three first passes, a warm-up and a timed pass of 32
    m = Step()
    rec = perf.probe_pass_size(m, SHAPE, device=CPU, max_size=2048, budget_s=5.0, clock=lambda: m.t)
    assert 5 <= m.count <= 51 and rec.passes == m.count, m.count
    assert rec.budget_spent and rec.seconds == pytest.approx(0.1 * m.count)
    # positive control: with the budget check disabled the same probe runs hundreds of passes
    control = Step()
    perf.probe_pass_size(control, SHAPE, device=CPU, max_size=2048, budget_s=math.inf, clock=lambda: control.t)
    assert control.count > 100, control.count


def test_probe_of_a_model_too_slow_for_its_budget_runs_three_small_passes():
    # third pass: 4 samples in 0.1 s; a warm-up and a pass of 32 would take 1.6 s > 0.7 s left: none is
    # run, and the smallest candidate is chosen unmeasured
    m = Step()
    rec = perf.probe_pass_size(m, SHAPE, device=CPU, max_size=2048, budget_s=1.0, clock=lambda: m.t)
    assert m.count == 3 == rec.passes and rec.size == 32 and rec.rates == () and rec.budget_spent


def test_probe_skips_a_candidate_whose_predicted_cost_does_not_fit():
    # 0.25 s budget, 0.05 s per 32 samples: three passes of 4 samples, then 32 (warm-up + 1 timed pass:
    # its share of the budget is 0.25 / 8) leaves 0.13125 s; 64 would need 0.2 s (warm-up + 1 pass)
    clock = FakeClock(0.05)
    model = Counting(clock)
    rec = perf.probe_pass_size(model, SHAPE, device=CPU, max_size=1024, budget_s=0.25, min_samples=1, clock=clock)
    assert set(model.sizes) == {4, 32} and rec.size == 32 and rec.budget_spent


def test_probe_chooses_the_fastest_size_and_caches_per_model():
    clock = FakeClock(0.001)
    model = Counting(clock, slow_above=128)  # per sample: equal up to 128, twice as slow above
    first = perf.probe_pass_size(model, SHAPE, device=CPU, max_size=300, budget_s=math.inf, clock=clock)
    assert first.size in {32, 64, 128} and not first.cached and max(model.sizes) <= 300
    n = len(model.sizes)
    again = perf.probe_pass_size(model, SHAPE, device=CPU, max_size=300, budget_s=math.inf, clock=clock)
    assert again.cached and again.size == first.size and len(model.sizes) == n  # no second probe
    assert perf.choose_pass_size(model, SHAPE, device=CPU, max_size=300, budget_s=math.inf, clock=clock) == first.size
    # a second model is probed on its own, never served the first one's entry
    other = Counting(clock)
    rec = perf.probe_pass_size(other, SHAPE, device=CPU, max_size=300, budget_s=math.inf, clock=clock)
    assert not rec.cached and other.sizes
    # one size possible: nothing to measure
    tiny = perf.probe_pass_size(model, SHAPE, device=CPU, max_size=10)
    assert tiny.size == 10 and tiny.passes == 0 and tiny.seconds == 0.0


def test_probe_cache_dies_with_its_model():
    # a new model (possibly at the same address as a collected one) is probed afresh
    clock = FakeClock(0.001)
    for _ in range(3):
        model = Counting(clock)
        rec = perf.probe_pass_size(model, SHAPE, device=CPU, max_size=128, budget_s=math.inf, clock=clock)
        assert not rec.cached and model.sizes
        del model
        gc.collect()
    # a module re-laid out (its parameters' strides change) is probed again, as is a bound method's owner
    conv = torch.nn.Conv2d(3, 4, 1)
    calls = 0

    def counted(z: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return conv(z)

    assert not perf.probe_pass_size(conv, SHAPE, device=CPU, max_size=64, budget_s=0.2).cached
    assert perf.probe_pass_size(conv, SHAPE, device=CPU, max_size=64, budget_s=0.2).cached
    conv.to(memory_format=torch.channels_last)
    assert not perf.probe_pass_size(conv, SHAPE, device=CPU, max_size=64, budget_s=0.2).cached
    assert not perf.probe_pass_size(conv.forward, SHAPE, device=CPU, max_size=64, budget_s=0.2).cached
    assert perf.probe_pass_size(conv.forward, SHAPE, device=CPU, max_size=64, budget_s=0.2).cached
    assert not perf.probe_pass_size(counted, SHAPE, device=CPU, max_size=64, budget_s=0.2).cached and calls


def test_probe_rejects_bad_arguments():
    with pytest.raises(ValueError, match="budget_s must be > 0, got 0"):
        perf.probe_pass_size(Counting(), SHAPE, device=CPU, max_size=64, budget_s=0)
    with pytest.raises(ValueError, match="max_size must be >= 1, got 0"):
        perf.probe_pass_size(Counting(), SHAPE, device=CPU, max_size=0)


def test_the_library_tunes_the_allocator_on_first_use_unless_told_not_to(monkeypatch):
    # the one global side effect the library keeps (documented): taken on the first sampling call,
    # off with SMOOTHCERT_TUNE_MALLOC=0 (control: the same call with the variable unset tunes)
    import torch

    import smoothcert.smoothing.smoothed as smoothed_module
    from smoothcert import SmoothedClassifier

    calls = []
    monkeypatch.setattr(smoothed_module, "tune_malloc", lambda: calls.append(1))
    sc = SmoothedClassifier(torch.nn.Flatten(), 4, 0.5, pass_size=None, sound=False)
    monkeypatch.setenv("SMOOTHCERT_TUNE_MALLOC", "0")
    sc.predict(torch.rand(4), n=20, alpha=0.1, batch_size=20)
    assert calls == []
    monkeypatch.delenv("SMOOTHCERT_TUNE_MALLOC")
    sc.predict(torch.rand(4), n=20, alpha=0.1, batch_size=20)
    assert calls == [1]
