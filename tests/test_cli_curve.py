"""``smoothcert certify --curve``: its log, identity, resume, torchrun, analyze, and refusals.

A tiny small_cnn trained for one epoch on synthetic Fashion-MNIST-format files: its pA values
spread from below 1/2 to near 1, so the rows cover abstentions, grid decisions and ``n_max``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from synthdata import write_idx_dataset

from smoothcert.cli.main import main
from smoothcert.io.logs import CURVE_COLUMNS

REPO = Path(__file__).resolve().parents[1]
REASONS = {"cap", "decided", "tolerance", "n_max"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("curve")
    data = write_idx_dataset(root / "data", n_train=96, n_test=20)
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", str(data), "--arch", "small_cnn"]
    args += ["--sigma", "0.25", "--out", str(root / "m"), "--epochs", "1", "--batch", "32", "--seed", "5"]
    assert main([*args, "--train-limit", "64", "--lr", "0.05", "--quiet"]) == 0
    return root / "m", data


def _common(setup: tuple[Path, Path], *extra: str) -> list[str]:
    model, data = setup
    return [
        *("certify", "--curve", "--model", str(model), "--data-dir", str(data), "--n-max", "1500"),
        *("--batch", "400", "--max", "8", "--seed", "3", "--alpha", "0.01", "--quiet", *extra),
    ]


def _rows(path: Path) -> list[list[str]]:
    return [ln.split("\t") for ln in path.read_text().splitlines()]


def _no_time(rows: list[list[str]]) -> list[list[str]]:
    t = rows[0].index("time")
    return [r[:t] + r[t + 1 :] for r in rows]


def _cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smoothcert", *args], capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def curve_log(setup, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("log") / "curve.tsv"
    assert main([*_common(setup), "--out", str(out)]) == 0
    return out


def test_curve_log_rows_and_identity(curve_log):
    rows = _rows(curve_log)
    assert tuple(rows[0]) == CURVE_COLUMNS and len(rows) == 1 + 8
    ident = json.loads(Path(f"{curve_log}.json").read_text())["identity"]
    assert ident["curve"] is True and ident["sound"] is True and ident["grid"] == 255
    assert ident["curve_radii"] == [0.0625 * j for j in range(9)]  # 0 to 2 sigma = 0.5 in 8 steps
    assert ident["n_max"] == 1500 and "n" not in ident and ident["confseq"] == "union"
    col = {name: i for i, name in enumerate(rows[0])}
    grid = ident["curve_radii"]
    for r in rows[1:]:
        radius, predict, n_used = float(r[col["radius"]]), int(r[col["predict"]]), int(r[col["n_used"]])
        assert r[col["reason"]] in REASONS and n_used <= 1500 + 100 and n_used == int(r[col["n"]]) + 100
        decisions = r[col["decisions"]]
        assert len(decisions) == len(grid) and set(decisions) <= set("cnu")
        p_lower = float(r[col["p_lower"]])
        assert 0 <= p_lower <= float(r[col["p_upper"]]) <= 1
        # a grid radius is marked certified exactly where the certificate covers it
        for g, d in zip(grid, decisions, strict=True):
            covered = predict != -1 and (radius > g or g == 0)
            assert (d == "c") == covered, (r, g)
        assert (predict == -1) == (p_lower <= 0.5)
    reasons = {r[col["reason"]] for r in rows[1:]}
    assert len(reasons) >= 2, f"the fixture's pA values should stop for several reasons, got {reasons}"


def test_curve_rows_equal_the_api_with_each_examples_generator(setup, curve_log):
    """The CLI is a thin layer: each row is ``certify_curve`` on that example with its own generator."""
    from smoothcert.io.checkpoints import load_model
    from smoothcert.io.data import load_dataset
    from smoothcert.runs.certify import example_generator
    from smoothcert.smoothing.classifier import SmoothedClassifier

    model_dir, data = setup
    model, _ = load_model(model_dir, device=torch.device("cpu"))
    smoothed = SmoothedClassifier(model, 10, 0.25, device="cpu", input_shape=(1, 28, 28), sound=True)
    ds = load_dataset("fashion-mnist", "test", str(data))
    rows = _rows(curve_log)
    col = {name: i for i, name in enumerate(rows[0])}
    for r in rows[1:4]:
        i = int(r[col["idx"]])
        c = smoothed.certify_curve(
            ds[i][0], alpha=0.01, n_max=1500, batch_size=400, generator=example_generator(3, i, torch.device("cpu"))
        )
        assert (c.label, c.n_used, c.reason) == (int(r[col["predict"]]), int(r[col["n_used"]]), r[col["reason"]])
        assert c.radius == pytest.approx(float(r[col["radius"]]), rel=1e-12, abs=1e-15)


def test_analyze_reads_a_curve_log_and_names_the_mode(curve_log, capsys):
    assert main(["analyze", str(curve_log), "--radii", "0,0.25,0.5,0.75"]) == 0
    out = capsys.readouterr().out
    assert "curve" in out and "curve, cap 0.5" in out
    lines = out.splitlines()
    head = next(ln for ln in lines if "r = 0.75" in ln).split("|")
    line = next(ln for ln in lines if ln.startswith("| small_cnn")).split("|")
    assert line[head.index(" L2 r = 0.75 ")].strip() == "n/a", "r = 0.75 is above the cap: not meaningful"
    assert line[head.index(" L2 r = 0.5 ")].strip() != "n/a"  # control: the cap itself is meaningful
    assert main(["analyze", str(curve_log), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    first = summary[0] if isinstance(summary, list) else summary["logs"][0]
    assert first["mode"] == "curve" and first["radius_cap"] == 0.5


def test_curve_resumes_with_identical_rows_and_refuses_another_grid(setup, curve_log, tmp_path):
    part = tmp_path / "part.tsv"
    lines = curve_log.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:4]) + lines[4][:9])  # three rows, then a torn fourth line
    (tmp_path / "part.tsv.json").write_text(Path(f"{curve_log}.json").read_text())
    proc = _cli([*_common(setup), "--out", str(part)])
    assert proc.returncode == 0, proc.stderr
    assert _no_time(_rows(part)) == _no_time(_rows(curve_log))
    before = part.read_text()
    proc = _cli([*_common(setup, "--radius-cap", "0.4"), "--out", str(part)])
    assert proc.returncode == 2 and "different configuration" in proc.stderr and "curve_radii" in proc.stderr
    assert part.read_text() == before
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_float_mode_and_another_noise_and_norm(setup, tmp_path, capsys):
    out = tmp_path / "float.tsv"
    assert main([*_common(setup, "--float-noise", "--max", "3"), "--out", str(out)]) == 0
    ident = json.loads(Path(f"{out}.json").read_text())["identity"]
    assert ident["sound"] is False and ident["curve"] is True
    out = tmp_path / "linf.tsv"
    assert main([*_common(setup, "--noise", "uniform", "--norm", "l1", "--max", "3"), "--out", str(out)]) == 0
    assert "trained with gaussian noise" in capsys.readouterr().err
    ident = json.loads(Path(f"{out}.json").read_text())["identity"]
    assert ident["noise"] == "uniform" and ident["norm"] == "l1"
    # the cap is the radius at pA = Phi(2) for uniform noise (std sigma, half-width sqrt(3) sigma) in L1:
    # 2 sqrt(3) sigma (Phi(2) - 1/2) (Yang et al., ICML 2020; smoothcert.core.radii)
    from scipy.stats import norm

    assert ident["curve_radii"][-1] == pytest.approx(2 * 3**0.5 * 0.25 * (norm.cdf(2) - 0.5), rel=1e-9)
    rows = _rows(out)
    assert len(rows) == 4 and all(set(r[rows[0].index("decisions")]) <= set("cnu") for r in rows[1:])


def test_eval_label_curve_bounds_the_true_label(setup, tmp_path):
    out = tmp_path / "eval.tsv"
    assert main([*_common(setup, "--eval-label", "--max", "3"), "--out", str(out)]) == 0
    ident = json.loads(Path(f"{out}.json").read_text())["identity"]
    assert ident["eval_label"] is True and "n0" not in ident
    rows = _rows(out)
    col = {name: i for i, name in enumerate(rows[0])}
    for r in rows[1:]:
        assert int(r[col["n0"]]) == 0 and r[col["selected"]] == r[col["label"]]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--adaptive"], "give one"),
        (["--radius", "0.25"], "decision mode"),
        (["--radius-cap", "0"], "radius_cap must be > 0"),
        (["--radius-cap", "40"], "cannot be certified"),
    ],
)
def test_curve_refusals_are_one_line_and_write_nothing(setup, tmp_path, capsys, extra, fragment):
    out = tmp_path / "refused.tsv"
    assert main([*_common(setup, *extra), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists() and not Path(f"{out}.json").exists()


def test_curve_settings_without_a_mode_name_both_modes():
    from smoothcert.runs.certify import RunConfig

    with pytest.raises(ValueError, match=r"--adaptive\) or curve=True \(--curve\)"):
        RunConfig(command="certify", model="m", out="o.tsv", radius_cap=1.0)
    with pytest.raises(ValueError, match="curve applies to certify only"):
        RunConfig(command="predict", model="m", out="o.tsv", curve=True)
    assert RunConfig(command="certify", model="m", out="o.tsv", curve=True, radius_cap=1.0).curve  # control


def test_predict_has_no_curve_flag(setup, tmp_path, capsys):
    model, data = setup
    with pytest.raises(SystemExit) as info:  # argparse: unrecognized arguments, exit 2
        main(["predict", "--curve", "--model", str(model), "--data-dir", str(data), "--out", str(tmp_path / "p")])
    assert info.value.code == 2 and "--curve" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_torchrun_two_ranks_give_the_single_process_rows(setup, curve_log, tmp_path):
    from test_distributed import _torchrun

    out = tmp_path / "multi.tsv"
    _torchrun([*_common(setup), "--out", str(out)], tmp_path)
    assert _no_time(_rows(out)) == _no_time(_rows(curve_log))
    single = json.loads(Path(f"{curve_log}.json").read_text())["identity"]
    assert json.loads(Path(f"{out}.json").read_text())["identity"] == single
    assert np.all(np.diff([int(r[0]) for r in _rows(out)[1:]]) > 0)
