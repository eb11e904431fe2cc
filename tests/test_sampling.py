"""The sampling engine: counts, packing, reproducibility, memory bound, model state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as st

from smoothcert.smoothing.engine import plan_batches, sample_counts
from smoothcert.smoothing.noises import Gaussian


class Recorder(torch.nn.Module):
    """Records what the engine feeds it; predicts class 1 iff the first coordinate is > 0."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)  # a parameter, so the module has a device
        self.batches: list[int] = []
        self.dtypes: set[torch.dtype] = set()
        self.modes: set[bool] = set()
        self.inference: set[bool] = set()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.batches.append(z.shape[0])
        self.dtypes.add(z.dtype)
        self.modes.add(self.training)
        self.inference.add(torch.is_inference_mode_enabled())
        s = z.flatten(1)[:, 0]
        return torch.stack([-s, s], dim=1)


@pytest.mark.parametrize(("k", "n", "bs"), [(1, 1, 1), (5, 10, 32), (3, 100, 64), (4, 250, 100), (7, 3, 3), (2, 7, 5)])
def test_plan_covers_every_sample_within_batch_size(k, n, bs):
    batches = list(plan_batches([n] * k, bs))
    per_input = np.zeros(k, dtype=int)
    for batch in batches:
        assert 0 < sum(size for _, size in batch) <= bs
        idx = [i for i, _ in batch]
        assert idx == sorted(set(idx)), "inputs within a pass are distinct and in order"
        for i, size in batch:
            per_input[i] += size
    assert per_input.tolist() == [n] * k


def test_small_n_is_packed():
    batches = list(plan_batches([100] * 10, 1000))
    assert len(batches) == 1 and len(batches[0]) == 10


def test_counts_shape_sum_and_distribution():
    model = Recorder()
    xs = torch.zeros(3, 4)
    xs[1, 0] = 10.0  # far on the positive side: always class 1
    counts = sample_counts(
        model, xs, sigma=1.0, n=2000, num_classes=2, batch_size=512, generator=torch.Generator().manual_seed(0)
    )
    assert counts.shape == (3, 2) and counts.dtype == np.int64
    assert counts.sum(axis=1).tolist() == [2000] * 3
    assert counts[1].tolist() == [0, 2000]
    # at x = 0 each vote is Bernoulli(1/2): a two-sided binomial test at level 1e-6 must not reject
    for row in (0, 2):
        assert st.binomtest(int(counts[row, 1]), 2000, 0.5).pvalue > 1e-6


def test_noise_has_standard_deviation_sigma():
    # class 1 iff first coordinate > sigma: probability 1 - Phi(1) ~= 0.1587 exactly when the noise is N(0, sigma^2)
    sigma = 0.37

    def f(z: torch.Tensor) -> torch.Tensor:
        s = z[:, 0] - sigma
        return torch.stack([-s, s], dim=1)

    counts = sample_counts(
        f,
        torch.zeros(1, 3),
        sigma=sigma,
        n=100_000,
        num_classes=2,
        batch_size=4096,
        generator=torch.Generator().manual_seed(1),
    )
    assert st.binomtest(int(counts[0, 1]), 100_000, st.norm.sf(1.0)).pvalue > 1e-6


def test_same_seed_same_counts_and_per_input_generators_ignore_grouping():
    model = Recorder()
    xs = torch.randn(6, 5, generator=torch.Generator().manual_seed(3)) * 0.3

    def gens():
        return [torch.Generator().manual_seed(100 + i) for i in range(6)]

    together = sample_counts(model, xs, sigma=0.5, n=50, num_classes=2, batch_size=128, generator=gens())
    again = sample_counts(model, xs, sigma=0.5, n=50, num_classes=2, batch_size=128, generator=gens())
    alone = np.concatenate(
        [
            sample_counts(model, xs[i : i + 1], sigma=0.5, n=50, num_classes=2, batch_size=128, generator=[g])
            for i, g in enumerate(gens())
        ]
    )
    larger_batch = sample_counts(model, xs, sigma=0.5, n=50, num_classes=2, batch_size=1000, generator=gens())
    np.testing.assert_array_equal(together, again)
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(together, larger_batch)  # n <= batch_size: batch size does not matter
    other = sample_counts(
        model,
        xs,
        sigma=0.5,
        n=50,
        num_classes=2,
        batch_size=128,
        generator=[torch.Generator().manual_seed(900 + i) for i in range(6)],
    )
    assert not np.array_equal(together, other)


def test_memory_is_bounded_by_batch_size_not_n():
    model = Recorder()
    sample_counts(model, torch.zeros(1, 2), sigma=1.0, n=100_000, num_classes=2, batch_size=700)
    assert max(model.batches) <= 700 and sum(model.batches) == 100_000


def test_model_runs_in_eval_and_inference_mode_and_mode_is_restored():
    model = Recorder()
    model.train()
    sample_counts(model, torch.zeros(2, 3), sigma=1.0, n=10, num_classes=2, batch_size=8)
    assert model.modes == {False} and model.inference == {True}
    assert model.training is True
    model.eval()
    sample_counts(model, torch.zeros(2, 3), sigma=1.0, n=10, num_classes=2, batch_size=8)
    assert model.training is False


def test_noise_in_input_dtype():
    model = Recorder().double()
    sample_counts(model, torch.zeros(2, 3, dtype=torch.float64), sigma=1.0, n=10, num_classes=2, batch_size=8)
    assert model.dtypes == {torch.float64}


class Seen(torch.nn.Module):
    """Keeps a float64 copy of every input it classifies, in logical (not memory) order."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []
        self.formats: list[bool] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.inputs.append(z.double().contiguous())
        self.formats.append(
            z.ndim == 4 and z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous()
        )
        s = z.flatten(1)[:, 0].float()
        return torch.stack([-s, s], dim=1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_get_float32_noise(dtype):
    # the model sees cast(x + eps) with x + eps formed in float32 from the float32 Gaussian sampler,
    # not x + eps with eps drawn in half precision (a coarsely quantized Gaussian)
    x = torch.rand(1, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
    model = Seen()
    sample_counts(model, x, sigma=0.3, n=50, num_classes=2, batch_size=64, generator=torch.Generator().manual_seed(7))
    eps = Gaussian(0.3).sample_(torch.empty(50, 64), torch.Generator().manual_seed(7))
    expected = (x.float() + eps).to(dtype).double()
    assert torch.equal(model.inputs[0], expected)
    # control: the half-precision draw the old engine made differs from it
    half = torch.empty(50, 64, dtype=dtype).normal_(0.0, 0.3, generator=torch.Generator().manual_seed(7))
    assert not torch.equal((x + half).double(), expected)


def test_channels_last_and_pass_size_change_neither_noise_nor_counts():
    # 3-channel images: the noisy inputs (in logical order) and the counts are identical with and
    # without channels-last and whatever the pass size; the model does get channels-last batches
    xs = torch.rand(3, 3, 5, 4, generator=torch.Generator().manual_seed(0))

    def run(**kw):
        model = Seen()
        gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
        counts = sample_counts(model, xs, sigma=0.5, n=40, num_classes=2, batch_size=64, generator=gens, **kw)
        return counts, torch.cat(model.inputs), model

    plain_counts, plain_inputs, _ = run()
    for kw in ({"channels_last": True}, {"pass_size": 7}, {"channels_last": True, "pass_size": 16}):
        counts, inputs, model = run(**kw)
        np.testing.assert_array_equal(counts, plain_counts)
        assert torch.equal(inputs, plain_inputs)
        if kw.get("channels_last"):
            assert all(model.formats)
        if "pass_size" in kw:
            assert max(len(t) for t in model.inputs) <= kw["pass_size"]


def test_channels_last_check_catches_a_layout_dependent_draw():
    # positive control for the test above: drawing into a channels-last buffer (the old engine)
    # gives other noise at the same logical positions
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    plain = torch.empty(2, 3, 5, 4).normal_(generator=g1)
    cl = torch.empty(2, 3, 5, 4).contiguous(memory_format=torch.channels_last).normal_(generator=g2)
    assert not torch.equal(plain, cl)


def test_per_input_sample_sizes_and_zero():
    model = Recorder()
    counts = sample_counts(model, torch.zeros(3, 2), sigma=1.0, n=[5, 0, 70], num_classes=2, batch_size=32)
    assert counts.sum(axis=1).tolist() == [5, 0, 70]
    with pytest.raises(ValueError, match="one per input"):
        sample_counts(model, torch.zeros(3, 2), sigma=1.0, n=[5, 1], num_classes=2, batch_size=32)


def test_generator_on_another_device_index_is_refused():
    from smoothcert.smoothing.engine import same_device

    assert same_device(torch.device("cpu"), torch.device("cpu"))
    assert not same_device(torch.device("cuda", 0), torch.device("cuda", 1))  # the old check compared types only
    assert same_device(torch.device("cuda", 1), torch.device("cuda", 1))
    assert not same_device(torch.device("cpu"), torch.device("cuda", 0))


def test_wrong_output_width_is_reported():
    model = Recorder()
    with pytest.raises(ValueError, match=r"num_classes=10.*got shape \(20, 2\)"):
        sample_counts(model, torch.zeros(1, 3), sigma=1.0, n=20, num_classes=10, batch_size=32)


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"sigma": 0.0}, ValueError, "sigma must be > 0 and finite, got 0.0"),
        ({"n": 0}, ValueError, "n must be >= 1, got 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
        ({"n": 2.5}, TypeError, "n must be an int, got float 2.5"),
        ({"generator": [torch.Generator()]}, ValueError, "one per input (2), got 1"),
    ],
)
def test_engine_validates_arguments(kwargs, exc, fragment):
    args = {"sigma": 1.0, "n": 10, "num_classes": 2, "batch_size": 4} | kwargs
    with pytest.raises(exc) as info:
        sample_counts(Recorder(), torch.zeros(2, 3), **args)
    assert fragment in str(info.value)


def test_noise_is_float32_before_a_bf16_autocast_model():
    # under autocast the model's own layers compute in bf16; the noisy input it receives was drawn
    # and added in float32 (the smoothing distribution is the exact float32 Gaussian)
    model = Seen()
    sample_counts(
        model,
        torch.zeros(1, 2, 3, 3),
        sigma=0.5,
        n=20,
        num_classes=2,
        batch_size=32,
        autocast_dtype=torch.bfloat16,
        generator=torch.Generator().manual_seed(0),
    )
    eps = Gaussian(0.5).sample_(torch.empty(20, 2, 3, 3), torch.Generator().manual_seed(0))  # float32 draws
    assert torch.equal(model.inputs[0], eps.double())


def test_auto_pass_size_gives_the_same_counts():
    from smoothcert import SmoothedClassifier

    model = Recorder()
    xs = torch.zeros(3, 4)
    plain = SmoothedClassifier(model, 2, 0.5).sample_counts(
        xs, n=300, batch_size=256, generator=[torch.Generator().manual_seed(i) for i in range(3)]
    )
    auto = SmoothedClassifier(model, 2, 0.5, pass_size="auto").sample_counts(
        xs, n=300, batch_size=256, generator=[torch.Generator().manual_seed(i) for i in range(3)]
    )
    np.testing.assert_array_equal(plain, auto)
