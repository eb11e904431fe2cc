"""smoothcert: provable robustness certificates for any PyTorch classifier by randomized smoothing.

Implements PREDICT and CERTIFY of Cohen, Rosenfeld & Kolter (ICML 2019) with exact
statistics (:mod:`smoothcert.stats`), a batched sampling engine (:mod:`smoothcert.sampling`)
and the :class:`SmoothedClassifier` that combines them.

The torch-dependent names are imported lazily, so ``import smoothcert.stats`` (and the
analysis tools) work without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN",
    "AdaptiveCertificate",
    "Certificate",
    "Prediction",
    "SmoothedClassifier",
    "SmoothingWarning",
    "__version__",
    "sample_counts",
]

_LAZY = {
    "ABSTAIN": "classifier",
    "AdaptiveCertificate": "classifier",
    "Certificate": "classifier",
    "Prediction": "classifier",
    "SmoothedClassifier": "classifier",
    "SmoothingWarning": "classifier",
    "sample_counts": "sampling",
}

if TYPE_CHECKING:
    from .classifier import ABSTAIN, AdaptiveCertificate, Certificate, Prediction, SmoothedClassifier, SmoothingWarning
    from .sampling import sample_counts


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
