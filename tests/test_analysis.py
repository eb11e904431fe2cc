"""Analysis of certification logs: the paper's tables from the 2019 reference logs, bounds, projections, plots."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

from smoothcert import analysis as A
from smoothcert import stats as S
from smoothcert.cli import main
from smoothcert.results import CERTIFY_COLUMNS

DATA = Path(__file__).parent / "data" / "cohen2019"
CERT = DATA / "certify"
PRED = DATA / "predict"

# Table 2 of the paper (App. E.1), recomputed from the committed ImageNet logs
TABLE2 = {
    "imagenet_resnet50_noise_0.25_test_sigma_0.25.tsv": [0.67, 0.49, 0.00, 0.00, 0.00, 0.00, 0.00],
    "imagenet_resnet50_noise_0.50_test_sigma_0.50.tsv": [0.57, 0.46, 0.37, 0.29, 0.00, 0.00, 0.00],
    "imagenet_resnet50_noise_1.00_test_sigma_1.00.tsv": [0.44, 0.38, 0.33, 0.26, 0.19, 0.15, 0.12],
}


def test_reference_logs_reproduce_table_2_exactly(capsys):
    logs = [str(CERT / name) for name in TABLE2]
    assert main(["analyze", *logs, "--radii", "0:3:0.5", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["radii"] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    for entry, (name, want) in zip(result, TABLE2.items(), strict=True):
        assert entry["path"].endswith(name)
        assert [round(v, 2) for v in entry["certified_accuracy"]] == want
        assert set(entry) >= {"name", "path", "examples", "radii", "certified_accuracy", "acr", "abstain_rate"}
    assert result[0]["examples"] == 427 and result[1]["examples"] == 500


def test_reference_log_parsing():
    log = A.read_certify_log(CERT / "imagenet_resnet50_noise_0.25_test_sigma_0.25.tsv")
    assert log.idx[:2].tolist() == [0, 100]
    assert log.time[0] == pytest.approx(151.238689)  # 0:02:31.238689
    assert log.count is None and log.p_lower is None and log.sidecar is None
    # certified accuracy counts abstentions as failures and uses radius >= r
    assert A.certified_accuracy(log, [0.0])[0] == pytest.approx(np.mean(log.correct))
    assert A.average_certified_radius(log) == pytest.approx(np.sum(log.radius * log.correct) / log.examples)


def test_time_and_radii_parsing():
    assert A.parse_time("1:02:03.5") == pytest.approx(3723.5)
    assert A.parse_time("0.25") == 0.25
    assert A.parse_radii("0:1:0.25").tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert A.parse_radii("0,0.5,2").tolist() == [0.0, 0.5, 2.0]
    with pytest.raises(ValueError, match="radii must be"):
        A.parse_radii("0:1")


def test_markdown_marks_the_best_log_per_radius(capsys):
    logs = [str(CERT / name) for name in TABLE2]
    assert main(["analyze", *logs, "--radii", "0,2", "--label", "s025", "--label", "s050", "--label", "s100"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split("|")[1].strip(): line for line in out[2:]}
    assert "**0.67**" in rows["s025"] and "**0.19**" in rows["s100"]
    assert "**" not in rows["s050"]


def test_latex_csv_formats(capsys):
    log = str(CERT / "imagenet_resnet50_noise_0.50_test_sigma_0.50.tsv")
    assert main(["analyze", log, "--radii", "0,1", "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "0.37" in tex
    assert main(["analyze", log, "--radii", "0,1", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("name,path,examples,radius,certified_accuracy") and len(lines) == 3


def test_high_prob_bound_in_json_and_table(capsys):
    log = str(CERT / "imagenet_resnet50_noise_1.00_test_sigma_1.00.tsv")
    assert main(["analyze", log, "--radii", "0,1", "--format", "json", "--high-prob", "0.001"]) == 0
    entry = json.loads(capsys.readouterr().out)[0]
    lower = entry["certified_accuracy_lower"]
    want = S.certified_accuracy_lower_bound(np.array(entry["certified_accuracy"]), 500, 0.001, 0.001)
    assert lower == pytest.approx(list(want)) and all(
        lo < acc for lo, acc in zip(lower, entry["certified_accuracy"], strict=True)
    )
    assert main(["analyze", log, "--radii", "0", "--high-prob", "0.001"]) == 0
    assert "(≥" in capsys.readouterr().out


@pytest.mark.slow
def test_high_prob_bound_holds_with_probability_at_least_1_minus_gamma():
    """Simulated test sets of m examples certified by real CERTIFY statistics (binomial counts,
    Clopper-Pearson at alpha): how often the lower bound exceeds the true certified accuracy.
    Examples sit just below their certification threshold, the adversarial case where each is
    wrongly reported certified with probability close to alpha. Must be <= gamma (plus a
    one-sided binomial allowance at level 1e-4); the uncorrected estimate fails the same check."""
    rng = np.random.default_rng(0)
    m, n, alpha, gamma, sigma, r, trials = 200, 100, 0.1, 0.1, 1.0, 0.5, 2000
    threshold = st.norm.cdf(r / sigma)
    truly = rng.random(m) < 0.6  # 60% of examples are truly certified at r
    pa = np.where(truly, 0.995, threshold - 0.002)
    true_acc = truly.mean()
    violations = naive = 0
    for _ in range(trials):
        counts = rng.binomial(n, pa)
        p_lower = S.clopper_pearson_lower(counts, n, alpha)
        reported = np.mean(S.cohen_radius(p_lower, sigma=sigma) >= r)
        violations += S.certified_accuracy_lower_bound(reported, m, alpha, gamma) > true_acc
        naive += reported > true_acc  # the plain estimate, with no correction
    allowed = st.binom.ppf(1 - 1e-4, trials, gamma)
    assert violations <= allowed
    assert naive > allowed


def test_bound_option_recomputes_radii(capsys):
    log = str(CERT / "imagenet_resnet50_noise_0.50_test_sigma_0.50.tsv")
    res = {}
    for bound in ("cohen", "li", "lecuyer"):
        assert (
            main(["analyze", log, "--radii", "0,0.25,0.5,1", "--bound", bound, "--sigma", "0.5", "--format", "json"])
            == 0
        )
        res[bound] = json.loads(capsys.readouterr().out)[0]["certified_accuracy"]
    assert res["cohen"][0] == res["li"][0] == res["lecuyer"][0]  # r = 0: only the prediction matters
    assert all(c >= li >= le for c, li, le in zip(res["cohen"], res["li"], res["lecuyer"], strict=True))
    assert res["cohen"][3] > res["li"][3] > res["lecuyer"][3]


def test_bound_needs_sigma_for_reference_logs(capsys):
    assert main(["analyze", str(CERT / "imagenet_resnet50_noise_0.50_test_sigma_0.50.tsv"), "--bound", "li"]) == 2
    assert "pass --sigma" in capsys.readouterr().err


def _synthetic_log(path: Path, sigma: float, alpha: float, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = ["\t".join(CERTIFY_COLUMNS)]
    for i in range(60):
        label = int(rng.integers(0, 10))
        selected = label if rng.random() < 0.8 else (label + 1) % 10
        p_true = rng.uniform(0.998, 1.0) if rng.random() < 0.4 else rng.uniform(0.3, 1.0)  # some near-certain
        count = int(rng.binomial(n, p_true))
        p = S.clopper_pearson_lower(count, n, alpha)
        pred = selected if p > 0.5 else -1
        radius = S.cohen_radius(p, sigma=sigma) if pred >= 0 else 0.0
        rows.append(
            "\t".join(
                map(str, [i, label, pred, repr(radius), int(pred == label), "0.1", count, n, 100, repr(p), selected])
            )
        )
    path.write_text("\n".join(rows) + "\n")
    Path(str(path) + ".json").write_text(
        json.dumps({"identity": {"sigma": sigma, "alpha": alpha, "n": n}, "model": {"arch": "toy"}})
    )
    return path


def test_projection_at_the_logged_settings_reproduces_the_log(tmp_path):
    sigma, alpha = 0.5, 0.001
    log = A.read_certify_log(_synthetic_log(tmp_path / "c.tsv", sigma, alpha, 1000))
    radii = np.linspace(0, 1.5, 13)
    logged = A.certified_accuracy(log, radii)
    assert A.project_certified_accuracy(log, radii).tolist() == logged.tolist()
    # the largest radius n samples can certify, sigma * Phi^-1(alpha^(1/n)): 0.75 at n = 100,
    # 1.23 at the logged n = 1000, 1.91 at n = 100,000
    r_100, r_1000 = S.max_radius(100, alpha, sigma=sigma), S.max_radius(1000, alpha, sigma=sigma)
    assert 0.74 < r_100 < 0.76 and 1.22 < r_1000 < 1.24
    between = np.array([0.8, 0.9, 1.0])  # radii this log reaches but n = 100 cannot
    assert np.all(A.certified_accuracy(log, between) > 0), "the comparison needs radii the log reaches"
    assert np.all(A.project_certified_accuracy(log, between, n=100) == 0.0)
    beyond = np.array([1.3, 1.5])  # radii only a larger n reaches
    assert np.all(A.certified_accuracy(log, beyond) == 0.0)
    more = A.project_certified_accuracy(log, beyond, n=100_000)
    assert np.all(more > 0)
    # with more samples (or a looser alpha) each example's bound only rises: never fewer certified
    assert np.all(A.project_certified_accuracy(log, radii, n=100_000) >= logged)
    looser = A.project_certified_accuracy(log, radii, alpha=0.1)
    assert np.all(looser >= logged) and np.any(looser > logged)


def test_projection_needs_counts(capsys):
    assert main(["analyze", str(CERT / "imagenet_resnet50_noise_0.50_test_sigma_0.50.tsv"), "--project-n", "1000"]) == 2
    assert "projections need them" in capsys.readouterr().err


def test_predict_quality_table_4(capsys):
    ref = A.read_predict_log(PRED / "imagenet_resnet50_noise_0.25_test_N_100000.tsv")
    logs = [A.read_predict_log(PRED / f"imagenet_resnet50_noise_0.25_test_N_{n}.tsv") for n in (100, 1000, 10000)]
    rows = A.predict_quality(logs, ref)
    for r in rows:
        keys = ["correct_accurate", "correct_inaccurate", "incorrect_accurate", "incorrect_inaccurate", "abstain"]
        assert sum(r[k] for k in keys) == pytest.approx(1.0)
    # paper Table 4, n = 10,000 row: 0.69 0.00 0.30 0.00 0.01 (the committed logs give it exactly)
    last = rows[-1]
    assert [
        round(last[k], 2)
        for k in ("correct_accurate", "correct_inaccurate", "incorrect_accurate", "incorrect_inaccurate", "abstain")
    ] == [0.69, 0.0, 0.30, 0.0, 0.01]
    assert rows[0]["abstain"] > rows[1]["abstain"] > rows[2]["abstain"]
    self_row = A.predict_quality([ref], ref)[0]
    assert self_row["correct_inaccurate"] == self_row["incorrect_inaccurate"] == 0.0
    assert main(["analyze", "--predict-logs", *[lg.path for lg in logs], "--predict-reference", ref.path]) == 0
    assert "| N = 10,000 | 0.69 | 0.00 | 0.30 | 0.00 | 0.01 |" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_plots_render_headless(tmp_path, suffix):
    logs = [str(CERT / name) for name in TABLE2]
    plot = tmp_path / f"acc{suffix}"
    code = (
        "import sys; from smoothcert.cli import main; "
        f"rc = main(['analyze', *{logs!r}, '--plot', {str(plot)!r}, '--envelope', '--high-prob', '0.001', "
        f"'--bounds-plot', {str(tmp_path / ('b' + suffix))!r}, "
        f"'--max-radius-plot', {str(tmp_path / ('m' + suffix))!r}]); "
        "assert 'torch' not in sys.modules; sys.exit(rc)"
    )
    env = {"PATH": "/usr/bin:/bin", "MPLBACKEND": "", "HOME": str(tmp_path)}  # no display, no inherited backend
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    magic = b"\x89PNG" if suffix == ".png" else b"%PDF"
    for name in ("acc", "b", "m"):
        assert (tmp_path / f"{name}{suffix}").read_bytes()[:4] == magic


def test_analysis_functions_are_usable_from_python():
    logs = [A.read_certify_log(CERT / name, name=f"log{i}") for i, name in enumerate(TABLE2)]
    summaries = A.summarize(logs, [0.0, 1.0])
    assert [s.name for s in summaries] == ["log0", "log1", "log2"]
    assert summaries[2].certified_accuracy[1] == pytest.approx(0.33, abs=0.005)
    assert math.isclose(summaries[0].to_json()["acr"], summaries[0].acr)


def _torn(path: Path, text: str) -> bytes:
    path.write_text(text)
    with path.open("a") as fh:
        fh.write("99\t3\t")  # a row a running attack has only half written
    return path.read_bytes()


def test_analyze_never_writes_to_its_input_logs(tmp_path, capsys):
    log = tmp_path / "c.tsv"
    ref = (CERT / "imagenet_resnet50_noise_0.50_test_sigma_0.50.tsv").read_text()
    log_bytes = _torn(log, ref)
    df = tmp_path / "df.tsv"
    header = "idx\tlabel\tpredict\tcorrect\tdeepfool_norm\tsuccess\n"
    df_bytes = _torn(df, header + "".join(f"{i}\t1\t1\t1\t{0.1 * i}\t1\n" for i in range(1, 6)))
    plot = tmp_path / "p.png"
    assert (
        main(["analyze", str(log), "--radii", "0,1", "--format", "json", "--empirical", str(df), "--plot", str(plot)])
        == 0
    )
    assert main(["analyze", str(log), "--radii", "0,1", "--empirical", str(df), "--plot", str(plot)]) == 0
    assert log.read_bytes() == log_bytes and df.read_bytes() == df_bytes, "an input log was modified"
    _, _, acc = A.empirical_curve(df, np.array([0.0, 0.25]))
    assert acc.tolist() == [1.0, 0.6]  # the torn row is ignored, the five complete ones are read
    assert A.read_certify_log(log).examples == 500
    capsys.readouterr()
    assert main(["analyze", str(log), "--out", str(log)]) == 2  # nor is an input a valid --out
    assert "one of the input logs" in capsys.readouterr().err
    assert log.read_bytes() == log_bytes


def _predict_args() -> list[str]:
    ref = PRED / "imagenet_resnet50_noise_0.25_test_N_100000.tsv"
    logs = [PRED / f"imagenet_resnet50_noise_0.25_test_N_{n}.tsv" for n in (100, 10000)]
    return ["--predict-logs", *map(str, logs), "--predict-reference", str(ref)]


def test_predict_table_csv_is_quoted(capsys):
    import csv

    assert main(["analyze", *_predict_args(), "--format", "csv"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0][:3] == ["name", "n", "examples"] and all(len(r) == len(rows[0]) for r in rows)
    assert [r[0] for r in rows[1:]] == ["N = 100", "N = 10,000"]  # the comma stays inside its field


def test_json_with_certify_and_predict_logs_is_one_document(capsys):
    log = str(CERT / "imagenet_resnet50_noise_0.50_test_sigma_0.50.tsv")
    assert main(["analyze", log, "--radii", "0,1", *_predict_args(), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # fails on two concatenated documents
    assert set(doc) == {"certify", "predict"}
    assert doc["certify"][0]["certified_accuracy"][0] == pytest.approx(0.57, abs=0.005)
    assert [r["name"] for r in doc["predict"]] == ["N = 100", "N = 10,000"]
    assert main(["analyze", log, "--radii", "0,1", "--format", "json"]) == 0  # alone: the list of summaries
    assert isinstance(json.loads(capsys.readouterr().out), list)
