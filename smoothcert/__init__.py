"""smoothcert: provable robustness certificates for any PyTorch model by randomized smoothing.

Implements PREDICT and CERTIFY of Cohen, Rosenfeld & Kolter (ICML 2019) and their follow-ups.
The sub-packages are the layers, lowest first (``tests/test_layering.py`` enforces the order):

- :mod:`smoothcert.core`: torch-free statistics, radii, sequential stopping rules, validation, errors;
- :mod:`smoothcert.runtime`: where and how torch runs (devices, threads, allocator, torchrun);
- :mod:`smoothcert.models`: network architectures;
- :mod:`smoothcert.smoothing`: noises, the sampling engine and the smoothed models;
- :mod:`smoothcert.io`: data sets, model files, checkpoint import, result logs;
- :mod:`smoothcert.training` and :mod:`smoothcert.evaluation`: training loops; log analysis, plots, attacks;
- :mod:`smoothcert.runs`: whole jobs (certify a data set, attack a log, the demo);
- :mod:`smoothcert.cli`: the command line.

The torch-dependent names are imported lazily, so ``from smoothcert import stats`` (and the
analysis tools) work without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from smoothcert import _legacy

__version__ = "0.2.0"

__all__ = [
    "ABSTAIN",
    "AdaptiveCertificate",
    "Certificate",
    "Ensemble",
    "Prediction",
    "SmoothedClassifier",
    "SmoothedRegressor",
    "SmoothedSegmenter",
    "SmoothingWarning",
    "__version__",
    "lift",
    "sample_counts",
    "stats",
]

_LAZY = {
    "ABSTAIN": "smoothcert.smoothing.certificates",
    "AdaptiveCertificate": "smoothcert.smoothing.certificates",
    "Certificate": "smoothcert.smoothing.certificates",
    "Prediction": "smoothcert.smoothing.certificates",
    "SmoothingWarning": "smoothcert.smoothing.certificates",
    "SmoothedClassifier": "smoothcert.smoothing.classifier",
    "SmoothedRegressor": "smoothcert.smoothing.regression",
    "SmoothedSegmenter": "smoothcert.smoothing.segmentation",
    "lift": "smoothcert.smoothing.lifting",
    "Ensemble": "smoothcert.models.ensemble",
    "sample_counts": "smoothcert.smoothing.engine",
}

if TYPE_CHECKING:
    from smoothcert.core import stats
    from smoothcert.models.ensemble import Ensemble
    from smoothcert.smoothing.certificates import (
        ABSTAIN,
        AdaptiveCertificate,
        Certificate,
        Prediction,
        SmoothingWarning,
    )
    from smoothcert.smoothing.classifier import SmoothedClassifier
    from smoothcert.smoothing.engine import sample_counts
    from smoothcert.smoothing.lifting import lift
    from smoothcert.smoothing.regression import SmoothedRegressor
    from smoothcert.smoothing.segmentation import SmoothedSegmenter

_legacy.install()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name == "stats":
        value = importlib.import_module("smoothcert.core.stats")
    else:
        value = _legacy.module_for(name)  # an old flat module name (smoothcert.analysis, ...), or AttributeError
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
