"""The dense tasks through the command line: ``train --task``, ``certify --task``, ``analyze``,
a killed run resumed with identical rows, and bad input refused in one line with exit 2 before
any log is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from synthdata import write_idx_dataset

from smoothcert.cli.main import main
from smoothcert.io.logs import LOCALIZATION_COLUMNS, SEGMENTATION_COLUMNS, read_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    data = write_idx_dataset(root / "fmnist", n_train=64, n_test=24)
    common = ["--sigma", "0.25", "--epochs", "1", "--train-size", "32", "--test-size", "8", "--device", "cpu"]
    for task in ("segmentation", "localization"):
        assert (
            main(["train", "--task", task, "--out", str(root / task), "--data-dir", str(data), *common, "--quiet"]) == 0
        )
    return root, data


def _certify(root, data, task, out, *extra):
    args = ["certify", "--task", task, "--model", str(root / task), "--out", str(out), "--data-dir", str(data)]
    return main([*args, "--n0", "8", "--n", "40", "--alpha", "0.05", "--batch", "32", "--max", "4", "--quiet", *extra])


def _rows(path, columns):
    return [[v for c, v in zip(columns, r, strict=True) if c != "time"] for r in read_rows(path, columns)]


def test_segmentation_certify_resumes_with_identical_rows_and_analyzes(trained, tmp_path, capsys):
    root, data = trained
    assert _certify(root, data, "segmentation", tmp_path / "full.tsv", "--tau", "0.6") == 0
    full = tmp_path / "full.tsv"  # one tau: the log is --out itself
    rows = _rows(full, SEGMENTATION_COLUMNS)
    assert len(rows) == 4
    # a run killed after two images: keep the header and two rows (and a torn third line), then resume
    part = tmp_path / "part.tsv"
    assert _certify(root, data, "segmentation", tmp_path / "part.tsv", "--tau", "0.6", "--max", "2") == 0
    with part.open("a") as fh:
        fh.write("2\t0.5")  # torn line
    assert _certify(root, data, "segmentation", tmp_path / "part.tsv", "--tau", "0.6") == 0
    assert _rows(part, SEGMENTATION_COLUMNS) == rows
    capsys.readouterr()
    assert main(["analyze", str(full)]) == 0
    table = capsys.readouterr().out
    assert "certified_accuracy" in table and "| 0.600 |" in table


def test_localization_certify_and_analyze(trained, tmp_path, capsys):
    root, data = trained
    assert _certify(root, data, "localization", tmp_path / "loc.tsv", "--radii", "0,0.1") == 0
    logs = [tmp_path / "loc_r0.tsv", tmp_path / "loc_r0.1.tsv"]
    assert all(len(read_rows(p, LOCALIZATION_COLUMNS)) == 4 for p in logs)
    capsys.readouterr()
    assert main(["analyze", *map(str, logs), "--format", "json"]) == 0
    assert '"certified_iou_truth>=0.5"' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("task", "extra", "message"),
    [
        ("segmentation", ["--tau", "0.4"], "tau"),
        ("segmentation", ["--tau", "1.0"], "tau"),
        ("localization", ["--radii", "-0.5"], "radius"),
        ("classification-model", [], "is a classification model"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(trained, tmp_path, task, extra, message):
    root, data = trained
    if task == "classification-model":  # a classification model with --task segmentation
        assert (
            main(
                [
                    "train",
                    "--arch",
                    "small_cnn",
                    "--dataset",
                    "fashion-mnist",
                    "--data-dir",
                    str(data),
                    "--sigma",
                    "0.25",
                    "--epochs",
                    "1",
                    "--batch",
                    "16",
                    "--out",
                    str(root / "cls"),
                    "--device",
                    "cpu",
                    "--quiet",
                ]
            )
            == 0
        )
        args = ["certify", "--task", "segmentation", "--model", str(root / "cls")]
    else:
        args = ["certify", "--task", task, "--model", str(root / task)]
    cmd = [sys.executable, "-m", "smoothcert", *args, "--out", str(tmp_path / "x.tsv"), "--data-dir", str(data), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smoothcert: error:") and message in lines[0], res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_segmentation_under_torchrun_equals_a_single_process(trained, tmp_path):
    # two ranks certify every other scene into part files; rank 0 merges them into the log one process writes
    import os

    root, data = trained
    args = ["certify", "--task", "segmentation", "--model", str(root / "segmentation"), "--data-dir", str(data)]
    args += ["--n0", "8", "--n", "40", "--alpha", "0.05", "--batch", "32", "--max", "5", "--quiet", "--tau", "0.6"]
    single, multi = tmp_path / "single.tsv", tmp_path / "multi.tsv"
    assert main([*args, "--out", str(single)]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "smoothcert"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([*cmd, "--", *args, "--out", str(multi)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _rows(multi, SEGMENTATION_COLUMNS) == _rows(single, SEGMENTATION_COLUMNS)
    assert not list(tmp_path.glob("multi.tsv.part*")), "part files are merged and removed"


def test_dense_certify_defaults_to_sound_mode_and_float_noise_resumes_a_0_2_log(trained, tmp_path, capsys):
    import json

    from smoothcert.io.logs import read_sidecar, sidecar_path

    root, data = trained
    sound, old = tmp_path / "sound.tsv", tmp_path / "old.tsv"
    assert _certify(root, data, "segmentation", sound, "--tau", "0.6", "--max", "1") == 0
    assert read_sidecar(sound)["identity"]["sound"] is True and read_sidecar(sound)["identity"]["grid"] == 255
    legacy = ("--float-noise", "--float-draws", "float64")  # 0.2's float64 Gaussian stream
    assert _certify(root, data, "segmentation", old, "--tau", "0.6", "--max", "1", *legacy) == 0
    side = json.loads(sidecar_path(old).read_text())  # a float log as 0.2 wrote it
    del side["identity"]["sound"], side["identity"]["grid"]
    sidecar_path(old).write_text(json.dumps(side))
    capsys.readouterr()
    assert _certify(root, data, "segmentation", old, "--tau", "0.6", "--max", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--float-noise" in err[0]
    assert _certify(root, data, "segmentation", old, "--tau", "0.6", "--max", "2", "--float-noise") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--float-draws float64" in err[0]
    assert _certify(root, data, "segmentation", old, "--tau", "0.6", "--max", "2", *legacy) == 0
    assert len(read_rows(old, SEGMENTATION_COLUMNS)) == 2
    capsys.readouterr()
    assert main(["analyze", str(sound)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].endswith("| mode |") and "| sound, grid 255 |" in table


def test_dense_certify_passes_an_explicit_mode_never_auto_and_refuses_an_off_grid_scene(
    trained, tmp_path, monkeypatch, capsys
):
    """The CLI builds its smoothed models with sound=True (grid 255) or, with --float-noise, sound=False:
    never the library's per-input "auto", so every row is in the mode the log's identity names. A scene
    moved off the grid is refused in sound mode (not certified in float mode) and runs with --float-noise."""
    import smoothcert.runs.tasks as rt
    from smoothcert.io.scenes import FashionScenes

    seen = []

    class RecordingSegmenter(rt.SmoothedSegmenter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(("segmentation", kwargs.get("sound", "left out"), self.sound, self.grid))

    class RecordingRegressor(rt.SmoothedRegressor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(("localization", kwargs.get("sound", "left out"), self.sound, self.grid))

    monkeypatch.setattr(rt, "SmoothedSegmenter", RecordingSegmenter)
    monkeypatch.setattr(rt, "SmoothedRegressor", RecordingRegressor)
    root, data = trained
    for i, task in enumerate(("segmentation", "localization")):
        assert _certify(root, data, task, tmp_path / f"s{i}.tsv", "--max", "1") == 0
        assert _certify(root, data, task, tmp_path / f"f{i}.tsv", "--max", "1", "--float-noise") == 0
    assert seen == [
        ("segmentation", True, True, 255),
        ("segmentation", False, False, None),
        ("localization", True, True, 255),
        ("localization", False, False, None),
    ]
    scene = FashionScenes.__getitem__
    monkeypatch.setattr(
        FashionScenes, "__getitem__", lambda self, i: (scene(self, i)[0] + 0.3 / 255, scene(self, i)[1])
    )
    capsys.readouterr()
    assert _certify(root, data, "segmentation", tmp_path / "off.tsv", "--max", "1") == 2  # one line, exit 2
    err = capsys.readouterr().err
    assert "grid" in err and err.count("\n") == 1
    assert _certify(root, data, "segmentation", tmp_path / "off_float.tsv", "--max", "1", "--float-noise") == 0
