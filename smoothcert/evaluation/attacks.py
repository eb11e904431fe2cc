"""Attacks: L2 PGD on the smoothed classifier (paper App. J.3) and DeepFool on a base classifier.

Certificates are lower bounds on robustness; attacks give upper bounds. Together they show how
tight the certificates are (paper Sec. 4, App. J.3) and how an undefended network fares
(paper Fig. 6, dashed).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray

from smoothcert.core.checks import check_int, check_sigma
from smoothcert.runtime.devices import eval_mode

__all__ = ["deepfool", "onto_grid", "smoothed_pgd"]

_SHRINK = 1.0 - 1e-6  # project onto a ball a hair smaller than epsilon, so rounding never leaves it


def _per_example(value: float | torch.Tensor, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{name} must be a number or a tensor of shape ({batch},), got shape {tuple(t.shape)}")
    if not bool(torch.all(t >= 0)) or not bool(torch.all(torch.isfinite(t))):
        raise ValueError(f"{name} must be finite and >= 0, got {t.tolist()}")
    return t


def _norms(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1)


def _project(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``Pi_eps(delta) = delta * min(1, eps / ||delta||)``, per example."""
    norm = _norms(delta).clamp_min(1e-12)
    scale = torch.clamp(eps * _SHRINK / norm, max=1.0)
    return delta * scale.view(-1, *[1] * (delta.ndim - 1))


def smoothed_pgd(
    base_classifier: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sigma: float,
    epsilon: float | torch.Tensor,
    steps: int,
    step_size: float | torch.Tensor,
    num_noise: int,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L2 projected steepest ascent on ``E_eta[CE(F(x + delta + eta), y)]``, ``eta ~ N(0, sigma^2 I)``.

    Each step estimates the gradient from ``num_noise`` fresh noise draws per example, moves
    ``step_size`` along the normalized gradient and projects onto the L2 ball of radius
    ``epsilon`` (a number, or one per example). Batched over the examples of ``x`` (B, ...),
    with labels ``y`` (B,). Returns the perturbed inputs ``x + delta`` with ``||delta|| <= epsilon``.
    Whether ``g`` actually changed must be judged with PREDICT at the result (docs/statistics.md §10).
    """
    sigma = check_sigma(sigma)
    steps = check_int("steps", steps, 0)
    num_noise = check_int("num_noise", num_noise)
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise ValueError(f"x must be a batch tensor (B, ...), got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    b = x.shape[0]
    eps = _per_example(epsilon, b, x, "epsilon")
    step = _per_example(step_size, b, x, "step_size")
    view = (-1, *[1] * (x.ndim - 1))
    y = y.to(x.device)
    delta = torch.zeros_like(x)
    if random_start:
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / _norms(direction).clamp_min(1e-12).view(view)
        d = x[0].numel()
        u = torch.rand(b, generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
        delta = _project(direction * (eps * u).view(view), eps)
    labels = y.repeat_interleave(num_noise)
    with eval_mode(base_classifier), torch.enable_grad():
        for _ in range(steps):
            delta = delta.detach().requires_grad_(True)
            noise = torch.randn((b, num_noise, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
            batch = ((x + delta).unsqueeze(1) + sigma * noise).flatten(0, 1)
            loss = torch.nn.functional.cross_entropy(base_classifier(batch), labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            unit = grad / _norms(grad).clamp_min(1e-12).view(view)
            delta = _project(delta.detach() + step.view(view) * unit, eps)
    return (x + delta).detach()


def onto_grid(x: torch.Tensor, adv: torch.Tensor, *, grid: int, epsilon: float | torch.Tensor) -> torch.Tensor:
    """A point of the grid ``i / grid`` near ``adv``, no farther than ``epsilon`` (L2) from ``x``, per example.

    Sound-mode certificates cover grid inputs (``docs/sound.md``), so an attack on a sound-mode
    classifier must end on the grid. ``x`` (B, ...) must be on the grid and ``||adv - x|| <=
    epsilon``. Each coordinate of ``delta = adv - x`` (in grid steps) is rounded to the nearest
    step; while that leaves the ball, the coordinates rounded away from zero are rounded toward
    zero instead, those nearest a half step first (the least faithful roundings). Rounding every
    coordinate toward zero shrinks each one, so the result is always inside the ball.
    """
    b = x.shape[0]
    eps = _per_example(epsilon, b, x.double(), "epsilon")
    base = torch.round(x.double() * grid).flatten(1)
    d = adv.double().flatten(1) * grid - base  # delta in grid steps
    near, toward = torch.round(d), torch.trunc(d)
    gain = near**2 - toward**2  # squared norm saved by rounding a coordinate toward zero instead
    need = (near**2).sum(1) - (eps * grid) ** 2  # squared norm (grid steps) to give up
    frac = (d - toward).abs()
    order = torch.where(gain > 0, frac, torch.full_like(frac, 2.0)).argsort(dim=1)
    saved = gain.gather(1, order).cumsum(1)
    count = torch.where(need > 0, (saved < need.unsqueeze(1)).sum(1) + 1, torch.zeros_like(need, dtype=torch.long))
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(d.shape[1], device=d.device).expand_as(order))
    steps = torch.where(rank < count.unsqueeze(1), toward, near)
    return ((base + steps) / grid).to(x.dtype).view_as(x)


def deepfool(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 50,
    overshoot: float = 0.02,
    candidates: int = 10,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[torch.Tensor, NDArray[np.float64], NDArray[np.bool_]]:
    """DeepFool (L2, Moosavi-Dezfooli et al. 2016) against a base classifier, via foolbox.

    Returns ``(adversarial inputs, ||x_adv - x||_2, success)``: the norm is each example's
    minimal adversarial perturbation found (``inf`` where the attack failed); inputs the model
    already misclassifies get norm 0. Every forward pass runs in eval mode (batch-norm
    statistics are left alone) and the model's train/eval mode is restored afterwards.
    """
    try:
        import foolbox as fb
    except ImportError:
        raise ImportError("DeepFool needs foolbox: pip install 'smoothcert[attacks]'") from None

    check_int("steps", steps)
    with eval_mode(model):
        with torch.no_grad():
            classes = int(model(x[:1]).shape[1])
        fmodel = fb.PyTorchModel(model, bounds=bounds, device=x.device)
        attack = fb.attacks.L2DeepFoolAttack(steps=steps, candidates=min(candidates, classes), overshoot=overshoot)
        _, adv, success = attack(fmodel, x, y.to(x.device), epsilons=None)
        with torch.no_grad():
            wrong = model(x).argmax(1) != y.to(x.device)
    norms = _norms(adv - x).detach().cpu().numpy().astype(np.float64)
    ok = success.cpu().numpy().astype(bool)
    norms = np.where(wrong.cpu().numpy(), 0.0, np.where(ok, norms, np.inf))
    return adv.detach(), norms, ok | wrong.cpu().numpy()
