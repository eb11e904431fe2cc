"""A guaranteed upper bound on a network's L2 Lipschitz constant, and the Lipschitz-margin radius.

Tsuzuku, Sato & Sugiyama, "Lipschitz-Margin Training" (NeurIPS 2018), the margin guarantee: if the logit
map ``z = F(x)`` is ``L``-Lipschitz in L2, then for any class ``j`` the logit difference
``z_y - z_j = (e_y - e_j) . z`` changes by at most ``||e_y - e_j||_2 L ||delta||_2 = sqrt(2) L ||delta||``,
so the predicted class ``y`` cannot change within ``||delta||_2 < margin / (sqrt(2) L)`` with
``margin = z_y - max_{j != y} z_j``.

The radius is only sound if ``L`` really bounds the Lipschitz constant. :func:`layer_norms` walks a
sequential network and gives each layer's constant:

* linear layers (``nn.Linear``, :class:`~smoothcert.models.lipschitz.OrthoLinear`, ``nn.Conv2d``,
  ``nn.AvgPool2d``): the exact spectral norm of the layer's linear part **as an operator on the actual
  input shape**, from the dense matrix in float64 (``sqrt`` of the top eigenvalue of the Gram matrix of
  the smaller side, ``torch.linalg.eigvalsh``). For a zero-padded convolution this is the norm of the
  actual map; the FFT bound for circular padding is for a different operator and is not used;
* ``Normalize``: ``1 / min(std)``; eval-mode batch norm: ``max |gamma| / sqrt(var + eps)``;
* ReLU, MaxMin/GroupSort, Tanh, Flatten, Identity, Dropout (eval): 1;
* max pooling: 1 for windows that do not overlap, else ``sqrt(n_h n_w)`` where ``n = ceil(kernel /
  stride)`` bounds how many windows share an input element.

Anything else is refused (ConfigError): an unknown layer would make the bound unsound, never looser.
Layers are recognised by their **exact type** (``type(m) is nn.ReLU``), never ``isinstance``: a subclass
may override ``forward`` (or ``__call__``) and compute a map with any constant. For the same reason
:func:`check_plain` refuses a network in which any module has a forward, forward-pre or backward hook,
an instance-level ``forward``, or while a global module hook (``torch.nn.modules.module``'s
``register_module_forward_hook`` and the like) is registered: a forward hook or pre-hook may replace a
layer's output or input. (Backward hooks cannot change the values computed, but they are refused
too, so that the rule is simply "no hooks".)
Power iteration is *not* used: it converges from below and is not an upper bound.

**Floating point.** The certificate is for the network evaluated in float64 (:func:`double_copy`;
float32 weights are exact in float64). The bound's relative error from the eigenvalue solver is of
order ``1e-15`` per layer; :data:`RELATIVE_SLACK` (``1e-9`` per layer) inflates ``L`` and
:data:`MARGIN_SLACK` (``1e-9 (1 + max |z|)``) is taken off each margin, many orders of magnitude
above float64 rounding in networks of this size. This is an engineering margin, not a formal
rounding analysis of the forward pass.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from smoothcert.core.errors import ConfigError
from smoothcert.models.architectures import Normalize
from smoothcert.models.lipschitz import MaxMin, OrthoLinear, freeze_orthonormal

__all__ = [
    "MARGIN_SLACK",
    "RELATIVE_SLACK",
    "LayerNorm",
    "LipschitzBound",
    "check_plain",
    "double_copy",
    "layer_norms",
    "lipschitz_bound",
    "margin_radius",
    "operator_norm",
]

RELATIVE_SLACK = 1e-9
MARGIN_SLACK = 1e-9
_ONE_LIPSCHITZ: tuple[type[nn.Module], ...] = (nn.ReLU, MaxMin, nn.Tanh, nn.Flatten, nn.Identity, nn.Dropout)
_HOOKS = {
    "_forward_hooks": "forward hook",
    "_forward_pre_hooks": "forward pre-hook",
    "_backward_hooks": "backward hook",
    "_backward_pre_hooks": "backward pre-hook",
}
_KNOWN: tuple[type[nn.Module], ...] = (
    nn.Linear,
    OrthoLinear,
    nn.Conv2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    Normalize,
    nn.LeakyReLU,
    *_ONE_LIPSCHITZ,
)
# instance attributes that would replace what calling the module runs (the class's forward)
_CALL_OVERRIDES = ("forward", "_call_impl", "_wrapped_call_impl", "__call__")


@dataclass(frozen=True)
class LayerNorm:
    """One layer's L2 Lipschitz constant: ``name`` (its path in the model), ``kind`` and ``norm``;
    ``input_shape`` without the batch dimension."""

    name: str
    kind: str
    norm: float
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class LipschitzBound:
    """``value``: the bound used for radii (``raw`` inflated by ``RELATIVE_SLACK`` per layer);
    ``layers``: each factor."""

    value: float
    raw: float
    layers: tuple[LayerNorm, ...]


def operator_norm(linear_map: nn.Module | object, input_shape: Sequence[int], *, chunk: int = 4096) -> float:
    """The exact spectral norm (float64) of a *linear* map on inputs of ``input_shape`` (no batch dimension).

    The dense matrix is built column by column (the map applied to basis vectors, ``chunk`` at a time),
    then ``sqrt(lambda_max(G))`` with ``G`` the Gram matrix of the smaller side.
    """
    shape = tuple(int(d) for d in input_shape)
    dim = math.prod(shape)
    cols = []
    with torch.no_grad():
        for start in range(0, dim, chunk):
            stop = min(dim, start + chunk)
            basis = torch.zeros(stop - start, dim, dtype=torch.float64)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            out = linear_map(basis.reshape(stop - start, *shape))  # type: ignore[operator]
            cols.append(out.reshape(stop - start, -1).to(torch.float64))
    m = torch.cat(cols).T  # (out_dim, in_dim)
    gram = m.T @ m if m.shape[1] <= m.shape[0] else m @ m.T
    top = float(torch.linalg.eigvalsh(gram)[-1])
    return math.sqrt(max(top, 0.0))


def _conv_linear_part(conv: nn.Conv2d) -> nn.Module:
    class _NoBias(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if conv.padding_mode != "zeros":
                raise ConfigError(
                    f"only zero-padded convolutions are supported, got padding_mode={conv.padding_mode!r}"
                )
            return F.conv2d(
                x,
                conv.weight.to(x.dtype),
                None,
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
            )

    return _NoBias()


def _maxpool_norm(pool: nn.MaxPool2d) -> float:
    k = pool.kernel_size if isinstance(pool.kernel_size, tuple) else (pool.kernel_size, pool.kernel_size)
    s = pool.stride if isinstance(pool.stride, tuple) else (pool.stride, pool.stride)
    d = pool.dilation if isinstance(pool.dilation, tuple) else (pool.dilation, pool.dilation)
    if tuple(d) != (1, 1):
        raise ConfigError(f"max pooling with dilation={pool.dilation!r} is not supported")
    n = [math.ceil(int(ki) / int(si)) for ki, si in zip(k, s, strict=False)]
    return math.sqrt(n[0] * n[1])


def check_plain(model: nn.Module) -> None:
    """Refuse (:class:`ConfigError`, one line naming the module's path and type) a network that may not
    compute what its layers' types compute: a registered global module hook, or any module (containers
    included) with a forward, forward-pre or backward hook or an instance-level ``forward``/``__call__``."""
    from torch.nn.modules import module as torch_module

    for attr, what in _HOOKS.items():
        if getattr(torch_module, f"_global{attr}", None):
            raise ConfigError(
                f"a global module {what} is registered (torch.nn.modules.module._global{attr}); it runs in "
                "every layer, so no per-layer Lipschitz bound holds: remove it before bounding or certifying"
            )
    for name, module in model.named_modules():
        path = name or "<model>"
        for attr, what in _HOOKS.items():
            if getattr(module, attr, None):
                raise ConfigError(
                    f"module {path!r} ({type(module).__name__}) has a {what}, which may change what it computes; "
                    "remove it (handle.remove()) before bounding or certifying"
                )
        replaced = [a for a in _CALL_OVERRIDES if a in vars(module)]
        if replaced:
            raise ConfigError(
                f"module {path!r} ({type(module).__name__}) has its own {replaced[0]} set on the instance, so it "
                "may not compute its type's map; the Lipschitz bound refuses it"
            )


def _one(name: str, module: nn.Module, shape: tuple[int, ...]) -> float:
    kind = type(module)  # the exact type: a subclass may override forward
    if any(kind is t for t in _ONE_LIPSCHITZ):
        return 1.0
    if type(module) is nn.LeakyReLU:
        return max(1.0, abs(float(module.negative_slope)))
    if type(module) is Normalize:
        return float(1.0 / module.std.double().abs().min())
    if type(module) is OrthoLinear:
        return float(torch.linalg.matrix_norm(module.weight().detach().double(), ord=2))
    if type(module) is nn.Linear:
        return float(torch.linalg.matrix_norm(module.weight.detach().double(), ord=2))
    if type(module) is nn.Conv2d:
        return operator_norm(_conv_linear_part(module), shape)
    if type(module) is nn.AvgPool2d:
        return operator_norm(module, shape)
    if type(module) is nn.MaxPool2d:
        return _maxpool_norm(module)
    if type(module) is nn.BatchNorm2d or type(module) is nn.BatchNorm1d:
        if module.training or module.running_var is None:
            raise ConfigError(f"layer {name!r}: batch norm must be in eval mode with running statistics")
        scale = torch.ones_like(module.running_var) if module.weight is None else module.weight.detach()
        return float((scale.double().abs() / torch.sqrt(module.running_var.double() + module.eps)).max())
    base = next((t for t in (*_KNOWN, nn.Sequential) if isinstance(module, t)), None)
    subclass = f" (a subclass of {base.__name__}, which may override forward)" if base is not None else ""
    raise ConfigError(
        f"layer {name!r} of type {kind.__name__}{subclass} has no known Lipschitz bound; supported (exact types): "
        f"{', '.join(t.__name__ for t in _KNOWN)}"
    )


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    if type(module) is nn.Sequential:
        out: list[tuple[str, nn.Module]] = []
        for child_name, child in module.named_children():
            out += _leaves(child, f"{prefix}.{child_name}" if prefix else child_name)
        return out
    if list(module.children()):
        raise ConfigError(
            f"module {prefix or type(module).__name__!r} ({type(module).__name__}) is not a chain of known layers; "
            "only nn.Sequential compositions (the exact type) can be bounded"
        )
    return [(prefix or type(module).__name__, module)]


def double_copy(model: nn.Module) -> nn.Module:
    """A float64, eval-mode copy of ``model``: the network whose certificates :func:`margin_radius` gives.

    Orthonormal layers are frozen into plain linear layers (their QR factor computed once, in float64),
    so the copy's layers are exactly the operators :func:`layer_norms` measures. Refuses a network with
    hooks or instance-level call overrides first (:func:`check_plain`): freezing would drop an
    orthonormal layer's hooks, and any hook may change what the network computes.
    """
    check_plain(model)
    return freeze_orthonormal(copy.deepcopy(model).double()).eval()


def layer_norms(model: nn.Module, input_shape: Sequence[int]) -> list[LayerNorm]:
    """Each layer's L2 Lipschitz constant, in order, for inputs of ``input_shape`` (no batch dimension)."""
    shape = tuple(int(d) for d in input_shape)
    net = double_copy(model)
    norms = []
    x = torch.zeros(1, *shape, dtype=torch.float64)
    with torch.no_grad():
        for name, layer in _leaves(net):
            norms.append(
                LayerNorm(name, type(layer).__name__, _one(name, layer, tuple(x.shape[1:])), tuple(x.shape[1:]))
            )
            x = layer(x)
    return norms


def lipschitz_bound(model: nn.Module, input_shape: Sequence[int], *, skip: Sequence[str] = ()) -> LipschitzBound:
    """The product of :func:`layer_norms`, inflated by ``RELATIVE_SLACK`` per layer.

    ``skip`` leaves out the named layers: **unsound**, for testing that the soundness checks notice.
    """
    layers = tuple(ln for ln in layer_norms(model, input_shape) if ln.name not in set(skip))
    raw = math.prod(ln.norm for ln in layers)
    return LipschitzBound(raw * (1.0 + RELATIVE_SLACK) ** max(1, len(layers)), raw, layers)


def margin_radius(logits: torch.Tensor, lipschitz: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and certified L2 radii ``max(0, margin - slack) / (sqrt(2) L)`` of a batch of
    logits (computed in float64)."""
    if not (lipschitz > 0 and math.isfinite(lipschitz)):
        raise ConfigError(f"lipschitz must be > 0 and finite, got {lipschitz!r}")
    z = logits.double()
    top2 = z.topk(2, dim=1)
    predict = top2.indices[:, 0]
    margin = top2.values[:, 0] - top2.values[:, 1]
    slack = MARGIN_SLACK * (1.0 + z.abs().amax(dim=1))
    radius = (margin - slack).clamp_min(0.0) / (math.sqrt(2.0) * lipschitz)
    return predict, radius
