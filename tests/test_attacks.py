"""Attacks against the linear oracle (paper App. B, J.3; docs/statistics.md §8, §10) and end to end on a small trained model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from oracles import LinearBinary
from synthdata import write_idx_dataset

from smoothcert.cli.main import main
from smoothcert.evaluation.analysis import empirical_robust_accuracy
from smoothcert.evaluation.attacks import deepfool, smoothed_pgd

X = torch.tensor([[1.0, 0.0], [0.2, 0.1], [-0.5, 0.5], [0.6, 0.3]])


def _setup():
    model = LinearBinary(torch.tensor([3.0, -4.0]), 0.5)
    y = torch.tensor([model.label(x) for x in X])
    d = torch.tensor([model.distance(x) for x in X])
    return model, y, d


def test_pgd_flips_just_beyond_the_true_distance():
    # g = f for a linear classifier, so a flip of f at x + delta is a flip of g
    model, y, d = _setup()
    adv = smoothed_pgd(
        model,
        X,
        y,
        sigma=0.5,
        epsilon=1.05 * d,
        steps=10,
        step_size=0.6 * d,
        num_noise=16,
        generator=torch.Generator().manual_seed(0),
    )
    assert [model.label(a) for a in adv] == [1 - int(v) for v in y]
    assert torch.all((adv - X).norm(dim=1) <= 1.05 * d)


def test_pgd_never_succeeds_inside_the_certified_radius():
    model, y, d = _setup()
    for frac in (0.5, 0.9, 0.99):
        adv = smoothed_pgd(
            model,
            X,
            y,
            sigma=0.5,
            epsilon=frac * d,
            steps=15,
            step_size=0.5 * d,
            num_noise=8,
            random_start=True,
            generator=torch.Generator().manual_seed(1),
        )
        assert [model.label(a) for a in adv] == y.tolist()
        assert torch.all((adv - X).norm(dim=1) <= frac * d)


def test_pgd_is_seeded_and_batched():
    model, y, _ = _setup()
    kw = dict(sigma=0.5, epsilon=0.3, steps=3, step_size=0.1, num_noise=4, random_start=True)
    a = smoothed_pgd(model, X, y, generator=torch.Generator().manual_seed(5), **kw)
    b = smoothed_pgd(model, X, y, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b) and a.shape == X.shape
    with pytest.raises(ValueError, match="epsilon must be finite and >= 0"):
        smoothed_pgd(model, X, y, **{**kw, "epsilon": -1.0})


def test_deepfool_minimal_norm_equals_true_distance():
    model, y, d = _setup()
    _, norms, ok = deepfool(model, X, y, overshoot=0.0, bounds=(-10.0, 10.0))
    assert ok.all()
    np.testing.assert_allclose(norms, d.numpy(), rtol=1e-3)  # DeepFool is exact on a linear model
    _, norms2, _ = deepfool(model, X, y, overshoot=0.02, bounds=(-10.0, 10.0))
    np.testing.assert_allclose(norms2, 1.02 * d.numpy(), rtol=2e-3)


def test_deepfool_leaves_batch_norm_statistics_and_train_mode_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model.train()
    y = model.eval()(X).argmax(1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deepfool(model, X, y, bounds=(-10.0, 10.0))
    assert model.training, "the caller's train mode is restored"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    model(X)  # positive control: a forward pass in train mode does change the statistics
    assert not torch.equal(model[1].running_mean, before["1.running_mean"])


def test_attack_summary_groups_by_the_radii_asked_for(tmp_path):
    from smoothcert.io.logs import ATTACK_COLUMNS
    from smoothcert.runs.attack import summarize_attack

    # two examples certified at 0.2 and 0.4, each attacked at absolute radii 0.5 and 1.0
    rows = [
        (0, 1, 0.2, 0.5, 0.5, 1, 0),
        (0, 1, 0.2, 1.0, 1.0, 2, 1),
        (1, 3, 0.4, 0.5, 0.5, 3, 0),
        (1, 3, 0.4, 1.0, 1.0, 3, 0),
    ]
    log = tmp_path / "attack.tsv"
    log.write_text(
        "\t".join(ATTACK_COLUMNS) + "\n" + "".join("\t".join(map(str, (*r, f"{r[3] / r[2]:.6g}"))) + "\n" for r in rows)
    )
    by_radius = summarize_attack(log, by="attack_radius")
    assert by_radius["success_rate"] == {"0.5": 0.0, "1": 0.5} and by_radius["attacks"] == {"0.5": 2, "1": 2}
    by_multiple = summarize_attack(log, by="multiple")  # the same rows by ratio: 1.25, 2.5, 2.5, 5
    assert by_multiple["success_rate"] == {"1.25": 0.0, "2.5": 0.0, "5": 1.0}


def test_empirical_robust_accuracy():
    acc = empirical_robust_accuracy(np.array([0.0, 0.5, 1.0, np.inf]), [0.0, 0.4, 0.75, 2.0])
    assert acc.tolist() == [0.75, 0.75, 0.5, 0.25]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("atk")
    data = write_idx_dataset(root / "data", n_train=200, n_test=30, seed=3)
    common = [
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(data),
        "--arch",
        "small_cnn",
        "--epochs",
        "6",
        "--batch",
        "16",
        "--lr",
        "0.05",
        "--lr-step",
        "5",
        "--quiet",
    ]
    assert main(["train", *common, "--sigma", "0.25", "--out", str(root / "m")]) == 0
    assert main(["train", *common, "--sigma", "0", "--out", str(root / "plain")]) == 0
    assert (
        main(
            [
                "certify",
                "--model",
                str(root / "m"),
                "--data-dir",
                str(data),
                "--n0",
                "50",
                "--n",
                "400",
                "--alpha",
                "0.001",
                "--batch",
                "400",
                "--max",
                "12",
                "--out",
                str(root / "c.tsv"),
                "--quiet",
            ]
        )
        == 0
    )
    return root, data


@pytest.mark.slow
def test_no_attack_succeeds_below_the_certified_radius(trained):
    """Monte Carlo caveat: each certificate holds with probability >= 1 - alpha and each PREDICT
    judgement errs with probability <= alpha (alpha = 0.001 here), so a success below R is
    possible in principle, with probability of order 2 * alpha per attack; none is expected.

    Positive control: the same attack, judged the same way, does succeed well beyond R, so a
    PGD that returned its input unchanged (or a judge that never saw a flip) would fail here."""
    root, data = trained
    rows = [ln.split("\t") for ln in (root / "c.tsv").read_text().splitlines()[1:]]
    certified = [r for r in rows if r[4] == "1" and float(r[3]) > 0]
    assert len(certified) >= 3, "the small model certifies some examples"
    out = root / "attack.tsv"
    assert (
        main(
            [
                "attack",
                "--model",
                str(root / "m"),
                "--certify-log",
                str(root / "c.tsv"),
                "--data-dir",
                str(data),
                "--multiples",
                "0.5,0.9,3,10",
                "--steps",
                "8",
                "--num-noise",
                "8",
                "--n",
                "400",
                "--alpha",
                "0.001",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    lines = [ln.split("\t") for ln in out.read_text().splitlines()]
    assert lines[0] == ["idx", "label", "radius", "attack_radius", "delta_norm", "predict", "success", "multiple"]
    for r in lines[1:]:
        assert float(r[4]) <= float(r[3]) * (1 + 1e-6)
        if float(r[7]) < 1:
            assert r[6] == "0", f"attack succeeded inside the certified radius: {r}"
    summary = json.loads(Path(str(out) + ".summary.json").read_text())
    rates = summary["success_rate"]
    assert set(rates) == {"0.5", "0.9", "3", "10"} and rates["0.5"] == rates["0.9"] == 0.0
    assert rates["10"] >= 0.8, f"attacks at 10x the certified radius should succeed: {summary}"
    # --radii: the summary is grouped by the absolute radii asked for, not by per-example ratios
    radii_out = root / "attack_radii.tsv"
    common = ["attack", "--model", str(root / "m"), "--certify-log", str(root / "c.tsv"), "--data-dir", str(data)]
    assert (
        main([*common, "--radii", "0.01,5", "--steps", "4", "--num-noise", "4", "--max", "3", "--out", str(radii_out)])
        == 0
    )
    by_radius = json.loads(Path(str(radii_out) + ".summary.json").read_text())
    assert by_radius["grouped_by"] == "attack_radius" and by_radius["attacks"] == {"0.01": 3, "5": 3}


@pytest.mark.slow
def test_deepfool_curve_beside_certified_curves(trained, tmp_path):
    root, data = trained
    df = tmp_path / "deepfool.tsv"
    assert (
        main(
            [
                "attack",
                "--deepfool",
                "--model",
                str(root / "plain"),
                "--data-dir",
                str(data),
                "--max",
                "20",
                "--out",
                str(df),
            ]
        )
        == 0
    )
    rows = [ln.split("\t") for ln in df.read_text().splitlines()]
    assert rows[0] == ["idx", "label", "predict", "correct", "deepfool_norm", "success"] and len(rows) == 21
    assert all(float(r[4]) == 0.0 for r in rows[1:] if r[3] == "0")  # misclassified: norm 0
    plot = tmp_path / "fig6.png"
    assert main(["analyze", str(root / "c.tsv"), "--empirical", str(df), "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
