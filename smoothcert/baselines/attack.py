"""L2 PGD on a deterministic classifier: an upper bound on each input's distance to the decision boundary.

Used to check the soundness of deterministic certificates: no attack may change the prediction
within a certified radius. The loss is the logit margin ``z_y - max_{j != y} z_j`` (Carlini & Wagner
2017), minimized by normalized-gradient steps projected onto the L2 ball, from ``delta = 0`` and
from random points of the ball; an input counts as broken as soon as any iterate changes the
arg-max (the iterate is kept, so a success is always a real adversarial example in the ball).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from smoothcert.core.checks import check_int
from smoothcert.runtime.devices import eval_mode

__all__ = ["AttackResult", "l2_pgd", "min_adversarial_distance"]


@dataclass(frozen=True)
class AttackResult:
    """Per input: ``success`` (the arg-max left ``y``), ``adversarial`` inputs (``x`` where it failed),
    ``distance`` ``||x_adv - x||``."""

    success: torch.Tensor
    adversarial: torch.Tensor
    distance: torch.Tensor


def _margin(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    other = z.clone()
    other.scatter_(1, y.view(-1, 1), -math.inf)
    return z.gather(1, y.view(-1, 1)).squeeze(1) - other.amax(dim=1)


def l2_pgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float | torch.Tensor,
    steps: int = 100,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Search ``||delta||_2 <= epsilon`` (a number or one per input) for ``argmax model(x + delta) != y``.

    ``steps`` projected steps of size ``2.5 epsilon / steps`` per start; the first start is
    ``delta = 0``, the next ``restarts - 1`` are uniform in the ball. Runs in eval mode in ``x``'s dtype.
    """
    check_int("steps", steps)
    check_int("restarts", restarts)
    b = x.shape[0]
    view = (-1, *[1] * (x.ndim - 1))
    eps = torch.as_tensor(epsilon, dtype=x.dtype, device=x.device).expand(b).clone()
    if not bool(torch.all(eps >= 0)):
        raise ValueError(f"epsilon must be >= 0, got {eps.tolist()}")
    step = 2.5 * eps / steps
    found = torch.zeros(b, dtype=torch.bool, device=x.device)
    best = x.detach().clone()

    def project(d: torch.Tensor) -> torch.Tensor:
        norm = d.flatten(1).norm(dim=1).clamp_min(1e-30)
        return d * torch.clamp(eps / norm, max=1.0).view(view)

    with eval_mode(model), torch.enable_grad():
        for r in range(restarts):
            if r == 0:
                delta = torch.zeros_like(x)
            else:
                g = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                g = g / g.flatten(1).norm(dim=1).clamp_min(1e-30).view(view)
                u = torch.rand(b, generator=generator, dtype=x.dtype).to(x.device) ** (1.0 / x[0].numel())
                delta = g * (eps * u).view(view)
            for _ in range(steps + 1):
                delta = delta.detach().requires_grad_(True)
                z = model(x + delta)
                broken = (z.argmax(dim=1) != y) & ~found
                if bool(broken.any()):
                    best[broken] = (x + delta).detach()[broken]
                    found |= broken
                if bool(found.all()):
                    break
                loss = _margin(z, y).sum()
                (grad,) = torch.autograd.grad(loss, delta)
                unit = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-30).view(view)
                delta = project(delta.detach() - step.view(view) * unit)
            if bool(found.all()):
                break
    return AttackResult(found, best, (best - x).flatten(1).norm(dim=1))


def min_adversarial_distance(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hi: float,
    iterations: int = 12,
    steps: int = 100,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per input, the smallest ``epsilon`` in ``[0, hi]`` (bisection) at which :func:`l2_pgd` found an
    adversarial example, as the norm of the one it found; ``inf`` where none was found up to ``hi``."""
    check_int("iterations", iterations)
    b = x.shape[0]
    lo_eps = torch.zeros(b, dtype=x.dtype, device=x.device)
    hi_eps = torch.full((b,), float(hi), dtype=x.dtype, device=x.device)
    dist = torch.full((b,), math.inf, dtype=x.dtype, device=x.device)
    first = l2_pgd(model, x, y, epsilon=hi_eps, steps=steps, restarts=restarts, generator=generator)
    dist = torch.where(first.success, first.distance, dist)
    hi_eps = torch.where(first.success, first.distance, hi_eps)
    for _ in range(iterations):
        mid = (lo_eps + hi_eps) / 2
        res = l2_pgd(model, x, y, epsilon=mid, steps=steps, restarts=restarts, generator=generator)
        dist = torch.where(res.success, torch.minimum(dist, res.distance), dist)
        hi_eps = torch.where(res.success, torch.minimum(mid, res.distance), hi_eps)
        lo_eps = torch.where(res.success, lo_eps, mid)
    return dist
