"""The paper's last rows through the command line: ``certify --lift`` (App. G), ``certify --ensemble``
(Horvath et al. 2022), ``smoothcert baseline`` (App. H.1) and ``visualize --resolutions`` (Figure 12)."""

from __future__ import annotations

import json

import pytest
from synthdata import write_idx_dataset

from smoothcert.cli.main import main
from smoothcert.io.logs import BASELINE_COLUMNS, CERTIFY_COLUMNS, read_rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    data = write_idx_dataset(root / "fmnist", n_train=96, n_test=30)
    models = []
    for seed in (0, 1):
        out = root / f"model{seed}"
        args = [
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(data),
            "--arch",
            "small_cnn",
            "--sigma",
            "0.25",
        ]
        assert main([*args, "--epochs", "1", "--batch", "32", "--seed", str(seed), "--out", str(out), "--quiet"]) == 0
        models.append(out)
    return root, data, models


def _certify(data, model, out, *extra):
    args = ["certify", "--model", str(model), "--data-dir", str(data), "--out", str(out)]
    return main([*args, "--n0", "20", "--n", "200", "--alpha", "0.01", "--max", "5", "--quiet", *extra])


def test_lift_certifies_twice_the_radius_at_twice_the_resolution(setup, tmp_path):
    # the lifted base classifier is f(AvgPool_2(x)) and AvgPool_2(upsample_2(x)) = x exactly, with noise
    # 2 sigma per pixel pooling to sigma: with the same seed the counts equal the plain run's exactly only
    # in law, so compare labels where both certify and radii within the sampling error of n = 200
    # float mode explicitly (--float-noise): this test is about the lift, the sound-mode one is below
    _, data, models = setup
    assert _certify(data, models[0], tmp_path / "plain.tsv", "--float-noise") == 0
    assert _certify(data, models[0], tmp_path / "lift.tsv", "--lift", "2", "--float-noise") == 0
    ident = json.loads((tmp_path / "lift.tsv.json").read_text())["identity"]
    assert ident["lift"] == 2 and ident["lifted_sigma"] == pytest.approx(0.5) and ident["sound"] is False
    plain = read_rows(tmp_path / "plain.tsv", CERTIFY_COLUMNS)
    lifted = read_rows(tmp_path / "lift.tsv", CERTIFY_COLUMNS)
    assert [r[0] for r in plain] == [r[0] for r in lifted]
    # the largest radius n = 200 at alpha 0.01 can give: sigma * Phi^-1(0.01 ** (1/200)); lifted is twice that
    from smoothcert import stats

    r_max = stats.max_radius(200, 0.01, sigma=0.25)
    assert max(float(r[3]) for r in lifted) <= 2 * r_max + 1e-9
    assert any(float(r[3]) > r_max for r in lifted) or all(float(r[3]) == 0 for r in plain)


def test_lift_certifies_in_sound_mode_by_default(setup, tmp_path):
    _, data, models = setup
    assert _certify(data, models[0], tmp_path / "lift.tsv", "--lift", "2") == 0
    ident = json.loads((tmp_path / "lift.tsv.json").read_text())["identity"]
    assert ident["sound"] is True and ident["grid"] == 255 and ident["lift"] == 2
    assert ident["lifted_sigma"] == pytest.approx(0.5)
    from smoothcert import stats

    lifted = read_rows(tmp_path / "lift.tsv", CERTIFY_COLUMNS)
    assert max(float(r[3]) for r in lifted) <= 2 * stats.max_radius(200, 0.01, sigma=0.25) + 1e-9


def test_lift_never_runs_float_mode_under_a_sound_identity(setup, tmp_path, capsys, monkeypatch):
    """A lift that drops sound mode is refused in one line naming --float-noise, before writing.

    Planted: a lift() that returns a float-mode classifier (as 0.2's did)."""
    import smoothcert.smoothing.lifting as lifting
    from smoothcert.smoothing.classifier import SmoothedClassifier

    real = lifting.lift

    def float_lift(smoothed, *, factor):
        out = real(smoothed, factor=factor)
        if not out.sound:
            return out
        return SmoothedClassifier(
            out.base_classifier, out.num_classes, out.sigma, input_shape=out.input_shape, sound=False
        )

    monkeypatch.setattr(lifting, "lift", float_lift)
    _, data, models = setup
    assert _certify(data, models[0], tmp_path / "x.tsv", "--lift", "2") == 2
    err = capsys.readouterr().err
    assert "does not carry sound mode" in err and "--float-noise" in err and err.count("\n") == 1
    assert not (tmp_path / "x.tsv").exists() and not (tmp_path / "x.tsv.json").exists()


def test_ensemble_records_every_member_and_consensus_one_is_refused(setup, tmp_path, capsys):
    _, data, models = setup
    noisy = ("--sigma", "2")  # far above the training noise, so that votes split and the counts tell models apart
    assert _certify(data, models[0], tmp_path / "single.tsv", *noisy) == 0
    # consensus K = 1: the first member alone would decide every draw (the rows would be the single
    # model's, 0.2 wrote them) while the identity names the whole ensemble: refused in one line
    k1 = ("--ensemble", str(models[1]), "--consensus", "1", *noisy)
    assert _certify(data, models[0], tmp_path / "k1.tsv", *k1) == 2
    err = capsys.readouterr().err
    assert "consensus=1" in err and "alone" in err and err.count("\n") == 1
    assert not (tmp_path / "k1.tsv").exists() and not (tmp_path / "k1.tsv.json").exists()
    assert (
        _certify(data, models[0], tmp_path / "k2.tsv", "--ensemble", str(models[1]), "--consensus", "2", *noisy) == 0
    )  # control
    assert _certify(data, models[0], tmp_path / "full.tsv", "--ensemble", str(models[1]), *noisy) == 0
    ident = json.loads((tmp_path / "full.tsv.json").read_text())["identity"]
    assert len(ident["ensemble_sha256"]) == 1 and ident["combine"] == "softmax"
    # positive control: the two-member average is a different base classifier (counts differ somewhere)
    counts = [r[6] for r in read_rows(tmp_path / "full.tsv", CERTIFY_COLUMNS)]
    assert counts != [r[6] for r in read_rows(tmp_path / "single.tsv", CERTIFY_COLUMNS)]


def test_ensemble_flags_without_members_are_refused(setup, tmp_path, capsys):
    _, data, models = setup
    assert _certify(data, models[0], tmp_path / "x.tsv", "--consensus", "2") == 2
    assert "apply to an ensemble" in capsys.readouterr().err


def test_baseline_writes_a_certify_style_log_that_analyze_reads(setup, tmp_path, capsys):
    _, data, _ = setup
    out = tmp_path / "lip.tsv"
    args = ["baseline", "--data-dir", str(data), "--out", str(out), "--epochs", "1", "--hidden", "32,32"]
    assert main(args) == 0
    rows = read_rows(out, BASELINE_COLUMNS)
    assert len(rows) == 30 and all(float(r[3]) >= 0 for r in rows)
    assert main(args) == 2  # an existing log is never replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["analyze", str(out), "--radii", "0,0.1"]) == 0
    assert "lipschitz" in capsys.readouterr().out


def test_visualize_resolutions_draws_figure_12(setup, tmp_path, capsys):
    _, data, _ = setup
    out = tmp_path / "res.png"
    base = ["visualize", "--dataset", "fashion-mnist", "--data-dir", str(data), "--sigmas", "0.5"]
    assert main([*base, "--resolutions", "28,56", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert main([*base, "--resolutions", "28,50", "--out", str(tmp_path / "bad.png")]) == 2
    assert "multiple" in capsys.readouterr().err
