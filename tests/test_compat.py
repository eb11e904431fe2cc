"""smoothcert.compat.Smooth keeps the 2019 reference call signatures and return types."""

from __future__ import annotations

import torch

from smoothcert import SmoothedClassifier
from smoothcert.compat import Smooth


def test_reference_signatures_and_types(linear_model):
    smoothed = Smooth(linear_model, 2, 0.5)
    x = torch.tensor([1.0, 0.0])
    torch.manual_seed(0)
    label = smoothed.predict(x, 100, 0.001, 64)
    assert isinstance(label, int) and label == 1
    out = smoothed.certify(x, 100, 1000, 0.001, 64)
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0] == 1 and isinstance(out[1], float) and out[1] > 0
    assert Smooth.ABSTAIN == -1


def test_abstains_like_the_reference(linear_model):
    smoothed = Smooth(linear_model, 2, 0.5)
    x = torch.tensor([-0.1, 0.0])  # on the boundary
    torch.manual_seed(0)
    assert smoothed.certify(x, 100, 200, 0.001, 64) == (-1, 0.0)
    assert smoothed.predict(x, 50, 0.001, 64) == -1


def test_same_global_seed_same_answer_as_smoothed_classifier(linear_model):
    x = torch.tensor([0.2, 0.1])
    torch.manual_seed(5)
    ref = Smooth(linear_model, 2, 0.5).certify(x, 50, 500, 0.01, 128)
    torch.manual_seed(5)
    ct = SmoothedClassifier(linear_model, 2, 0.5).certify(x, n0=50, n=500, alpha=0.01, batch_size=128)
    assert ref == (ct.label, ct.radius)
