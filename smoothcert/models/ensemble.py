"""Ensembles of base classifiers for smoothing, with K-consensus (Horváth et al., ICLR 2022).

Horváth, Müller, Fischer & Vechev, "Boosting Randomized Smoothing with Variance Reduced Classifiers"
(ICLR 2022): averaging ``m`` independently trained base models lowers the variance of the
base classifier's output under noise, which raises ``p_A`` and with it the certified radius.

:class:`Ensemble` combines the members by the mean of their softmax outputs (``combine="softmax"``,
returned as its logarithm, so that ``argmax`` and cross-entropy behave as for one model) or by the
mean of their logits (``combine="logits"``).

**K-consensus** (the paper's speed-up for ensembles). With ``consensus=K`` the members are run in order;
for the inputs of a batch on which the first ``K`` members agree on the arg-max class, the remaining
``m - K`` members are not run, and the output is the combination of those ``K`` members (every one
of them ranks the agreed class first, hence so does their mean; with ``argmax`` returning the first
maximum, ties resolve to the agreed class too). The other inputs get the full ensemble.

*Why certificates stay valid.* Randomized smoothing certifies ``g(x) = argmax_c P(h(x + eps) = c)``
for **any** deterministic base classifier ``h`` (Cohen et al. 2019, Thm. 1 assumes nothing about
``h``). With consensus the base classifier is ``h(z) = c`` when the first ``K`` members all say
``c`` at ``z``, and the full ensemble's arg-max otherwise: a different function from the full
ensemble's, but a function of ``z`` alone (no randomness, no other sample enters its value), so
CERTIFY's guarantee holds for the ``g`` it defines. What changes is only which smoothed
classifier is certified, not whether the certificate is sound.

*Batch independence, as far as floating point allows.* The later members run on a data-dependent
sub-batch (the rows without consensus), so their outputs for one input come from a forward pass
whose size depends on the other inputs; like any change of pass size this can move the logits at
the level of float rounding (about ``5e-7`` on a CPU) and, at an exact near-tie, an arg-max. The
same holds for every base model run in passes of varying size; the members must be in eval mode
(the smoothed model sees to it for the ensemble and its members), since BatchNorm in training mode
or Dropout would make outputs depend on the batch outright.

The counters :attr:`Ensemble.member_evaluations` (one per member per input it ran on) and
:attr:`Ensemble.member_evaluations_saved` (members skipped by consensus) measure the saving;
:meth:`Ensemble.reset_counters` zeroes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from smoothcert.core.errors import ConfigError

__all__ = ["COMBINES", "Ensemble"]

COMBINES = ("softmax", "logits")


class Ensemble(nn.Module):
    """The average of ``members`` (each maps ``(B, ...)`` to logits ``(B, K)``), optionally with K-consensus.

    Args:
        members: the base models, in the order consensus evaluates them (at least one).
        combine: ``"softmax"`` (log of the mean probability; the default) or ``"logits"`` (mean logits).
        consensus: ``None`` (always run every member) or ``K`` in ``1..len(members)``: skip the other
            members for inputs on which the first ``K`` agree.
    """

    def __init__(self, members: Sequence[nn.Module], *, combine: str = "softmax", consensus: int | None = None) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ConfigError("members must hold at least one model, got none")
        for i, m in enumerate(members):
            if not isinstance(m, nn.Module):
                raise TypeError(f"members[{i}] must be a torch.nn.Module, got {type(m).__name__}")
        if combine not in COMBINES:
            raise ConfigError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}")
        if consensus is not None and (
            isinstance(consensus, bool) or not isinstance(consensus, int) or not 1 <= consensus <= len(members)
        ):
            raise ConfigError(f"consensus must be None or an integer in 1..{len(members)}, got {consensus!r}")
        self.members = nn.ModuleList(members)
        self.combine = combine
        self.consensus = consensus
        self.member_evaluations = 0
        self.member_evaluations_saved = 0

    def reset_counters(self) -> None:
        """Set both evaluation counters to zero."""
        self.member_evaluations = 0
        self.member_evaluations_saved = 0

    def combine_outputs(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Combine member outputs ``(B, K)`` (any number of them) as this ensemble's ``combine`` says."""
        stacked = torch.stack([o.float() for o in outputs])  # (members, B, K)
        if self.combine == "logits":
            return stacked.mean(0)
        # log of the mean probability, computed stably: logsumexp of log-softmaxes minus log(count)
        log_p = F.log_softmax(stacked, dim=-1)
        return torch.logsumexp(log_p, dim=0) - torch.log(torch.tensor(float(len(outputs)), device=log_p.device))

    @staticmethod
    def agree(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """K-consensus's rule: the rows ``(B,)`` on which every output ``(B, K)`` ranks the same class first."""
        votes = torch.stack([o.argmax(dim=1) for o in outputs])  # (len(outputs), B)
        return (votes == votes[0]).all(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = len(self.members)
        b = x.shape[0]
        k = self.consensus
        if k is None or k == m:
            # K = m: agreement of all members changes nothing (the output is the full combination either way)
            outs = [member(x) for member in self.members]
            self.member_evaluations += m * b
            return self.combine_outputs(outs)
        first = [self.members[i](x) for i in range(k)]
        self.member_evaluations += k * b
        agree = self.agree(first)
        result = self.combine_outputs(first)
        rest = torch.nonzero(~agree).flatten()
        self.member_evaluations_saved += (m - k) * (b - len(rest))
        if len(rest) > 0:
            xr = x[rest]
            later = [self.members[i](xr) for i in range(k, m)]
            self.member_evaluations += (m - k) * len(rest)
            full = self.combine_outputs([o[rest] for o in first] + later)
            result = result.index_copy(0, rest, full.to(result.dtype))
        return result
