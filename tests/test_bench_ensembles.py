"""benchmarks/fmnist_ensembles.py: its shared pass gives each classifier the votes the library's own path gives."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from smoothcert.models.ensemble import Ensemble
from smoothcert.smoothing.classifier import SmoothedClassifier

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fmnist_ensembles.py"
CLASSES, SHAPE = 5, (1, 4, 4)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fmnist_ensembles", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _members(k: int) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, CLASSES)) for _ in range(k)]


def _counts(model: torch.nn.Module, x: torch.Tensor, reduction, *, seed: int, n: int) -> np.ndarray:
    smoothed = SmoothedClassifier(model, CLASSES, 1.0, input_shape=SHAPE, pass_size=64, sound=False)
    gen = torch.Generator().manual_seed(seed)
    return smoothed.run_engine(x[None], reduction, n=n, batch_size=100, generator=gen)[0]


def test_shared_pass_votes_equal_each_classifier_run_alone(bench):
    members = _members(4)
    heads = bench.make_heads(4, [3, 4], [2])
    assert [h.name for h in heads] == ["single", "ensemble-3", "consensus-3-K2", "ensemble-4", "consensus-4-K2"]
    model = bench.Heads(members, heads)
    x = torch.rand(SHAPE)
    shared = _counts(model, x, bench.HeadVotes(len(heads), CLASSES), seed=7, n=2000)
    assert shared.shape == (len(heads), CLASSES) and (shared.sum(axis=1) == 2000).all()
    for h, head in enumerate(heads):
        alone = head.module(members)
        smoothed = SmoothedClassifier(alone, CLASSES, 1.0, input_shape=SHAPE, pass_size=64, sound=False)
        counts = smoothed.sample_counts(x[None], n=2000, batch_size=100, generator=torch.Generator().manual_seed(7))
        np.testing.assert_array_equal(shared[h], counts[0], err_msg=head.name)
        if isinstance(alone, Ensemble) and alone.consensus is not None:
            assert model.saved[h] == alone.member_evaluations_saved > 0  # the same skips, counted the same way
    # control: the comparison can fail. Consensus is a different classifier from the full ensemble,
    # and their votes differ on these noisy inputs
    assert not np.array_equal(shared[1], shared[2])
