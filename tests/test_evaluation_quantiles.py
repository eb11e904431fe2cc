"""Beyond ACR (Sun et al., 2024): quantiles of the certified p_A lower bounds in every format, and their ECDF plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from smoothcert.cli.main import main
from smoothcert.core.errors import ConfigError
from smoothcert.evaluation import logs, metrics, plotting
from smoothcert.io.logs import ADAPTIVE_COLUMNS, CERTIFY_COLUMNS

REF = Path(__file__).parent / "data" / "cohen2019" / "certify" / "imagenet_resnet50_noise_0.50_test_sigma_0.50.tsv"
P = [0.30, 0.45, 0.52, 0.60, 0.70, 0.81, 0.90, 0.95, 0.99, 0.999]
# example 0 selected a wrong class; 1 selected the true class but abstained (p <= 1/2); 2..9 are certified, correct
SELECTED_RIGHT = [False] + [True] * 9
# numpy's "linear" (Hyndman & Fan 7) by hand: position h = (m - 1) q, x[floor h] + frac(h) (x[ceil h] - x[floor h])
#   all (m = 10, h = 9q):      0.30 + 0.9*0.15, 0.52 + 0.25*0.08, 0.70 + 0.5*0.11, 0.90 + 0.75*0.05, 0.99 + 0.1*0.009
#   selected = label (m = 9, h = 8q, x = P[1:]): 0.45 + 0.8*0.07, 0.60, 0.81, 0.95, 0.99 + 0.2*0.009
WANT_ALL = [0.435, 0.54, 0.755, 0.9375, 0.9909]
WANT_RIGHT = [0.506, 0.60, 0.81, 0.95, 0.9918]
TOL = 1e-12  # float rounding of the interpolation only


def _log(path: Path, p: list[float] = P, right: list[bool] = SELECTED_RIGHT) -> str:
    rows = []
    for i, (pl, ok) in enumerate(zip(p, right, strict=True)):
        selected = 3 if ok else 5
        predict = selected if pl > 0.5 else -1
        rows.append([i, 3, predict, 0.1 if predict >= 0 else 0.0, int(predict == 3), "1.0", 99, 100, 10, pl, selected])
    path.write_text("\t".join(CERTIFY_COLUMNS) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    Path(str(path) + ".json").write_text(json.dumps({"identity": {"sigma": 0.5, "alpha": 0.001}, "model": {}}))
    return str(path)


def _check(q: metrics.PLowerQuantiles | None) -> None:
    assert q is not None and q.levels == (0.1, 0.25, 0.5, 0.75, 0.9)
    assert q.all == pytest.approx(WANT_ALL, abs=TOL) and q.correct == pytest.approx(WANT_RIGHT, abs=TOL)
    assert (q.examples, q.correct_examples, q.method) == (10, 9, "linear")


def test_quantiles_against_a_hand_computation(tmp_path):
    log = logs.read_certify_log(_log(tmp_path / "c.tsv"))
    q = metrics.p_lower_quantiles(log)
    _check(q)
    levels = [0.1, 0.25, 0.5, 0.75, 0.9]
    assert q is not None and q.all == pytest.approx(np.quantile(P, levels, method="linear").tolist(), abs=TOL)
    # positive controls, planted bugs the check catches: the certified-and-correct column instead of
    # "selected = label" (drops the abstained example 1), and another quantile method
    wrong_subset = np.quantile(np.array(P)[log.correct], levels, method="linear")
    with pytest.raises(AssertionError):
        _check(metrics.PLowerQuantiles(q.levels, q.all, tuple(wrong_subset.tolist()), 10, 9))
    lower = np.quantile(P, levels, method="lower")
    with pytest.raises(AssertionError):
        _check(metrics.PLowerQuantiles(q.levels, tuple(lower.tolist()), q.correct, 10, 9))


def test_quantiles_match_numpy_on_random_logs(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.uniform(0.2, 1.0, 57).round(6).tolist()
    right = (rng.random(57) < 0.7).tolist()
    q = metrics.p_lower_quantiles(logs.read_certify_log(_log(tmp_path / "r.tsv", p, right)), [0.05, 0.5, 0.95])
    sub = np.array(p)[np.array(right)]
    assert q is not None and q.all == pytest.approx(np.quantile(p, [0.05, 0.5, 0.95]).tolist(), abs=TOL)
    assert q.correct == pytest.approx(np.quantile(sub, [0.05, 0.5, 0.95]).tolist(), abs=TOL)
    with pytest.raises(ConfigError, match="levels must be probabilities"):
        metrics.p_lower_quantiles(logs.read_certify_log(tmp_path / "r.tsv"), [1.5])


def test_quantiles_in_every_format(tmp_path, capsys):
    path = _log(tmp_path / "c.tsv")
    assert main(["analyze", path, "--label", "toy", "--radii", "0"]) == 0
    md = capsys.readouterr().out
    assert "| log | p_lower over | examples | q0.1 | q0.25 | q0.5 | q0.75 | q0.9 |" in md
    assert "| toy | all | 10 | 0.4350 | 0.5400 | 0.7550 | 0.9375 | 0.9909 |" in md
    assert "| toy | selected = label | 9 | 0.5060 | 0.6000 | 0.8100 | 0.9500 | 0.9918 |" in md
    assert main(["analyze", path, "--label", "toy", "--radii", "0", "--format", "latex"]) == 0
    assert "toy & selected = label & 9 & 0.5060 & 0.6000 & 0.8100 & 0.9500 & 0.9918 \\\\" in capsys.readouterr().out
    assert main(["analyze", path, "--radii", "0,0.1", "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(rows) == 2
    assert [float(rows[1][f"p_lower_all_q{q:g}"]) for q in (0.1, 0.25, 0.5, 0.75, 0.9)] == pytest.approx(WANT_ALL)
    assert float(rows[0]["p_lower_correct_q0.1"]) == pytest.approx(0.506)
    assert main(["analyze", path, "--radii", "0", "--format", "json"]) == 0
    entry = json.loads(capsys.readouterr().out)[0]["p_lower_quantiles"]
    assert entry["all"] == pytest.approx(WANT_ALL) and entry["correct"] == pytest.approx(WANT_RIGHT)
    assert entry["method"] == "linear" and entry["correct_means"] == "selected class = true label"


def test_logs_without_a_meaningful_p_lower_are_na(tmp_path, capsys):
    assert metrics.p_lower_quantiles(logs.read_certify_log(REF)) is None  # the 2019 logs have no p_lower
    dec = tmp_path / "d.tsv"
    row = [0, 3, 3, 0.6, 1, "0.1", 228, "certified", 2, 0.999, 128, 128, 100, 0.9, 3]
    dec.write_text("\t".join(ADAPTIVE_COLUMNS) + "\n" + "\t".join(map(str, row)) + "\n")
    ident = {"sigma": 0.5, "alpha": 0.001, "adaptive": True, "radius": 0.5, "radius_cap": None}
    Path(str(dec) + ".json").write_text(json.dumps({"identity": ident}))
    assert metrics.p_lower_quantiles(logs.read_certify_log(dec)) is None  # decision mode: stops once it decides
    assert main(["analyze", str(dec), _log(tmp_path / "c.tsv"), "--label", "dec", "--label", "fx"]) == 0
    out = capsys.readouterr().out
    assert "| dec | all | 1 | n/a | n/a | n/a | n/a | n/a |" in out and "| fx | all | 10 | 0.4350 |" in out
    # reference logs alone: no quantile table at all
    assert main(["analyze", str(REF), "--radii", "0"]) == 0
    assert "p_lower over" not in capsys.readouterr().out


def test_ecdf_plot_steps_through_every_bound(tmp_path, monkeypatch, capsys):
    drawn: list[object] = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path: drawn.append(fig) or Path(path))
    log = logs.read_certify_log(_log(tmp_path / "c.tsv"))
    plotting.plot_p_lower_ecdf([log], tmp_path / "e.png")
    ax = drawn[0].axes[0]  # type: ignore[attr-defined]
    (all_x, all_y), (right_x, right_y) = (line.get_xydata().T for line in ax.lines[:2])
    assert all_x.tolist() == [0.0, *P, 1.0] and all_y.tolist() == pytest.approx([0.0, *np.arange(1, 11) / 10, 1.0])
    assert right_x.tolist() == [0.0, *P[1:], 1.0] and right_y[-2] == pytest.approx(1.0)
    assert ax.get_xlabel() == "certified lower bound p_lower on p_A"
    # positive controls: logs without p_lower are refused, in Python and on the command line
    with pytest.raises(ConfigError, match="has no p_lower column"):
        plotting.plot_p_lower_ecdf([logs.read_certify_log(REF)], tmp_path / "x.png")
    monkeypatch.undo()
    assert main(["analyze", str(REF), "--pa-plot", str(tmp_path / "x.png")]) == 2
    assert "has no p_lower column" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    out = tmp_path / "e.pdf"
    assert main(["analyze", str(tmp_path / "c.tsv"), "--pa-plot", str(out)]) == 0
    assert out.read_bytes()[:4] == b"%PDF"
    assert main(["analyze", str(tmp_path / "c.tsv"), "--pa-plot", str(tmp_path / "c.tsv")]) == 2
    assert "one of the input logs" in capsys.readouterr().err
