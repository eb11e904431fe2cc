"""Argument validation shared by the public API: each failure names the argument and value."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_alpha", "check_int", "check_sigma"]


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise naming ``name`` if it is not an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def check_sigma(value: Any, name: str = "sigma") -> float:
    """Noise level: a finite real > 0."""
    v = _real(name, value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be > 0 and finite, got {value!r}")
    return v


def check_alpha(value: Any, name: str = "alpha") -> float:
    """Failure probability: a real in the open interval (0, 1)."""
    v = _real(name, value)
    if not (0.0 < v < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return v
