"""Drop-in replacement for the 2019 reference implementation's ``Smooth`` class.

Projects written against ``core.Smooth`` of the reference code can switch their import to
``from smoothcert.smoothing.compat import Smooth`` and keep their calls::

    smoothed = Smooth(model, num_classes, sigma)
    label = smoothed.predict(x, n, alpha, batch_size)            # int, -1 to abstain
    label, radius = smoothed.certify(x, n0, n, alpha, batch_size)  # (-1, 0.0) to abstain

Unlike the reference, it runs on whatever device the model is on (CPU included), counts
votes on the device, and uses the exact statistics of :mod:`smoothcert.core.stats` on current
SciPy. Randomness comes from torch's global generator, as in the reference. Like the library it
certifies inputs on the 8-bit grid in sound mode (``sound="auto"``, ``docs/sound.md``);
``Smooth(..., sound=False)`` draws float noise for every input, as the reference does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from smoothcert.smoothing.classifier import ABSTAIN, SmoothedClassifier
from smoothcert.smoothing.smoothed import SoundArg

__all__ = ["Smooth"]


class Smooth:
    """The reference ``Smooth(base_classifier, num_classes, sigma)`` API on smoothcert's engine."""

    ABSTAIN = ABSTAIN

    def __init__(
        self,
        base_classifier: Callable[[torch.Tensor], torch.Tensor],
        num_classes: int,
        sigma: float,
        *,
        sound: SoundArg = "auto",
    ) -> None:
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = sigma
        self._smoothed = SmoothedClassifier(base_classifier, num_classes, sigma, sound=sound)

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int) -> int:
        """PREDICT on one input ``x`` (no batch dimension); ``-1`` to abstain."""
        return self._smoothed.predict(x, n=n, alpha=alpha, batch_size=batch_size).label

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int) -> tuple[int, float]:
        """CERTIFY on one input ``x``; ``(label, radius)`` or ``(-1, 0.0)`` to abstain."""
        cert = self._smoothed.certify(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size)
        return cert.label, cert.radius
