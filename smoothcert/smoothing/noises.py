"""Noise distributions for randomized smoothing: samplers (torch) and their certified radii.

Each noise is parameterized by ``sigma``, its per-coordinate standard deviation, so noise
levels compare across families; the family's own scale is derived from ``sigma``:

* :class:`Gaussian`: N(0, sigma^2) coordinates; certifies l2 (Cohen et al. 2019, Thm 1), and
  l1 and linf through norm inclusions.
* :class:`Laplace`: Laplace(0, b) coordinates, ``b = sigma / sqrt(2)``; certifies l1
  (Teng, Lee & Yuan, ICLR 2020).
* :class:`Uniform`: U[-lam, lam] coordinates, ``lam = sqrt(3) sigma``; certifies l1 and linf
  (Yang et al., ICML 2020, "Randomized Smoothing of All Shapes and Sizes").

The radius formulas live in the torch-free :mod:`smoothcert.core.radii`; the objects here delegate
to it. :meth:`Noise.sample_` fills a preallocated buffer in place from an explicit
``torch.Generator`` on the buffer's device.

**What "exact" means here (float mode).** Every sampler moves at most ``2^-50`` of each
coordinate's mass out of its tails, so about ``d * 2^-50`` per noise vector (``1.3e-10`` at
ImageNet size):

* Gaussian, float32 buffers (the default, ``draws="float32"``, since 0.3): Box–Muller in
  float32 on 24-bit uniforms, whose radius draw is refined in float64 where it falls in the
  tail (``u1 <= 2^-10``, one pair in 1,024): the radius is capped at ``sqrt(2 ln 2^63)``, about
  ``9.3 sigma``, mass ``2^-63`` per pair (:func:`gaussian32_`). The values carry float32
  evaluation error (a few ulps of each value) instead of one rounding.
* Gaussian with ``draws="float64"`` (0.2's stream, kept to resume its logs) and every float64
  buffer: float64 ``normal_`` (53-bit uniforms), radius capped at ``sqrt(2 ln 2^53)``, about
  ``8.6 sigma``, mass ``2^-53``, rounded once to the buffer's dtype.
* Laplace: float64 inverse CDF, ``|x| <= b ln 2^53``, mass ``<= 2^-52``; uniform: none.

Beyond that, float-mode noise is a float approximation of the stated law and the model sees
``fl(x + eps)``: a discrete law that the radius formulas do not cover. A base classifier that
reads low-order bits can exploit it (``docs/sound.md``); for quantized inputs use sound mode
(:mod:`smoothcert.smoothing.sound`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from numpy.typing import ArrayLike

from smoothcert.core import radii as _radii
from smoothcert.core.checks import FLOAT_DRAWS, check_float_draws, check_sigma

__all__ = [
    "FLOAT_DRAWS",
    "NOISES",
    "Gaussian",
    "Laplace",
    "Noise",
    "Uniform",
    "gaussian32_",
    "make_noise",
    "positions_at_least",
    "random_bits64_",
]

# Chunk of the float64 draws: bounds the temporary buffer to 8 MiB per call.
_CHUNK = 1 << 20
_LAPLACE_FLOOR = 2.0**-53  # 1 - |v| for a float64 v in [-1, 1) is a multiple of 2^-52, or 0 at v = -1
_U_BITS = 24  # bits of each float32 Box-Muller uniform
_TAIL_BITS = 14  # u1 <= 2^-(24 - 14) = 2^-10: the radius is redrawn in float64
_TWO_PI_ULP = 2.0 * math.pi * 2.0**-_U_BITS


def random_bits64_(out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill the int64 tensor ``out`` with uniform 64-bit words (all 64 bits random); return ``out``.

    ``random_(-2^63, None)`` is torch's full-range draw: each element is one raw 64-bit output of
    the generator (two 32-bit Mersenne-twister outputs on the CPU, Philox on CUDA), reinterpreted
    as a signed integer. Its bit fields are therefore independent and uniform.
    """
    return out.random_(-(2**63), None, generator=generator)


def _check_buffer(out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if not out.is_floating_point():
        raise TypeError(f"out must have a floating-point dtype, got {out.dtype}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous, got a non-contiguous tensor")
    return out


def _laplace_from_uniform_(v: torch.Tensor, b: float) -> torch.Tensor:
    """In place ``v <- -b sign(v) ln(max(1 - |v|, 2^-53))`` for float64 ``v`` in [-1, 1]; finite everywhere.

    ``1 - |v|`` is exact for float64 uniforms (multiples of ``2^-52``); the floor only catches
    the endpoint ``v = -1`` (probability ``2^-53``), giving ``|x| = 53 b ln 2``.
    """
    mag = v.abs().neg_().add_(1.0).clamp_min_(_LAPLACE_FLOOR).log_().mul_(-b)  # -b ln(1 - |v|) >= 0
    return v.copy_(mag.copysign_(v))


def positions_at_least(codes: torch.Tensor, first: int) -> torch.Tensor:
    """Positions ``k`` (increasing, int64) of the int32 vector ``codes`` with ``codes[k] >= first``.

    ``nonzero`` runs on the mask viewed as int64 words of 8 flags (8 times fewer elements); only
    the few words holding a flag are expanded and filtered.
    """
    count = codes.numel()
    mask = torch.empty(-(-count // 8) * 8, dtype=torch.bool, device=codes.device)
    mask[count:] = False
    torch.ge(codes, first, out=mask[:count])
    (hit,) = mask.view(torch.int64).nonzero(as_tuple=True)
    cand = (hit[:, None] * 8 + torch.arange(8, device=codes.device)).view(-1)
    return torch.masked_select(cand, torch.index_select(mask, 0, cand))


def gaussian32_(out: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill the contiguous float32 ``out`` with N(0, sigma^2) draws by Box–Muller in float32; return ``out``.

    Per pair of coordinates, one 64-bit word (:func:`random_bits64_`) gives two independent 24-bit
    integers ``k1, k2`` (the top 24 bits of each 32-bit half): ``u1 = 1 - k1 2^-24`` in
    ``[2^-24, 1]``, ``theta = 2 pi k2 2^-24``, and ``(r cos theta, r sin theta)`` with
    ``r = sigma sqrt(-2 ln u1)`` (``log1p(-k1 2^-24)``: exact argument, no cancellation near 1).
    The integers and ``u1`` are exact in float32; the transcendental functions round.

    **Tail.** The top ``2^14`` values of ``k1`` are the event ``u1 <= 2^-10`` (probability
    ``2^-10``); there ``u1`` is redrawn as ``(1 - v) 2^-10`` from a float64 uniform ``v`` (53
    bits) and ``r`` computed in float64, so ``u1`` is uniform on ``(0, 2^-10]`` at resolution
    ``2^-63`` and the radius reaches ``sqrt(2 ln 2^63)`` (9.3 sigma): the mass cut is ``2^-63``
    per pair, against ``2^-24`` for 24-bit uniforms alone. Buffers are processed in chunks of
    ``2^20`` values (an odd last value takes one coordinate of a fresh pair).
    """
    if _check_buffer(out).dtype != torch.float32:
        raise TypeError(
            f"out must be float32 for gaussian32_, got {out.dtype} (Gaussian.sample_ takes any float dtype)"
        )
    return _box_muller32_(out, check_sigma(sigma), generator)


def _box_muller32_(out: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """:func:`gaussian32_` on a checked contiguous float32 ``out`` and a checked ``sigma``."""
    flat = out.view(-1)
    two_s2 = 2.0 * sigma * sigma
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK]
        count = chunk.numel()
        half = (count + 1) // 2
        work = chunk if count % 2 == 0 else torch.empty(2 * half, dtype=torch.float32, device=flat.device)
        words = random_bits64_(torch.empty(half, dtype=torch.int64, device=flat.device), generator)
        k = words.view(torch.int32).bitwise_right_shift_(32 - _U_BITS).bitwise_and_((1 << _U_BITS) - 1)
        tail = positions_at_least(k[:half], (1 << _U_BITS) - (1 << _TAIL_BITS))
        work.copy_(k)  # integers below 2^24: exact in float32
        r, theta = work[:half], work[half:]
        r.mul_(-(2.0**-_U_BITS)).log1p_().mul_(-two_s2).sqrt_()
        if tail.numel():
            v = torch.empty(tail.numel(), dtype=torch.float64, device=flat.device).uniform_(generator=generator)
            fine = v.neg_().add_(1.0).mul_(2.0 ** -(_U_BITS - _TAIL_BITS)).log_().mul_(-two_s2).sqrt_()
            r.index_copy_(0, tail, fine.to(torch.float32))
        theta.mul_(_TWO_PI_ULP)
        cos = torch.cos(theta)
        theta.sin_().mul_(r)
        r.mul_(cos)
        if work is not chunk:
            chunk.copy_(work[:count])
    return out


def _draw64_(out: torch.Tensor, fill: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Fill ``out`` with float64 draws ``fill(tmp)``, rounded once to ``out``'s dtype, in chunks."""
    if out.dtype == torch.float64:
        flat = out.view(-1)
        for start in range(0, flat.numel(), _CHUNK):
            fill(flat[start : start + _CHUNK])
        return out
    flat = out.view(-1)
    tmp = torch.empty(min(_CHUNK, flat.numel()), dtype=torch.float64, device=out.device)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK]
        chunk.copy_(fill(tmp[: chunk.numel()]))
    return out


@dataclass(frozen=True)
class Noise(ABC):
    """A zero-mean i.i.d. noise with per-coordinate standard deviation ``sigma``.

    ``name`` is the registry name (see :data:`NOISES`), ``norms`` the threat norms it certifies.
    """

    sigma: float
    name: ClassVar[str]
    norms: ClassVar[tuple[str, ...]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_sigma(self.sigma))

    @property
    @abstractmethod
    def scale(self) -> float:
        """The family's own scale parameter, derived from ``sigma``."""

    @abstractmethod
    def sample_(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill ``out`` in place with i.i.d. draws of this noise from ``generator``; return ``out``."""

    def check_norm(self, norm: str) -> str:
        """Return ``norm`` if this noise certifies it, else raise ``ValueError``."""
        if not isinstance(norm, str) or norm not in _radii.NORMS:
            raise ValueError(f"norm must be one of {', '.join(_radii.NORMS)}, got {norm!r}")
        if norm not in self.norms:
            raise ValueError(
                f"norm {norm!r} is not certified by {self.name} noise (supported: {', '.join(self.norms)})"
            )
        return norm

    def radius(
        self, p_lower: ArrayLike, *, norm: str, dim: int | None = None, p_upper_b: ArrayLike | None = None
    ) -> Any:
        """Certified ``norm`` radius for ``pA >= p_lower`` (see :func:`smoothcert.core.radii.radius`)."""
        return _radii.radius(
            self.name, p_lower, sigma=self.sigma, norm=self.check_norm(norm), dim=dim, p_upper_b=p_upper_b
        )

    def threshold(self, radius: ArrayLike, *, norm: str, dim: int | None = None) -> Any:
        """Smallest pA certifying ``radius`` (see :func:`smoothcert.core.radii.threshold`)."""
        return _radii.threshold(self.name, radius, sigma=self.sigma, norm=self.check_norm(norm), dim=dim)

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., "sigma": ...}`` for logs and sidecars; ``make_noise(**d)`` rebuilds it."""
        return {"name": self.name, "sigma": self.sigma}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma!r})"


@dataclass(frozen=True, repr=False)
class Gaussian(Noise):
    """N(0, sigma^2 I). ``scale = sigma``; ``draws`` picks the float-mode sampler (:data:`FLOAT_DRAWS`).

    Certifies l2 with ``R = sigma Phi^-1(pA)`` (Cohen et al. 2019, Thm 1), l1 with the same
    value (``||d||_2 <= ||d||_1``) and linf with ``R / sqrt(d)``.
    """

    name: ClassVar[str] = "gaussian"
    norms: ClassVar[tuple[str, ...]] = _radii.supported_norms("gaussian")
    draws: str = field(default="float32", kw_only=True)

    @property
    def scale(self) -> float:
        return self.sigma

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float_draws(self.draws, "draws")

    def sample_(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """N(0, sigma^2) draws: :func:`gaussian32_` into a float32 buffer (``draws="float32"``, the
        default), else ``normal_(0.0, sigma)`` in float64 (chunks of ``2^20``) rounded to ``out``'s
        dtype (``draws="float64"``, 0.2's stream, and every float64 buffer).

        Both cut at most ``2^-53`` of each pair's mass from the tails (module docstring).
        """
        out = _check_buffer(out)
        sigma = self.sigma
        if self.draws == "float32" and out.dtype == torch.float32:
            return _box_muller32_(out, sigma, generator)
        return _draw64_(out, lambda t: t.normal_(0.0, sigma, generator=generator))

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`Noise.to_dict`, with ``"draws"`` when it is not the default."""
        d = super().to_dict()
        return d if self.draws == "float32" else {**d, "draws": self.draws}

    def __repr__(self) -> str:
        extra = "" if self.draws == "float32" else f", draws={self.draws!r}"
        return f"Gaussian(sigma={self.sigma!r}{extra})"


@dataclass(frozen=True, repr=False)
class Laplace(Noise):
    """i.i.d. Laplace(0, b) coordinates, density ``exp(-|x|/b) / (2b)``, ``b = sigma / sqrt(2)``.

    Certifies l1 with ``R = -b ln(2 (1 - pA))`` (Teng, Lee & Yuan, ICLR 2020).
    """

    name: ClassVar[str] = "laplace"
    norms: ClassVar[tuple[str, ...]] = _radii.supported_norms("laplace")

    @property
    def scale(self) -> float:
        return _radii.laplace_scale(self.sigma)

    def sample_(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Inverse CDF in float64: ``v ~ U[-1, 1)`` (one float64 ``uniform_`` per chunk of ``2^20``),
        ``x = -b sign(v) ln(1 - |v|)``, rounded to ``out``'s dtype.

        ``|x| <= 53 b ln 2 ~ 36.7 b``: the tail beyond has mass ``<= 2^-52`` (float32 uniforms,
        used before, cut ``2^-24``).
        """
        b = self.scale

        def fill(t: torch.Tensor) -> torch.Tensor:
            return _laplace_from_uniform_(t.uniform_(-1.0, 1.0, generator=generator), b)

        return _draw64_(_check_buffer(out), fill)


@dataclass(frozen=True, repr=False)
class Uniform(Noise):
    """Uniform on the cube [-lam, lam]^d, ``lam = sqrt(3) sigma``.

    Certifies l1 with ``R = 2 lam (pA - 1/2)`` and linf with ``R = 2 lam (1 - (3/2 - pA)^(1/d))``
    (Yang et al., ICML 2020).
    """

    name: ClassVar[str] = "uniform"
    norms: ClassVar[tuple[str, ...]] = _radii.supported_norms("uniform")

    @property
    def scale(self) -> float:
        return _radii.uniform_half_width(self.sigma)

    def sample_(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``uniform_(-lam, lam)`` drawn in float64 (chunks of ``2^20``), rounded to ``out``'s dtype."""
        lam = self.scale
        return _draw64_(_check_buffer(out), lambda t: t.uniform_(-lam, lam, generator=generator))


_CLASSES: dict[str, type[Noise]] = {cls.name: cls for cls in (Gaussian, Laplace, Uniform)}
NOISES: tuple[str, ...] = tuple(_CLASSES)
assert NOISES == _radii.NOISES


def make_noise(name: str, sigma: float, *, draws: str | None = None) -> Noise:
    """The noise registered as ``name`` (one of :data:`NOISES`) with per-coordinate std ``sigma``.

    ``draws`` (Gaussian only; :data:`FLOAT_DRAWS`) picks the Gaussian's float-mode sampler; the
    other noises always draw in float64 and accept only ``None`` or ``"float64"``.
    """
    if not isinstance(name, str) or name not in _CLASSES:
        raise ValueError(f"noise must be one of {', '.join(NOISES)}, got {name!r}")
    if name == "gaussian":
        return Gaussian(sigma, draws="float32" if draws is None else draws)
    if draws is not None and check_float_draws(draws, "draws") != "float64":
        raise ValueError(f"draws={draws!r} applies to gaussian noise only ({name} noise draws in float64)")
    return _CLASSES[name](sigma)
