"""Ensembles of base models and K-consensus (Horváth et al., ICLR 2022). Exact, deterministic checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothcert.core.errors import ConfigError
from smoothcert.models.ensemble import Ensemble
from smoothcert.smoothing.classifier import SmoothedClassifier


class Fixed(nn.Module):
    """Logits that depend only on the first input coordinate's sign: class ``pos`` if > 0, else ``neg``."""

    def __init__(self, pos: int, neg: int, classes: int = 3) -> None:
        super().__init__()
        self.pos, self.neg, self.classes = pos, neg, classes
        self.calls = 0  # inputs seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += x.shape[0]
        cls = torch.where(x.flatten(1)[:, 0] > 0, self.pos, self.neg)
        return 4.0 * nn.functional.one_hot(cls, self.classes).float()


def _nets(m: int, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Flatten(), nn.Linear(6, 4)) for _ in range(m)]


def test_ensemble_of_one_equals_the_member():
    (net,) = _nets(1)
    x = torch.randn(7, 6)
    torch.testing.assert_close(Ensemble([net], combine="logits")(x), net(x), rtol=0, atol=0)
    # softmax combine returns log-probabilities: log_softmax of the member, to float rounding
    torch.testing.assert_close(Ensemble([net])(x), torch.log_softmax(net(x), 1), rtol=0, atol=1e-6)


def test_combinations_are_the_means():
    nets = _nets(3)
    x = torch.randn(5, 6)
    outs = torch.stack([n(x) for n in nets])
    torch.testing.assert_close(Ensemble(nets, combine="logits")(x), outs.mean(0), rtol=1e-6, atol=1e-6)
    p = torch.softmax(outs, -1).mean(0)
    torch.testing.assert_close(Ensemble(nets)(x).exp(), p, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("combine", ["softmax", "logits"])
def test_consensus_k_equals_m_is_the_full_ensemble(combine):
    nets = _nets(4)
    x = torch.randn(9, 6)
    full = Ensemble(nets, combine=combine)(x)
    torch.testing.assert_close(Ensemble(nets, combine=combine, consensus=4)(x), full, rtol=0, atol=0)


def test_consensus_output_is_the_agreed_class_and_the_full_ensemble_elsewhere():
    nets = _nets(5, seed=1)
    x = torch.randn(200, 6)
    ens = Ensemble(nets, consensus=2)
    out = ens(x)
    votes = torch.stack([n(x).argmax(1) for n in nets])
    agree = votes[0] == votes[1]
    assert 0 < int(agree.sum()) < 200  # both branches are exercised
    assert torch.equal(out.argmax(1)[agree], votes[0][agree])
    torch.testing.assert_close(out[~agree], Ensemble(nets)(x)[~agree], rtol=0, atol=1e-6)


def test_consensus_counts_the_saved_member_evaluations():
    """Members 0, 1 agree when x0 > 0 (class 0) and disagree otherwise; member 2 runs only on disagreement."""
    members = [Fixed(0, 1), Fixed(0, 2), Fixed(2, 2)]
    ens = Ensemble(members, consensus=2)
    x = torch.zeros(10, 2)
    x[:6, 0] = 1.0  # 6 agreeing inputs, 4 disagreeing
    out = ens(x)
    assert [m.calls for m in members] == [10, 10, 4]
    assert ens.member_evaluations == 24 and ens.member_evaluations_saved == 6
    assert out.argmax(1).tolist() == [0] * 6 + [2] * 4  # full ensemble on the rest: (1, 2, 2) -> class 2
    ens.reset_counters()
    assert ens.member_evaluations == ens.member_evaluations_saved == 0


def test_counter_check_catches_a_planted_miscount():
    """Positive control: a consensus that never skips (K = m) runs member 2 on all 10 inputs, saving nothing."""
    members = [Fixed(0, 1), Fixed(0, 2), Fixed(2, 2)]
    ens = Ensemble(members, consensus=3)
    x = torch.zeros(10, 2)
    x[:6, 0] = 1.0
    ens(x)
    assert members[2].calls == 10 and ens.member_evaluations_saved == 0 and ens.member_evaluations == 30


def test_consensus_classifier_is_a_function_of_each_input_alone():
    """The base classifier with consensus must not depend on the batch (what keeps certificates valid):
    each row's output is the same whether it is classified in a batch or alone, and smoothing it with a
    fixed seed gives the same counts whatever the forward-pass size."""
    nets = _nets(3, seed=2)
    ens = Ensemble(nets, consensus=2)
    x = torch.randn(40, 6)
    batched = ens(x)
    alone = torch.cat([ens(x[i : i + 1]) for i in range(40)])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-6)
    assert torch.equal(batched.argmax(1), alone.argmax(1))
    counts = [
        SmoothedClassifier(ens, 4, 0.5, pass_size=p, sound=False).sample_counts(
            x[:2], n=300, batch_size=100, generator=torch.Generator().manual_seed(5)
        )
        for p in (100, 7)
    ]
    assert (counts[0] == counts[1]).all() and counts[0].sum() == 600


def test_ensemble_rejects_bad_settings():
    with pytest.raises(ConfigError, match="at least one"):
        Ensemble([])
    with pytest.raises(ConfigError, match="combine"):
        Ensemble(_nets(2), combine="median")
    with pytest.raises(ConfigError, match="consensus"):
        Ensemble(_nets(2), consensus=3)
