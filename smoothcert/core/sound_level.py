"""The level a dense-task statistic runs at in sound mode, given the sampler's residual total variation.

Derivation: ``docs/tasks.md`` §8 (and ``docs/sound.md`` §4 for the residual itself).
"""

from __future__ import annotations

import math

from smoothcert.core.checks import check_alpha, check_int
from smoothcert.core.errors import ConfigError

__all__ = ["level_after_tv"]


def level_after_tv(alpha: float, *, n: int, tv_bound: float) -> float:
    """The level to run a test at under the ideal law so that it holds at ``alpha`` under the sampler's.

    If each of the ``n`` noisy draws has a law within total variation ``tv_bound`` of the ideal
    law, the ``n`` independent draws have a joint law within ``n * tv_bound`` of the ideal joint
    law, so an event of probability ``<= a`` under the ideal law has probability ``<= a + n *
    tv_bound`` under the sampler's: the procedure runs at ``a = alpha - n * tv_bound``
    (``docs/tasks.md`` §8). ``tv_bound = 0`` (float mode) returns ``alpha``. A ``ConfigError``
    when nothing is left (``n * tv_bound >= alpha``; about ``10^9`` draws at the sound sampler's
    residual for a 64 x 64 scene).
    """
    alpha = check_alpha(alpha)
    n = check_int("n", n)
    tv = float(tv_bound)
    if not (tv >= 0 and math.isfinite(tv)):
        raise ConfigError(f"tv_bound must be a finite real >= 0, got {tv_bound!r}")
    level = alpha - n * tv
    if level <= 0:
        raise ConfigError(
            f"alpha={alpha!r} is not above n * tv_bound = {n} * {tv!r}: sound mode has no level left at this n"
        )
    return level
