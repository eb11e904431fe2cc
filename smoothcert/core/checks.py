"""Argument validation for the whole package: one home for every rule on a number's range.

Two families, with the same rules and messages:

* scalar checks (``check_*``) take one Python number and return it as ``int`` or ``float``;
* array checks (``*_array``) take a number or anything ``numpy.asarray`` reads as numbers, and
  return a float64 (or int64) array, checked elementwise; the message shows the offending values.

A value of the wrong type raises ``TypeError``. A value out of range raises
:class:`~smoothcert.core.errors.ConfigError` (a ``ValueError``), whose message names the
argument and the value: ``"alpha must be in (0, 1), got 1.5"``. NaN fails every range check.

The result helpers :func:`is_scalar` and :func:`scalar_or_array` implement the convention of the
numeric modules (:mod:`.stats`, :mod:`.radii`): a Python ``float`` for scalar arguments, a
float64 array otherwise.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from smoothcert.core.errors import ConfigError

__all__ = [
    "FLOAT_DRAWS",
    "check_alpha",
    "check_float_draws",
    "check_int",
    "check_nonnegative",
    "check_open_unit",
    "check_positive",
    "check_probability",
    "check_real",
    "check_sigma",
    "counts_array",
    "float_array",
    "int_array",
    "is_scalar",
    "nonnegative_array",
    "open_unit_array",
    "positive_array",
    "probability_array",
    "scalar_or_array",
]


# --------------------------------------------------------------------------- scalars


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise naming ``name`` if it is not an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_real(name: str, value: Any) -> float:
    """Return ``value`` as a float; ``TypeError`` unless it is a real number (bool is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """A finite real > 0."""
    v = check_real(name, value)
    if not (v > 0 and math.isfinite(v)):
        raise ConfigError(f"{name} must be > 0 and finite, got {value!r}")
    return v


def check_nonnegative(name: str, value: Any) -> float:
    """A finite real >= 0."""
    v = check_real(name, value)
    if not (v >= 0 and math.isfinite(v)):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_probability(name: str, value: Any) -> float:
    """A real in the closed interval [0, 1]."""
    v = check_real(name, value)
    if not (0.0 <= v <= 1.0):
        raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_open_unit(name: str, value: Any) -> float:
    """A real in the open interval (0, 1), e.g. a failure probability."""
    v = check_real(name, value)
    if not (0.0 < v < 1.0):
        raise ConfigError(f"{name} must be in (0, 1), got {value!r}")
    return v


def check_sigma(value: Any, name: str = "sigma") -> float:
    """Noise level: a finite real > 0 (:func:`check_positive` with the name last, as callers use it)."""
    return check_positive(name, value)


def check_alpha(value: Any, name: str = "alpha") -> float:
    """Failure probability: a real in (0, 1) (:func:`check_open_unit` with the name last)."""
    return check_open_unit(name, value)


# --------------------------------------------------------------------------- arrays


# Float mode's Gaussian draws (smoothing.noises.Gaussian): float32 Box-Muller with a float64 tail
# (the default since 0.3) or 0.2's float64 normal_ stream.
FLOAT_DRAWS = ("float32", "float64")


def check_float_draws(value: Any, name: str = "float_draws") -> str:
    """``value`` if it is one of :data:`FLOAT_DRAWS`, else a ConfigError naming it."""
    if not isinstance(value, str) or value not in FLOAT_DRAWS:
        raise ConfigError(f"{name} must be one of {', '.join(FLOAT_DRAWS)}, got {value!r}")
    return value


def _fmt(arr: NDArray[Any]) -> str:
    return repr(arr.item()) if arr.ndim == 0 else np.array2string(arr, threshold=6)


def _require(name: str, arr: NDArray[Any], ok: NDArray[np.bool_], rule: str) -> None:
    """Raise ``ConfigError("{name} must be {rule}, got {the values that are not ok}")`` unless all ``ok``."""
    bad = ~ok
    if np.any(bad):
        raise ConfigError(f"{name} must be {rule}, got {_fmt(arr[bad] if arr.ndim else arr)}")


def float_array(name: str, value: ArrayLike) -> NDArray[np.float64]:
    """``value`` as a float64 array; ``TypeError`` naming ``name`` if it is not numeric."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or an array of numbers, got {value!r}") from None


def probability_array(name: str, value: ArrayLike) -> NDArray[np.float64]:
    """Every element in [0, 1]."""
    arr = float_array(name, value)
    _require(name, arr, (arr >= 0) & (arr <= 1), "in [0, 1]")
    return arr


def open_unit_array(name: str, value: ArrayLike) -> NDArray[np.float64]:
    """Every element in (0, 1)."""
    arr = float_array(name, value)
    _require(name, arr, (arr > 0) & (arr < 1), "in (0, 1)")
    return arr


def positive_array(name: str, value: ArrayLike) -> NDArray[np.float64]:
    """Every element finite and > 0."""
    arr = float_array(name, value)
    _require(name, arr, (arr > 0) & np.isfinite(arr), "> 0 and finite")
    return arr


def nonnegative_array(name: str, value: ArrayLike) -> NDArray[np.float64]:
    """Every element >= 0 (``inf`` allowed: a radius may be unbounded)."""
    arr = float_array(name, value)
    _require(name, arr, arr >= 0, ">= 0")
    return arr


def int_array(name: str, value: ArrayLike, minimum: int) -> NDArray[np.int64]:
    """Every element a whole number >= ``minimum`` (``3.0`` counts as 3); returned as int64."""
    arr = float_array(name, value)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(arr) & (arr == np.floor(arr)) & (arr >= minimum)
    _require(name, arr, ok, f"an integer >= {minimum}")
    return arr.astype(np.int64)


def counts_array(k: ArrayLike, n: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Successes ``k >= 0`` of ``n >= 1`` trials, ``k <= n``; returned broadcast together."""
    k_arr, n_arr = np.broadcast_arrays(int_array("k", k, 0), int_array("n", n, 1))
    bad = k_arr > n_arr
    if np.any(bad):
        raise ConfigError(f"k must be <= n, got k={_fmt(k_arr[bad])} with n={_fmt(n_arr[bad])}")
    return k_arr, n_arr


# --------------------------------------------------------------------------- results


def is_scalar(*values: Any) -> bool:
    """True when every value is a scalar (a number or a 0-d array); ``None`` counts as scalar."""
    return all(v is None or np.ndim(v) == 0 for v in values)


def scalar_or_array(x: ArrayLike, scalar: bool) -> Any:
    """``x`` as a Python ``float`` when ``scalar``, else as a float64 array."""
    arr = np.asarray(x, dtype=np.float64)
    return float(arr.item()) if scalar else arr
