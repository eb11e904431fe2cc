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

from smoothcert.cli.main import main
from smoothcert.core import stats as S
from smoothcert.evaluation import analysis as A
from smoothcert.io.logs import ADAPTIVE_COLUMNS, CERTIFY_COLUMNS

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
    rows = {line.split("|")[1].strip(): line for line in out[2:] if line.startswith("|")}  # the notes follow
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
        "import sys; from smoothcert.cli.main import main; "
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


# ----------------------------------------------------------------------------- sequential logs, passes, norms


def _write(path: Path, columns: tuple[str, ...], rows: list[list[object]], identity: dict[str, object] | None) -> str:
    """A log with ``columns`` and ``rows``, and (unless ``identity`` is None) its sidecar."""
    path.write_text("\t".join(columns) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    if identity is not None:
        Path(str(path) + ".json").write_text(json.dumps({"identity": identity, "model": {"arch": "toy"}}))
    return str(path)


def _fixed(path: Path, radii: list[float], correct: list[int], *, norm: str | None = None, idx0: int = 0) -> str:
    """Fixed-n log, n0 = 100, n = 1000: every example costs 1100 passes."""
    rows = [
        [idx0 + i, 3, 3 if c else 5, r, c, "2.0", 990, 1000, 100, 0.99, 3 if c else 5]
        for i, (r, c) in enumerate(zip(radii, correct, strict=True))
    ]
    ident: dict[str, object] = {"sigma": 0.5, "alpha": 0.001, "n": 1000, "n0": 100}
    if norm is not None:
        ident.update(noise="laplace", norm=norm)
    return _write(path, CERTIFY_COLUMNS, rows, ident)


def _adaptive(
    path: Path,
    rows: list[tuple[float, int, str, int]],
    *,
    radius: float | None,
    cap: float | None = None,
    idx0: int = 0,
    sidecar: bool = True,
) -> str:
    """Sequential log from ``(radius, correct, decision, n_used)`` per example."""
    out = [
        [idx0 + i, 3, 3 if c else -1, r, c, "0.1", used, dec, 2, 0.999, used - 100, used - 100, 100, 0.9, 3]
        for i, (r, c, dec, used) in enumerate(rows)
    ]
    ident = {"sigma": 0.5, "alpha": 0.001, "adaptive": True, "radius": radius, "radius_cap": cap, "n_max": 100_000}
    return _write(path, ADAPTIVE_COLUMNS, out, ident if sidecar else None)


DECISION = [  # (radius, correct, decision, n_used): certified examples have radius > 0.5
    (0.61, 1, "certified", 228),
    (0.0, 0, "not_certified", 356),
    (0.93, 1, "certified", 164),
    (0.0, 0, "undecided", 100_100),
    (0.52, 1, "certified", 1124),
]


def test_decision_mode_log_reports_its_radius_only(tmp_path, capsys):
    path = _adaptive(tmp_path / "d.tsv", DECISION, radius=0.5)
    log = A.read_certify_log(path)
    assert log.mode == "decision" and log.decision_radius == 0.5 and log.norm == "l2"
    assert log.decision is not None and log.decision.tolist()[1] == "not_certified"
    (s,) = A.summarize([log], [0.0, 0.25, 0.75])  # 0.5 joins the grid
    assert s.radii == [0.0, 0.25, 0.5, 0.75]
    assert s.certified_accuracy == [None, None, pytest.approx(3 / 5), None]
    assert s.acr is None and s.decisions == {"certified": 3, "not_certified": 1, "undecided": 1}
    # passes by hand: sorted 164 228 356 1124 100100; p99 at position 0.99 * 4 = 3.96 (linear)
    assert s.passes is not None
    assert s.passes.mean == pytest.approx((228 + 356 + 164 + 100_100 + 1124) / 5)
    assert s.passes.median == 356 and s.passes.max == 100_100
    assert s.passes.p99 == pytest.approx(1124 + 0.96 * (100_100 - 1124))
    assert main(["analyze", path, "--radii", "0.25,0.75"]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[0], out.splitlines()[2]
    assert "L2 r = 0.5" in header and "passes (mean)" in header
    assert row.split("|")[3:7] == [" n/a ", " 0.60 ", " n/a ", " n/a "]  # r = 0.25, 0.5, 0.75, ACR
    assert "| 20,394 |" in out and "| 356 | 96,141 | 100,100 |" in out  # 1124 + 0.96 * 98976 = 96140.96
    assert "decision r = 0.5" in out and "certified 3, not_certified 1, undecided 1" in out
    assert "n/a: a decision-mode log tests one radius" in out


def test_capped_max_radius_log_stops_at_its_cap(tmp_path):
    rows = [(0.8, 1, "certified", 5000), (0.3, 1, "certified", 2000), (0.0, 0, "not_certified", 300)]
    log = A.read_certify_log(_adaptive(tmp_path / "m.tsv", rows, radius=None, cap=0.75))
    assert log.mode == "max-radius" and log.radius_cap == 0.75
    (s,) = A.summarize([log], [0.0, 0.5, 0.75, 1.0])
    assert s.certified_accuracy == [pytest.approx(2 / 3), pytest.approx(1 / 3), pytest.approx(1 / 3), None]
    assert s.acr == pytest.approx((0.75 + 0.3) / 3)  # min(radius, cap)
    uncapped = A.read_certify_log(_adaptive(tmp_path / "u.tsv", rows, radius=None))
    (u,) = A.summarize([uncapped], [0.0, 1.0])
    assert u.certified_accuracy == [pytest.approx(2 / 3), 0.0] and u.acr == pytest.approx(1.1 / 3)


def test_fixed_log_passes_are_n0_plus_n(tmp_path):
    log = A.read_certify_log(_fixed(tmp_path / "f.tsv", [0.2, 0.7, 0.0], [1, 1, 0]))
    assert log.mode == "fixed" and log.passes is not None and log.passes.tolist() == [1100] * 3
    (s,) = A.summarize([log], [0.5])
    assert s.passes == A.PassStats(mean=1100.0, median=1100.0, p99=1100.0, max=1100, total=3300)
    ref = A.summarize([A.read_certify_log(CERT / next(iter(TABLE2)))], [0.5])[0]
    assert ref.passes is None  # the 2019 logs do not record n


def test_sequential_log_without_its_sidecar_is_refused(tmp_path):
    path = _adaptive(tmp_path / "d.tsv", DECISION, radius=0.5, sidecar=False)
    with pytest.raises(ValueError, match=r"mode .* is unknown"):
        A.read_certify_log(path)


def _pair(tmp_path: Path) -> tuple[str, str]:
    """Adaptive decision log (idx 0..6) and fixed log (idx 1..8): common idx 1..6."""
    # common examples, A = decision log at r = 0.5, B = fixed log with radius >= 0.5:
    #   idx: 1  2  3  4  5  6
    #   A:   1  1  1  0  1  0
    #   B:   0  0  0  0  1  1      d = 1 1 1 0 0 -1
    a_rows = [
        (0.9, 1, "certified", 999),  # idx 0: only in A
        (0.6, 1, "certified", 200),
        (0.7, 1, "certified", 300),
        (0.55, 1, "certified", 400),
        (0.0, 0, "not_certified", 500),
        (0.8, 1, "certified", 600),
        (0.0, 0, "undecided", 100_100),
    ]
    a = _adaptive(tmp_path / "a.tsv", a_rows, radius=0.5)
    b = _fixed(tmp_path / "b.tsv", [0.3, 0.4, 0.49, 0.6, 0.9, 0.7, 0.1, 0.2], [1, 1, 1, 0, 1, 1, 1, 1], idx0=1)
    return a, b


def test_paired_comparison_against_a_hand_computation(tmp_path):
    a, b = (A.read_certify_log(p) for p in _pair(tmp_path))
    c = A.compare_logs(a, b, [0.25, 0.5])
    assert c.examples == 6 and c.radii == [0.25, 0.5]
    assert c.accuracy[0] is None  # a decision log says nothing at 0.25
    d = c.accuracy[1]
    assert d is not None
    # d = (1, 1, 1, 0, 0, -1): mean 1/3; sample variance (4 - 6/9) / 5 = 2/3; SE = sqrt(2/3 / 6) = 1/3
    assert (d.a, d.b) == (pytest.approx(4 / 6), pytest.approx(2 / 6))
    assert d.difference == pytest.approx(1 / 3) and d.se == pytest.approx(1 / 3)
    z = 1.959963984540054
    assert (d.ci_low, d.ci_high) == (pytest.approx(1 / 3 - z / 3), pytest.approx(1 / 3 + z / 3))
    # exact McNemar: 3 of 4 discordant favour A; two-sided p = 2 * P(X >= 3 | Bin(4, 1/2)) = 2 * 5/16
    assert (d.a_only, d.b_only, d.mcnemar_p) == (3, 1, pytest.approx(10 / 16))
    # passes on the common examples: A 200..600 and 100100, B 1100 each
    assert c.passes_a is not None and c.passes_a.mean == pytest.approx((200 + 300 + 400 + 500 + 600 + 100_100) / 6)
    assert c.passes_ratio == pytest.approx(1100 / c.passes_a.mean)
    assert c.time_ratio == pytest.approx(2.0 / 0.1)
    assert c.acr is None  # decision-mode logs have no ACR
    # a max-radius log against the fixed one: paired ACR difference by hand
    m_rows = [(0.0, 0, "not_certified", 10), (0.5, 1, "certified", 10)]  # idx 0 (A only), idx 1
    m = A.read_certify_log(_adaptive(tmp_path / "m.tsv", m_rows, radius=None))
    cm = A.compare_logs(m, b, [0.0])
    assert cm.examples == 1 and cm.acr is not None and cm.acr.difference == pytest.approx(0.5 - 0.3)  # idx 1
    with pytest.raises(ValueError, match="no example"):
        A.compare_logs(a, A.read_certify_log(_fixed(tmp_path / "far.tsv", [0.1], [1], idx0=50)), [0.5])


def test_paired_difference_matches_scipy():
    """SE and interval against scipy's one-sample t machinery on the differences (normal quantile)."""
    rng = np.random.default_rng(3)
    x, y = rng.random(200) < 0.6, rng.random(200) < 0.5
    d = A.paired_difference(x, y)
    diff = x.astype(float) - y.astype(float)
    assert d.se == pytest.approx(st.sem(diff))
    lo, hi = st.norm.interval(0.95, loc=diff.mean(), scale=st.sem(diff))
    assert (d.ci_low, d.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert d.mcnemar_p == pytest.approx(st.binomtest(int(np.sum(x & ~y)), int(np.sum(x ^ y))).pvalue)


def test_compare_in_every_format(tmp_path, capsys):
    import csv

    a, b = _pair(tmp_path)
    assert main(["analyze", a, "--compare", b, "--radii", "0.25,0.5", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["path"] for s in doc["certify"]] == [a, b]  # the baseline joins the table
    (cmp,) = doc["compare"]
    assert cmp["examples"] == 6 and cmp["certified_accuracy"][0] is None
    assert cmp["certified_accuracy"][1]["difference"] == pytest.approx(1 / 3)
    assert cmp["certified_accuracy"][1]["ci95"][0] == pytest.approx(1 / 3 - 1.959963984540054 / 3)
    assert main(["analyze", a, "--compare", b, "--radii", "0.5"]) == 0
    md = capsys.readouterr().out
    assert "B/A passes" in md and "| +0.333 | 0.333 | [-0.320, +0.987] | 3 | 1 | 0.625 |" in md
    assert main(["analyze", a, "--compare", b, "--radii", "0.5", "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    # five tables: summary, passes, p_lower quantiles (the fixed log records p_lower), pairs, differences
    assert tex.count("\\toprule") == 5 and "95\\% CI" in tex and "$\\ell_2$ $r = 0.5$" in tex
    assert main(["analyze", a, "--compare", b, "--radii", "0.5", "--format", "csv"]) == 0
    blocks = capsys.readouterr().out.split("\n\n")
    rows = list(csv.DictReader(blocks[1].splitlines()))
    assert len(rows) == 1 and float(rows[0]["difference"]) == pytest.approx(1 / 3)
    assert float(rows[0]["mcnemar_p"]) == pytest.approx(0.625)
    summary_rows = list(csv.DictReader(blocks[0].splitlines()))
    assert {r["passes_mean"] for r in summary_rows if r["mode"] == "fixed"} == {"1100.0"}


def test_tables_and_plot_axis_are_labelled_with_the_norm(tmp_path, capsys, monkeypatch):
    from smoothcert.evaluation import plotting

    l1 = _fixed(tmp_path / "l1.tsv", [0.2, 0.7], [1, 1], norm="l1")
    linf = _fixed(tmp_path / "linf.tsv", [0.01, 0.02], [1, 0], norm="linf")
    assert A.read_certify_log(l1).norm == "l1" and A.read_certify_log(l1).noise == "laplace"
    assert main(["analyze", l1, "--radii", "0,0.5"]) == 0
    assert "| log | n | L1 r = 0 | L1 r = 0.5 |" in capsys.readouterr().out
    assert main(["analyze", linf, "--radii", "0.01", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["norm"] == "linf"
    labels: list[str] = []
    monkeypatch.setattr(
        plotting, "save_figure", lambda fig, path: labels.append(fig.axes[0].get_xlabel()) or Path(path)
    )
    for log, _want in ((linf, "L∞ radius"), (l1, "L1 radius"), (str(CERT / next(iter(TABLE2))), "L2 radius")):
        plotting.plot_certified_accuracy(A.summarize([A.read_certify_log(log)], [0.0, 0.5]), tmp_path / "p.png")
    assert labels == ["L∞ radius", "L1 radius", "L2 radius"]


def test_analyze_refuses_to_mix_norms(tmp_path, capsys):
    l1 = _fixed(tmp_path / "l1.tsv", [0.2, 0.7], [1, 1], norm="l1")
    l2 = _fixed(tmp_path / "l2.tsv", [0.2, 0.7], [1, 1])
    out = tmp_path / "table.md"
    for extra in ([], ["--plot", str(tmp_path / "p.png")], ["--format", "json"]):
        assert main(["analyze", l1, l2, "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "different threat norms" in err and "Traceback" not in err
    assert main(["analyze", l1, "--compare", l2]) == 2
    assert "different threat norms" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "p.png").exists()
    # positive control: the same norm twice is accepted
    assert main(["analyze", l2, _fixed(tmp_path / "l2b.tsv", [0.1, 0.1], [1, 0]), "--out", str(out)]) == 0
    assert out.exists()
    with pytest.raises(ValueError, match="different threat norms"):
        A.summarize([A.read_certify_log(l1), A.read_certify_log(l2)], [0.0])


def test_bound_and_projection_refuse_logs_they_do_not_apply_to(tmp_path, capsys):
    l1 = _fixed(tmp_path / "l1.tsv", [0.2, 0.7], [1, 1], norm="l1")
    assert main(["analyze", l1, "--bound", "li"]) == 2
    assert "Gaussian-noise L2" in capsys.readouterr().err
    dec = _adaptive(tmp_path / "d.tsv", DECISION, radius=0.5)
    assert main(["analyze", dec, "--project-n", "1000"]) == 2
    assert "fixed-n logs" in capsys.readouterr().err


def test_decision_and_capped_logs_plot_headless(tmp_path):
    a, b = _pair(tmp_path)
    m = _adaptive(tmp_path / "m.tsv", [(0.8, 1, "certified", 5000), (0.3, 1, "certified", 2000)], radius=None, cap=0.75)
    plot = tmp_path / "p.png"
    assert (
        main(
            ["analyze", a, b, m, "--plot", str(plot), "--envelope", "--high-prob", "0.01", "--out", str(tmp_path / "t")]
        )
        == 0
    )
    assert plot.read_bytes()[:4] == b"\x89PNG"
