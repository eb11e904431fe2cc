"""Sound mode is the command line's default (0.3): flags, refusals, the resume rule for 0.2 logs,
identity comparison through JSON, and the per-example time of examples certified together.

The synthetic data are written as 8-bit IDX files (``synthdata``), so their inputs are ``i / 255``:
on the default grid. Tests that want float mode pass ``--float-noise`` explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from synthdata import write_idx_dataset

from smoothcert.cli.main import main
from smoothcert.io.logs import ADAPTIVE_COLUMNS, CERTIFY_COLUMNS, identity_diff, read_rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sound")
    data = write_idx_dataset(root / "data", n_train=64, n_test=12)
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", str(data), "--arch", "small_cnn", "--sigma", "0.25"]
    assert main([*args, "--out", str(root / "m"), "--epochs", "1", "--batch", "32", "--quiet", "--seed", "1"]) == 0
    return root, data


def _args(root: Path, data: Path, out: Path, *extra: str, command: str = "certify") -> list[str]:
    args = [command, "--model", str(root / "m"), "--data-dir", str(data), "--n", "60", "--alpha", "0.01"]
    if command == "certify":
        args += ["--n0", "10"]
    return [*args, "--batch", "100", "--max", "4", "--device", "cpu", "--out", str(out), "--quiet", *extra]


def _identity(out: Path) -> dict:
    return json.loads(Path(str(out) + ".json").read_text())["identity"]


def _no_time(out: Path) -> list[list[str]]:
    return [r[:5] + r[6:] for r in read_rows(out, CERTIFY_COLUMNS)]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("smoothcert: error: "), err
    return err


def test_certify_and_predict_run_in_sound_mode_by_default(setup, tmp_path):
    root, data = setup
    assert main(_args(root, data, tmp_path / "c.tsv")) == 0
    ident = _identity(tmp_path / "c.tsv")
    assert ident["sound"] is True and ident["grid"] == 255 and ident["sound_radii"] == 2
    assert json.loads((tmp_path / "c.tsv.json").read_text())["sound"]["tv_bound"] > 0
    # --sound is accepted as a no-op: the same identity and the same rows
    assert main(_args(root, data, tmp_path / "s.tsv", "--sound")) == 0
    assert _identity(tmp_path / "s.tsv") == ident and _no_time(tmp_path / "s.tsv") == _no_time(tmp_path / "c.tsv")
    assert main(_args(root, data, tmp_path / "p.tsv", command="predict")) == 0
    assert _identity(tmp_path / "p.tsv")["sound"] is True
    # --float-noise: 0.2's float mode, recorded as such
    assert main(_args(root, data, tmp_path / "f.tsv", "--float-noise")) == 0
    ident_f = _identity(tmp_path / "f.tsv")
    assert ident_f["sound"] is False and ident_f["grid"] is None and "sound_radii" not in ident_f
    assert "sound" not in json.loads((tmp_path / "f.tsv.json").read_text())


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--sound", "--float-noise"), "--sound and --float-noise contradict"),
        (("--float-noise", "--grid", "15"), "grid=15 applies only to sound mode: drop --float-noise"),
    ],
)
def test_contradicting_mode_flags_are_refused(setup, tmp_path, capsys, extra, fragment):
    root, data = setup
    out = tmp_path / "x.tsv"
    assert main(_args(root, data, out, *extra)) == 2
    assert fragment in _one_line(capsys)
    assert not out.exists() and not Path(str(out) + ".json").exists()


def test_data_off_the_grid_is_refused_naming_float_noise(setup, tmp_path, capsys, monkeypatch):
    import smoothcert.runs.certify as certify

    real = certify.load_dataset

    class Shifted:  # every pixel 1e-3 off the 8-bit grid
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            x, y = self.ds[i]
            return x * 0.99 + 1e-3, y

    monkeypatch.setattr(certify, "load_dataset", lambda *a, **k: Shifted(real(*a, **k)))
    root, data = setup
    out = tmp_path / "x.tsv"
    assert main(_args(root, data, out)) == 2
    err = _one_line(capsys)
    assert "--float-noise" in err and "grid" in err
    assert not out.exists() and not Path(str(out) + ".json").exists()
    assert main(_args(root, data, out, "--float-noise")) == 0  # positive control: float mode takes them


def _as_02(out: Path, *drop: str) -> None:
    """Make ``out``'s sidecar look written by 0.2: its identity without the keys ``drop``."""
    side = Path(str(out) + ".json")
    doc = json.loads(side.read_text())
    for key in drop:
        doc["identity"].pop(key)
    side.write_text(json.dumps(doc))


def test_a_02_float_log_continues_only_with_float_noise_and_float64_draws(setup, tmp_path, capsys):
    """A 0.2 float-mode log (float64 Gaussian draws, "sampler": 2, no "sound"/"grid") continues only
    with --float-noise --float-draws float64, which reproduces its stream: the rows equal one run's."""
    root, data = setup
    legacy = ("--float-noise", "--float-draws", "float64")
    want = tmp_path / "whole.tsv"
    assert main(_args(root, data, want, *legacy)) == 0
    assert _identity(want)["sampler"] == 2
    out = tmp_path / "old.tsv"
    assert main([*_args(root, data, out, *legacy), "--max", "2"]) == 0
    _as_02(out, "sound", "grid")  # 0.2 recorded neither in float mode
    before = out.read_text()
    assert main(_args(root, data, out)) == 2  # the new default would append sound-mode rows
    err = _one_line(capsys)
    assert "float mode by smoothcert 0.2" in err and "pass --float-noise --float-draws float64" in err
    assert main(_args(root, data, out, "--float-noise")) == 2  # float32 draws: another noise stream
    err = _one_line(capsys)
    assert "float64 Gaussian draws" in err and "--float-draws float64" in err
    assert out.read_text() == before
    assert main(_args(root, data, out, *legacy)) == 0  # continues it: the same rows as one run
    assert _no_time(out) == _no_time(want)


def test_float_mode_draws_float32_gaussians_by_default_and_resumes_them(setup, tmp_path, capsys):
    """--float-noise alone records "sampler": 3 (float32 draws) and resumes its own log row for row;
    --float-draws float64 without --float-noise is refused in one line, before anything is written."""
    root, data = setup
    want = tmp_path / "whole.tsv"
    assert main(_args(root, data, want, "--float-noise")) == 0
    assert _identity(want)["sampler"] == 3 and _identity(want)["sound"] is False
    out = tmp_path / "part.tsv"
    assert main([*_args(root, data, out, "--float-noise"), "--max", "2"]) == 0
    assert main(_args(root, data, out, "--float-noise")) == 0
    assert _no_time(out) == _no_time(want)
    # 0.2's stream is recorded as such
    other = tmp_path / "f64.tsv"
    assert main(_args(root, data, other, "--float-noise", "--float-draws", "float64")) == 0
    assert _identity(other)["sampler"] == 2
    bad = tmp_path / "bad.tsv"
    assert main(_args(root, data, bad, "--float-draws", "float64")) == 2
    assert "applies to float mode only" in _one_line(capsys) and not bad.exists()


def test_a_02_sound_log_is_not_continued(setup, tmp_path, capsys):
    """Decision: 0.3's sound radii subtract the grid offset, so a 0.2 sound-mode log's rows differ
    from this version's; it is refused rather than continued. Control: a 0.3 sound log resumes."""
    root, data = setup
    out = tmp_path / "old.tsv"
    assert main([*_args(root, data, out, "--sound"), "--max", "2"]) == 0
    assert main(_args(root, data, out)) == 0  # control: this version's sound log resumes under the default
    assert len(read_rows(out, CERTIFY_COLUMNS)) == 4
    _as_02(out, "sound_radii")
    before = out.read_text()
    assert main([*_args(root, data, out), "--max", "6"]) == 2
    assert "sound mode by smoothcert 0.2" in _one_line(capsys)
    assert out.read_text() == before


def test_identities_are_compared_as_recorded():
    """A tuple setting equals the JSON list its sidecar holds (0.2 refused attack --multiples on resume)."""
    assert identity_diff({"multiples": [1.5], "radii": None}, {"multiples": (1.5,), "radii": None}) == ""
    # control: a real difference is still one
    assert identity_diff({"multiples": [1.5]}, {"multiples": (2.0,)}) == "multiples: [1.5] there, [2.0] now"
    assert identity_diff({}, {"sound": False}, absent={"sound": False}) == ""
    assert identity_diff({}, {"sound": True}, absent={"sound": False}) == "sound: False there, True now"
    assert identity_diff({}, {"grid": None}) != ""  # a key the old identity lacks, with no legacy value


def test_shared_times_split_a_chunk_by_passes():
    from smoothcert.runs.certify import shared_times

    assert shared_times(3.0, [100, 200, 300]) == ["0.500000", "1.000000", "1.500000"]
    assert shared_times(1.0, [5, 5]) == ["0.500000", "0.500000"]


def test_sequential_rows_time_each_example_by_its_passes(setup, tmp_path):
    """Sequential examples certified together stop after different numbers of passes; each row's
    time is the chunk's time split by passes (0.2 wrote the chunk's average on every row). With
    --batch 1000 the eight examples share one chunk (at most batch // 64 per chunk)."""
    torch.manual_seed(0)
    root, data = setup
    out = tmp_path / "a.tsv"
    args = _args(
        root, data, out, "--adaptive", "--radius-cap", "0.05", "--n-max", "2000", "--max", "8", "--batch", "1000"
    )
    assert main(args) == 0
    rows = read_rows(out, ADAPTIVE_COLUMNS)
    col = ADAPTIVE_COLUMNS.index
    used = [int(r[col("n_used")]) for r in rows]
    times = [float(r[col("time")]) for r in rows]
    assert len(set(used)) > 1, f"the test needs examples that stop at different passes: {used}"
    assert len(set(times)) > 1
    for i in range(len(rows)):
        for j in range(len(rows)):  # t_i / t_j = passes_i / passes_j, up to the 1e-6 s rounding of the column
            assert abs(times[i] * used[j] - times[j] * used[i]) <= 1e-6 * (used[i] + used[j])


def test_every_analyze_output_says_which_mode_ran(setup, tmp_path, capsys):
    import csv
    import io

    root, data = setup
    sound, flt = tmp_path / "sound.tsv", tmp_path / "float.tsv"
    assert main(_args(root, data, sound)) == 0
    assert main(_args(root, data, flt, "--float-noise")) == 0
    capsys.readouterr()
    assert main(["analyze", str(sound), "--radii", "0,0.1"]) == 0
    assert "smoothing: sound (grid 255)." in capsys.readouterr().out
    assert main(["analyze", str(flt), "--radii", "0,0.1", "--format", "latex"]) == 0
    assert "% smoothing: float." in capsys.readouterr().out
    assert main(["analyze", str(sound), str(flt), "--radii", "0,0.1", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["smoothing"] for r in rows} == {"sound (grid 255)", "float"}
    assert main(["analyze", str(sound), "--compare", str(flt), "--radii", "0,0.1", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["certify"][0]["smoothing"] == "sound (grid 255)"
    assert (doc["compare"][0]["smoothing_a"], doc["compare"][0]["smoothing_b"]) == ("sound (grid 255)", "float")
    assert main(["analyze", str(sound), "--compare", str(flt), "--radii", "0,0.1"]) == 0
    text = capsys.readouterr().out
    assert "sound (grid 255); small_cnn σ=0.25 float." in text  # one log each: each log's mode
    pred, ref = tmp_path / "p.tsv", tmp_path / "ref.tsv"
    assert main(_args(root, data, pred, command="predict")) == 0
    assert main([*_args(root, data, ref, "--float-noise", command="predict"), "--n", "200"]) == 0
    capsys.readouterr()
    assert main(["analyze", "--predict-logs", str(pred), "--predict-reference", str(ref)]) == 0
    assert "smoothing: sound (grid 255)." in capsys.readouterr().out
