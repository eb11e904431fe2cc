"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch
from oracles import LinearBinary


@pytest.fixture
def linear_model() -> LinearBinary:
    return LinearBinary(torch.tensor([3.0, -4.0]), 0.5)  # ||w|| = 5
