"""Evaluation outputs that never mislead: empty and non-finite logs refused in one line, strict JSON,
eval-label logs named in every format, plots without a global backend switch, a lazy package."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smoothcert.cli.main import main
from smoothcert.core.errors import ConfigError, ResultFileError
from smoothcert.evaluation import compare, logs, metrics, plotting, reports
from smoothcert.io.logs import ADAPTIVE_COLUMNS, CERTIFY_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, columns: tuple[str, ...], rows: list[list[object]], identity: dict[str, object]) -> str:
    path.write_text("\t".join(columns) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    Path(str(path) + ".json").write_text(json.dumps({"identity": identity, "model": {"arch": "toy"}}))
    return str(path)


def _fixed(path: Path, radii: list[object], correct: list[int], idx0: int = 0) -> str:
    rows = [
        [idx0 + i, 3, 3 if c else 5, r, c, "2.0", 990, 1000, 100, 0.99, 3 if c else 5]
        for i, (r, c) in enumerate(zip(radii, correct, strict=True))
    ]
    return _write(path, CERTIFY_COLUMNS, rows, {"sigma": 0.5, "alpha": 0.001, "n": 1000, "n0": 100})


def _adaptive(path: Path, rows: list[tuple[float, int, str, int]], *, eval_label: bool, idx0: int = 0) -> str:
    """Max-radius sequential log from ``(radius, correct, decision, n_used)``; eval-label logs have n0 = 0."""
    n0 = 0 if eval_label else 100
    out = [
        [idx0 + i, 3, 3 if c else -1, r, c, "0.1", used, dec, 2, 0.999, used - n0, used - n0, n0, 0.9, 3]
        for i, (r, c, dec, used) in enumerate(rows)
    ]
    ident = {"sigma": 0.5, "alpha": 0.001, "adaptive": True, "radius": None, "radius_cap": None, "n_max": 10_000}
    ident["eval_label"] = eval_label
    return _write(path, ADAPTIVE_COLUMNS, out, ident)


ROWS = [(0.6, 1, "certified", 500), (0.0, 0, "not_certified", 300), (0.9, 1, "certified", 800)]


def _no_constants(text: str) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


# ----------------------------------------------------------------------------- empty and non-finite logs


def test_header_only_log_is_one_clear_line_naming_the_file(tmp_path, capsys):
    empty = tmp_path / "empty.tsv"
    empty.write_text("\t".join(CERTIFY_COLUMNS) + "\n")
    with pytest.raises(ResultFileError, match="has a header but no rows"):
        logs.read_certify_log(empty)
    for fmt in ("markdown", "json"):
        assert main(["analyze", str(empty), "--format", fmt]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""  # no row of zeros
        assert captured.err.count("\n") == 1 and str(empty) in captured.err and "no rows" in captured.err
    blank = tmp_path / "blank.tsv"
    blank.write_text("")
    with pytest.raises(ResultFileError, match="is empty"):
        logs.read_certify_log(blank)
    pred = tmp_path / "p.tsv"
    pred.write_text("idx\tlabel\tpredict\tcorrect\ttime\n")
    with pytest.raises(ResultFileError, match="no rows"):
        logs.read_predict_log(pred)
    # positive control: one row makes it a valid log
    assert logs.read_certify_log(_fixed(tmp_path / "one.tsv", [0.3], [1])).examples == 1


@pytest.mark.parametrize("bad", ["nan", "inf", "-0.5"])
def test_non_finite_or_negative_radii_are_refused_naming_the_examples(tmp_path, capsys, bad):
    """Decision (docs in evaluation.logs): a log with a nan/inf radius is refused as a whole, not summarised
    over its finite rows: nan would count as 'not certified' at every radius and make the ACR nan."""
    path = _fixed(tmp_path / "c.tsv", [0.3, bad, 0.2], [1, 1, 0], idx0=40)
    with pytest.raises(ResultFileError, match=r"radius is not a finite number >= 0 for 1 of 3 examples \(idx 41\)"):
        logs.read_certify_log(path)
    assert main(["analyze", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and path in err and "Traceback" not in err
    # positive control: the same log with a finite radius is read
    assert logs.read_certify_log(_fixed(tmp_path / "ok.tsv", [0.3, 0.4, 0.2], [1, 1, 0])).examples == 3


def test_json_is_strict_null_never_nan(tmp_path, capsys):
    doc = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": (0.5,)}
    assert _no_constants(reports.json_text(doc)) == {"a": None, "b": [1.0, None, {"c": None}], "d": [0.5]}
    with pytest.raises(AssertionError, match="bare NaN"):  # positive control: the checker catches plain dumps
        _no_constants(json.dumps(doc))
    # a summary whose lower bound and accuracy are n/a, through the CLI, with a comparison and a PREDICT table
    a = _adaptive(tmp_path / "a.tsv", ROWS, eval_label=False)
    b = _fixed(tmp_path / "b.tsv", [0.3, 0.4, 0.5], [1, 1, 0])
    assert main(["analyze", a, "--compare", b, "--radii", "0,0.5", "--format", "json", "--high-prob", "0.01"]) == 0
    parsed = _no_constants(capsys.readouterr().out)
    assert isinstance(parsed, dict) and set(parsed) == {"certify", "compare"}
    s = metrics.summarize([logs.read_certify_log(a)], [0.0])[0]
    planted = dataclasses.replace(s, acr=float("nan"))  # a value no longer produced, planted for the writer
    assert _no_constants(reports.format_json([planted]))[0]["acr"] is None  # type: ignore[index]


# ----------------------------------------------------------------------------- eval-label logs


def test_eval_label_logs_are_named_in_every_summary_format(tmp_path, capsys):
    ev = _adaptive(tmp_path / "ev.tsv", ROWS, eval_label=True)
    log = logs.read_certify_log(ev, name="seq")
    assert log.eval_label and log.label_mode == "eval-label"
    assert main(["analyze", ev, "--label", "seq", "--radii", "0.5"]) == 0
    md = capsys.readouterr().out
    assert "| seq (eval-label) | 3 |" in md and "max-radius, eval-label" in md
    assert "certified each example's true label without selecting a class" in md
    assert main(["analyze", ev, "--label", "seq", "--radii", "0.5", "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert "seq (eval-label) &" in tex and "% (eval-label): the log certified" in tex
    assert main(["analyze", ev, "--label", "seq", "--radii", "0.5", "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert {r["label_mode"] for r in rows} == {"eval-label"}
    assert main(["analyze", ev, "--radii", "0.5", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label_mode"] == "eval-label"
    # positive control: the same log without eval_label in its sidecar is not marked
    plain = _adaptive(tmp_path / "plain.tsv", ROWS, eval_label=False)
    assert main(["analyze", plain, "--label", "seq", "--radii", "0.5"]) == 0
    md = capsys.readouterr().out
    assert "eval-label" not in md and "| seq | 3 |" in md


def test_comparison_of_eval_label_against_fixed_n_carries_the_note(tmp_path, capsys):
    ev = _adaptive(tmp_path / "ev.tsv", ROWS, eval_label=True)
    fixed = _fixed(tmp_path / "fx.tsv", [0.3, 0.4, 0.7], [1, 0, 1])
    c = compare.compare_logs(logs.read_certify_log(ev, name="A"), logs.read_certify_log(fixed, name="B"), [0.5])
    assert c.note is not None and c.note.startswith("A is an eval-label log and B is not: this comparison favours A")
    assert "no selection error, no n0 selection draws" in c.note
    args = ["analyze", ev, "--label", "A", "--compare", fixed, "--radii", "0.5"]
    assert main(args) == 0
    md = capsys.readouterr().out
    assert "| A (eval-label) | toy σ=0.5 | 3 |" in md and "Note: A is an eval-label log and toy σ=0.5 is not" in md
    assert main([*args, "--format", "latex"]) == 0
    assert "% Note: A is an eval-label log" in capsys.readouterr().out
    assert main([*args, "--format", "csv"]) == 0
    block = capsys.readouterr().out.split("\n\n")[1]
    (row, acr_row) = list(csv.DictReader(block.splitlines()))
    assert (row["label_mode_a"], row["label_mode_b"]) == ("eval-label", "selected")
    assert row["note"].startswith("A is an eval-label log") and acr_row["radius"] == "acr"
    assert main([*args, "--format", "json"]) == 0
    (cmp,) = json.loads(capsys.readouterr().out)["compare"]
    assert cmp["label_mode_a"] == "eval-label" and cmp["note"].startswith("A is an eval-label log")
    # positive control: a sequential log that selected its class gets no such note
    plain = _adaptive(tmp_path / "plain.tsv", ROWS, eval_label=False)
    c2 = compare.compare_logs(logs.read_certify_log(plain), logs.read_certify_log(fixed), [0.5])
    assert c2.note is None
    assert main(["analyze", plain, "--compare", fixed, "--radii", "0.5"]) == 0
    assert "eval-label" not in capsys.readouterr().out


def test_acr_caveat_where_acr_is_shown(tmp_path, capsys):
    b = _fixed(tmp_path / "b.tsv", [0.3, 0.4, 0.5], [1, 1, 0])
    a = _adaptive(tmp_path / "a.tsv", ROWS, eval_label=False)
    for fmt in ("markdown", "latex"):
        assert main(["analyze", a, "--compare", b, "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert out.count("Sun et al., 2024") == 2  # below the summary and below the comparison (paired ACR)
        assert "depends on the sampling budget" in out


# ----------------------------------------------------------------------------- plots and the package


def test_plots_leave_the_users_backend_and_pyplot_alone(tmp_path):
    log = _fixed(tmp_path / "c.tsv", [0.3, 0.4, 0.5], [1, 1, 0])
    code = (
        "import sys, matplotlib; matplotlib.use('svg'); "
        "from smoothcert.evaluation import logs, metrics, plotting; "
        f"L = logs.read_certify_log({log!r}); "
        f"plotting.plot_certified_accuracy(metrics.summarize([L], [0, 0.5]), {str(tmp_path / 'a.png')!r}); "
        f"plotting.plot_p_lower_ecdf([L], {str(tmp_path / 'e.png')!r}); "
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules); "
        "matplotlib.use('Agg'); print(matplotlib.get_backend())"  # positive control: a switch is visible
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.lower().split() == ["svg", "false", "agg"]
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"
    assert "matplotlib.use(" not in (ROOT / "smoothcert" / "evaluation" / "plotting.py").read_text()


def test_missing_matplotlib_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ConfigError, match=r"pip install 'smoothcert\[plot\]'"):
        plotting.plot_bounds(tmp_path / "b.png")
    log = _fixed(tmp_path / "c.tsv", [0.3], [1])
    assert main(["analyze", log, "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "smoothcert[plot]" in err
    monkeypatch.undo()  # positive control: with matplotlib the same call draws
    assert plotting.plot_bounds(tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_package_is_lazy_and_keeps_the_old_names():
    code = (
        "import sys, smoothcert.evaluation as E; f = E.summarize; from smoothcert.evaluation import analysis as A; "
        "import smoothcert.evaluation.metrics as M; "
        "print('torch' in sys.modules, 'matplotlib' in sys.modules, f is M.summarize, A.format_markdown is "
        "E.format_markdown)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False", "True", "True"]
    import smoothcert.evaluation as E

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        E.nope  # noqa: B018
    from smoothcert.evaluation import analysis

    assert set(analysis.__all__) <= set(dir(E))  # every 0.1 name, from the package as from the old module
    assert all(getattr(E, name) is getattr(analysis, name) for name in analysis.__all__)


def test_columns_are_read_by_name_not_position(tmp_path):
    """A log whose columns are in another order reads the same (positive control: a wrong name is refused)."""
    ref = logs.read_certify_log(_fixed(tmp_path / "a.tsv", [0.3, 0.4], [1, 0]))
    cols = list(reversed(CERTIFY_COLUMNS))
    text = (tmp_path / "a.tsv").read_text().splitlines()
    rows = [dict(zip(CERTIFY_COLUMNS, line.split("\t"), strict=True)) for line in text[1:]]
    (tmp_path / "b.tsv").write_text(
        "\t".join(cols) + "\n" + "".join("\t".join(r[c] for c in cols) + "\n" for r in rows)
    )
    got = logs.read_certify_log(tmp_path / "b.tsv")
    for name in ("idx", "label", "predict", "radius", "correct", "time", "p_lower", "selected", "n0"):
        assert np.array_equal(getattr(got, name), getattr(ref, name)), name
    (tmp_path / "c.tsv").write_text("\t".join(c.replace("radius", "radios") for c in cols) + "\n")
    with pytest.raises(ResultFileError, match="lack 'radius'"):
        logs.read_certify_log(tmp_path / "c.tsv")
