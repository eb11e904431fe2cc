"""Training objectives for base classifiers of smoothed classifiers; the training loop calls one per batch.

Each objective maps a batch ``(x, y)`` of clean ``[0, 1]`` inputs to a scalar loss, the scores whose
argmax gives the training accuracy, and the loss's terms for the progress bar. Noise comes from the
run's noise sampler and the rank's own generator, so a resumed epoch draws the same again.

* :class:`GaussianAugmentation`: ``CE(f(x + eps), y)``, one draw per example (Cohen et al. 2019,
  Sec. 3.3); the default, and unchanged from earlier smoothcert versions draw for draw.
* :class:`Consistency`: Jeong & Shin (NeurIPS 2020), Eq. (5)-(7): m noisy copies, mean CE, plus
  ``lambda`` times the mean ``KL(p_bar || p_i)`` from the copies' average softmax ``p_bar`` to each
  copy's softmax ``p_i``, plus ``eta`` times the entropy ``H(p_bar)``.
* :class:`SmoothAdv`: Salman et al. (NeurIPS 2019), Sec. 3 (SmoothAdv_PGD, m_train noise draws):
  L2 PGD on ``-log((1/m) sum_i softmax(f(x' + eps_i))_y)``, the loss of the smoothed soft classifier
  estimated with m fixed draws, then CE on the adversarial point's m noisy copies (same draws).
  *Image domain.* Sec. 3 states the attack over the L2 ball ``||x' - x||_2 <= epsilon`` only; the
  authors' released PGD additionally clips ``x'`` to ``[0, 1]`` after every step, before projecting
  onto the ball. smoothcert does the same (``clip=(0, 1)`` in :func:`smoothadv_attack`): the
  adversarial points stay images, as every input of a smoothcert model is a ``[0, 1]`` pixel
  array. The noise ``eps_i`` is added after the clip and is not clipped, as in certification.
  *Threat norm.* The attack is L2, matching the L2 certificate of Gaussian noise; with Laplace or
  uniform noise (L1, Linf certificates) it does not target the certified norm, and
  :class:`~smoothcert.training.loop.TrainConfig` warns.
* :class:`Macer`: Zhai et al. (ICLR 2020), Eq. (8)-(10) and Algorithm 1: ``-log`` of the average
  softmax of k noisy copies at the label, plus ``lambda (sigma / 2) max(gamma - xi, 0)`` on the
  examples whose ``beta``-tempered smoothed soft classifier is correct, with
  ``xi = Phi^-1(q_top1) - Phi^-1(q_top2)``.

:func:`make_objective` builds one from a method name, filling each hyperparameter the caller leaves
out with the paper's default (per sigma where the paper has one).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from smoothcert.core.checks import check_int, check_nonnegative, check_positive, check_sigma
from smoothcert.core.errors import ConfigError
from smoothcert.runtime.devices import eval_mode
from smoothcert.smoothing.noises import Noise

__all__ = [
    "METHODS",
    "Consistency",
    "Draws",
    "GaussianAugmentation",
    "Macer",
    "Objective",
    "ObjectiveOutput",
    "SmoothAdv",
    "default_params",
    "make_objective",
    "resolve_params",
    "smoothadv_attack",
]


@dataclass(frozen=True)
class ObjectiveOutput:
    """One batch's ``loss`` (scalar, differentiable), ``scores`` (B, K) for the accuracy and detached ``terms``."""

    loss: torch.Tensor
    scores: torch.Tensor
    terms: dict[str, torch.Tensor]


def _unwrap(net: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (for passes that must not take part in gradient sync)."""
    from torch.nn.parallel import DistributedDataParallel

    return net.module if isinstance(net, DistributedDataParallel) else net


def _forward_copies(net: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """Logits (B, m, K) of the noisy inputs ``z`` (B, m, ...), in one forward pass over B * m inputs."""
    b, m = z.shape[:2]
    return net(z.flatten(0, 1)).reshape(b, m, -1)


@dataclass(frozen=True)
class Draws:
    """The noise of one batch: the run's sampler (None when training without noise) and the rank's generator."""

    noise: Noise | None
    generator: torch.Generator | None

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """One draw per example, shaped like ``x``."""
        return self.sampler().sample_(torch.empty_like(x), self.generator)

    def copies(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """``m`` draws per example, shape (B, m, ...): one fill of a (B, m, ...) buffer."""
        buf = torch.empty((x.shape[0], m, *x.shape[1:]), dtype=x.dtype, device=x.device)
        return self.sampler().sample_(buf, self.generator)

    def sampler(self) -> Noise:
        if self.noise is None:
            raise ConfigError("this method needs noise: sigma must be > 0")
        return self.noise


class Objective(ABC):
    """A training objective: ``objective(net, x, y, noise=..., generator=..., epoch=...)``.

    Subclasses implement :meth:`loss`; the call wraps the noise sampler and generator in :class:`Draws`.
    """

    name: ClassVar[str]
    needs_noise: ClassVar[bool] = True

    def __call__(
        self,
        net: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        noise: Noise | None,
        generator: torch.Generator | None,
        epoch: int = 1,
    ) -> ObjectiveOutput:
        """The loss of batch ``(x, y)`` in (1-based) ``epoch``; ``net`` may be wrapped in DDP."""
        if self.needs_noise and noise is None:
            raise ConfigError(f"method {self.name!r} needs noise: sigma must be > 0")
        return self.loss(net, x, y, Draws(noise, generator), epoch)

    @abstractmethod
    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: Draws, epoch: int) -> ObjectiveOutput:
        """The batch's loss, scores and terms, with the noise from ``draws``."""


@dataclass(frozen=True)
class GaussianAugmentation(Objective):
    """``CE(f(x + eps), y)`` with one draw ``eps`` per example (clean inputs when ``noise`` is None)."""

    name: ClassVar[str] = "gaussian"
    needs_noise: ClassVar[bool] = False

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: Draws, epoch: int) -> ObjectiveOutput:
        if draws.noise is not None:  # the same draws, in the same order, as smoothcert's training before objectives
            x = x + draws.like(x)
        logits = net(x)
        ce = F.cross_entropy(logits, y)
        return ObjectiveOutput(ce, logits, {"ce": ce.detach()})


@dataclass(frozen=True)
class Consistency(Objective):
    """``mean_i CE(f(x + eps_i), y) + lbd * mean_i KL(p_bar || p_i) + eta * H(p_bar)``, averaged over the batch.

    ``p_i = softmax(f(x + eps_i))``, ``p_bar = (1/m) sum_i p_i``, ``KL(p || q) = sum_k p_k log(p_k / q_k)``,
    ``H(p) = -sum_k p_k log p_k`` (Jeong & Shin 2020, Eq. (5)-(7)).
    """

    m: int = 2
    lbd: float = 10.0
    eta: float = 0.5
    name: ClassVar[str] = "consistency"

    def __post_init__(self) -> None:
        check_int("m", self.m, 1)
        check_nonnegative("lbd", self.lbd)
        check_nonnegative("eta", self.eta)

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: Draws, epoch: int) -> ObjectiveOutput:
        logits = _forward_copies(net, x.unsqueeze(1) + draws.copies(x, self.m))
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(self.m))
        log_p = F.log_softmax(logits, dim=-1)  # (B, m, K)
        p_bar = log_p.exp().mean(1)  # (B, K)
        # KL(p_bar || p_i) = sum_k p_bar (log p_bar - log p_i); xlogy gives 0 log 0 = 0
        kl = (torch.xlogy(p_bar, p_bar).unsqueeze(1) - p_bar.unsqueeze(1) * log_p).sum(-1).mean()
        entropy = -(p_bar * p_bar.clamp_min(1e-20).log()).sum(-1).mean()
        total = ce + self.lbd * kl + self.eta * entropy
        terms = {"ce": ce.detach(), "kl": kl.detach(), "ent": entropy.detach()}
        return ObjectiveOutput(total, p_bar.detach(), terms)


def _smoothed_soft_loss(
    net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """Per-example ``-log((1/m) sum_i softmax(f(x + eps_i))_y)`` for draws ``eps`` (B, m, ...)."""
    p_bar = F.softmax(_forward_copies(net, x.unsqueeze(1) + eps), dim=-1).mean(1)
    return -p_bar.gather(1, y.view(-1, 1)).squeeze(1).clamp_min(1e-20).log()


def smoothadv_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    noise_draws: torch.Tensor,
    *,
    epsilon: float,
    steps: int,
    step_size: float | None = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """SmoothAdv's inner maximization: L2 PGD on the smoothed soft classifier's loss (Salman et al. 2019, Sec. 3).

    Maximizes ``-log((1/m) sum_i softmax(f(x + delta + eps_i))_y)`` over ``||delta||_2 <= epsilon``
    with ``x + delta`` in the image domain ``[lo, hi] = clip`` (default ``[0, 1]``), the m draws
    ``noise_draws`` (B, m, ...) held fixed: ``steps`` steps of size ``step_size`` (default
    ``2 epsilon / steps``) along the normalized gradient from ``delta = 0``; after each step
    ``x + delta`` is clipped to ``[lo, hi]`` and ``delta`` then scaled onto the ball. Scaling keeps
    the clipped point's property: ``x + c delta`` (``0 <= c <= 1``) lies between two points of the
    box, so both constraints hold. ``clip=None`` drops the box. Runs ``model`` in eval mode;
    returns ``x + delta`` (detached).
    """
    check_nonnegative("epsilon", epsilon)
    check_int("steps", steps, 0)
    if epsilon == 0 or steps == 0:
        return x.detach()
    step = 2.0 * epsilon / steps if step_size is None else check_positive("step_size", step_size)
    view = (-1, *[1] * (x.ndim - 1))
    x = x.detach()
    delta = torch.zeros_like(x)
    with eval_mode(model), torch.enable_grad():
        for _ in range(steps):
            delta = delta.detach().requires_grad_(True)
            loss = _smoothed_soft_loss(model, x + delta, y, noise_draws).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            unit = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
            delta = delta.detach() + step * unit
            if clip is not None:
                delta = (x + delta).clamp(clip[0], clip[1]) - x
            # projection onto the ball: delta * min(1, epsilon / ||delta||)
            delta = delta * (epsilon / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0).view(view)
    return (x + delta).detach()


@dataclass(frozen=True)
class SmoothAdv(Objective):
    """SmoothAdv_PGD with m_train draws: attack (:func:`smoothadv_attack`), then ``mean_i CE(f(x' + eps_i), y)``.

    The attack radius grows linearly over the first ``warmup`` epochs, ``epsilon * min(1, epoch / warmup)``
    (the paper's warm-up). The attack uses the unwrapped module (no gradient sync) in eval mode.
    """

    epsilon: float = 1.0
    steps: int = 2
    m: int = 2
    warmup: int = 10
    name: ClassVar[str] = "smoothadv"

    def __post_init__(self) -> None:
        check_nonnegative("epsilon", self.epsilon)
        check_int("steps", self.steps, 1)
        check_int("m", self.m, 1)
        check_int("warmup", self.warmup, 0)

    def radius(self, epoch: int) -> float:
        """The attack radius in (1-based) ``epoch``."""
        return self.epsilon if self.warmup == 0 else self.epsilon * min(1.0, epoch / self.warmup)

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: Draws, epoch: int) -> ObjectiveOutput:
        eps = draws.copies(x, self.m)
        x_adv = smoothadv_attack(_unwrap(net), x, y, eps, epsilon=self.radius(epoch), steps=self.steps)
        logits = _forward_copies(net, x_adv.unsqueeze(1) + eps)
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(self.m))
        p_bar = F.softmax(logits.detach(), dim=-1).mean(1)
        return ObjectiveOutput(ce, p_bar, {"ce": ce.detach(), "eps": torch.tensor(self.radius(epoch))})


@dataclass(frozen=True)
class Macer(Objective):
    """``(1/B) sum_b [-log(p_bar_y + 1e-10) + lbd (sigma / 2) max(gamma - xi_b, 0) 1{correct_b}]`` (Zhai et al. 2020).

    ``p_bar`` is the average softmax of k noisy copies; ``q`` the average softmax of ``beta`` times the
    logits; ``xi = Phi^-1(q_top1) - Phi^-1(q_top2)`` is the certified-radius surrogate (over
    ``sigma / 2``). The hinge counts the examples whose ``q`` ranks the label first and whose ``xi``
    is finite and at most ``gamma`` (the others have zero hinge or no usable gradient).
    """

    sigma: float = 0.25
    k: int = 16
    lbd: float = 12.0
    beta: float = 16.0
    gamma: float = 8.0
    name: ClassVar[str] = "macer"

    def __post_init__(self) -> None:
        check_sigma(self.sigma)
        check_int("k", self.k, 1)
        for name in ("lbd", "beta", "gamma"):
            check_nonnegative(name, getattr(self, name))

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: Draws, epoch: int) -> ObjectiveOutput:
        logits = _forward_copies(net, x.unsqueeze(1) + draws.copies(x, self.k)).float()
        p_bar = F.softmax(logits, dim=-1).mean(1)
        ce = -(p_bar.gather(1, y.view(-1, 1)).squeeze(1) + 1e-10).log().sum()
        q = F.softmax(self.beta * logits, dim=-1).mean(1)
        top, idx = q.topk(2, dim=1)
        with torch.no_grad():
            xi = torch.special.ndtri(top[:, 0]) - torch.special.ndtri(top[:, 1])
            keep = (idx[:, 0] == y) & torch.isfinite(xi) & (xi <= self.gamma)
        kept = top[keep]  # Phi^-1 recomputed on the kept rows only: no inf * 0 in the backward pass
        xi_kept = torch.special.ndtri(kept[:, 0]) - torch.special.ndtri(kept[:, 1])
        hinge = (self.gamma - xi_kept).sum() * self.sigma / 2
        b = x.shape[0]
        total = (ce + self.lbd * hinge) / b
        terms = {"ce": (ce / b).detach(), "hinge": (hinge / b).detach()}
        return ObjectiveOutput(total, p_bar.detach(), terms)


METHODS: dict[str, type[Objective]] = {cls.name: cls for cls in (GaussianAugmentation, Consistency, SmoothAdv, Macer)}


def default_params(method: str, sigma: float) -> dict[str, Any]:
    """The paper's hyperparameters for ``method`` at ``sigma``.

    Consistency (Jeong & Shin 2020, Sec. 4): m = 2, eta = 0.5, lambda = 20 at sigma <= 0.25, else 10.
    SmoothAdv (Salman et al. 2019, Sec. 4 and App. B): epsilon = 1, T = 2 steps, m = 2, warm-up over
    10 epochs (one point of the paper's grid epsilon in {0.25, 0.5, 1, 2}, T in {1, 2, 4, 8, 10},
    m in {1, 2, 4, 8}). MACER (Zhai et al. 2020, Sec. 4.1, CIFAR-10): k = 16, beta = 16, gamma = 8,
    lambda = 12 at sigma <= 0.5, else 4.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "consistency":
        return {"m": 2, "lbd": 20.0 if sigma <= 0.25 else 10.0, "eta": 0.5}
    if method == "smoothadv":
        return {"epsilon": 1.0, "steps": 2, "m": 2, "warmup": 10}
    if method == "macer":
        return {"k": 16, "lbd": 12.0 if sigma <= 0.5 else 4.0, "beta": 16.0, "gamma": 8.0}
    return {}


def resolve_params(method: str, *, sigma: float, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The paper's defaults for ``method`` at ``sigma`` (:func:`default_params`) updated by ``params``."""
    known = default_params(method, sigma)
    unknown = sorted(set(params or {}) - set(known))
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"unknown hyperparameter(s) {', '.join(unknown)} for method {method!r} (allowed: {allowed})")
    return {**known, **dict(params or {})}


def make_objective(method: str, *, sigma: float, params: Mapping[str, Any] | None = None) -> Objective:
    """The objective ``method`` at ``sigma`` with :func:`resolve_params`'s hyperparameters (validated)."""
    merged = resolve_params(method, sigma=sigma, params=params)
    cls = METHODS[method]
    if cls.needs_noise and not sigma > 0:
        raise ConfigError(f"method {method!r} needs sigma > 0, got {sigma!r}")
    if cls is Macer:
        return Macer(sigma=sigma, **merged)
    return cls(**merged)
