"""Where and how a model runs: device resolution and a train/eval-mode guard.

Kept apart from training so that certification, attacks and the demo can resolve a device
without importing the training module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["eval_mode", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


@contextlib.contextmanager
def eval_mode(model: Callable[..., Any]) -> Iterator[None]:
    """Put an ``nn.Module`` in eval mode and restore its previous train/eval state on exit."""
    if isinstance(model, torch.nn.Module):
        was_training = model.training
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)
    else:
        yield
