"""End-to-end CLI runs on synthetic files in the real formats: train, certify, predict, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from synthdata import write_cifar10, write_idx_dataset

from smoothcert.cli.main import main
from smoothcert.io.logs import CERTIFY_COLUMNS, PREDICT_COLUMNS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    return write_idx_dataset(tmp_path_factory.mktemp("fmnist"), n_train=96, n_test=30)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, fmnist) -> Path:
    out = tmp_path_factory.mktemp("run") / "model"
    assert (
        main(
            [
                "train",
                "--dataset",
                "fashion-mnist",
                "--data-dir",
                str(fmnist),
                "--arch",
                "small_cnn",
                "--sigma",
                "0.25",
                "--out",
                str(out),
                "--epochs",
                "1",
                "--batch",
                "32",
                "--train-limit",
                "64",
                "--lr",
                "0.05",
                "--quiet",
            ]
        )
        == 0
    )
    return out


def _rows(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    return [ln.split("\t") for ln in lines]


def test_train_writes_safetensors_and_metadata(model_dir):
    assert (model_dir / "model.safetensors").exists()
    meta = json.loads((model_dir / "model.json").read_text())
    for key in (
        "arch",
        "dataset",
        "num_classes",
        "sigma",
        "mean",
        "std",
        "epochs",
        "clean_accuracy",
        "noisy_accuracy",
        "versions",
    ):
        assert key in meta
    assert meta["arch"] == "small_cnn" and meta["sigma"] == 0.25 and meta["num_classes"] == 10
    assert 0.0 <= meta["clean_accuracy"] <= 1.0
    log = _rows(model_dir / "train_log.tsv")
    assert log[0] == ["epoch", "lr", "train_loss", "train_acc", "test_clean_acc", "test_noisy_acc", "time"]
    assert len(log) == 2 and log[1][0] == "1"


def test_train_resumes_from_last_epoch(tmp_path, fmnist):
    args = [
        "train",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(fmnist),
        "--arch",
        "small_cnn",
        "--sigma",
        "0.5",
        "--out",
        str(tmp_path / "m"),
        "--batch",
        "32",
        "--train-limit",
        "32",
        "--quiet",
    ]
    assert main([*args, "--epochs", "1"]) == 0
    assert main([*args, "--epochs", "2"]) == 0  # continues with epoch 2 only
    epochs = [r[0] for r in _rows(tmp_path / "m" / "train_log.tsv")[1:]]
    assert epochs == ["1", "2"]
    assert json.loads((tmp_path / "m" / "model.json").read_text())["epochs"] == 2


def test_certify_columns_and_sidecar(tmp_path, model_dir, fmnist):
    out = tmp_path / "certify.tsv"
    assert (
        main(
            [
                "certify",
                "--model",
                str(model_dir),
                "--data-dir",
                str(fmnist),
                "--n0",
                "10",
                "--n",
                "64",
                "--alpha",
                "0.01",
                "--batch",
                "40",
                "--skip",
                "3",
                "--max",
                "5",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rows = _rows(out)
    assert tuple(rows[0]) == CERTIFY_COLUMNS
    assert rows[0][:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert [r[0] for r in rows[1:]] == ["0", "3", "6", "9", "12"]
    for r in rows[1:]:
        rec = dict(zip(rows[0], r, strict=True))
        assert int(rec["n"]) == 64 and int(rec["n0"]) == 10 and 0 <= int(rec["count"]) <= 64
        assert rec["correct"] == str(int(rec["predict"] == rec["label"]))
        assert float(rec["time"]) >= 0
        if rec["predict"] == "-1":
            assert float(rec["radius"]) == 0.0
        else:
            assert float(rec["p_lower"]) > 0.5 and float(rec["radius"]) > 0
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["identity"]["sigma"] == 0.25  # defaults to the model's training sigma
    assert side["identity"]["seed"] == 0 and side["config"]["n"] == 64
    assert side["model"]["arch"] == "small_cnn" and "torch" in side["versions"]


def test_predict_columns(tmp_path, model_dir, fmnist):
    out = tmp_path / "predict.tsv"
    assert (
        main(
            [
                "predict",
                "--model",
                str(model_dir),
                "--data-dir",
                str(fmnist),
                "--n",
                "50",
                "--alpha",
                "0.05",
                "--batch",
                "200",
                "--max",
                "7",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rows = _rows(out)
    assert tuple(rows[0]) == PREDICT_COLUMNS and len(rows) == 8
    for r in rows[1:]:
        rec = dict(zip(rows[0], r, strict=True))
        assert int(rec["count"]) + int(rec["runner_up_count"]) <= 50
        assert (rec["predict"] == "-1") == (float(rec["pvalue"]) > 0.05)


def test_rows_depend_only_on_seed_and_index(tmp_path, model_dir, fmnist):
    common = [
        "certify",
        "--model",
        str(model_dir),
        "--data-dir",
        str(fmnist),
        "--n0",
        "10",
        "--n",
        "60",
        "--batch",
        "100",
        "--quiet",
    ]
    assert main([*common, "--max", "6", "--out", str(tmp_path / "a.tsv")]) == 0
    assert main([*common, "--skip", "2", "--max", "3", "--out", str(tmp_path / "b.tsv")]) == 0
    a = {r[0]: r[:5] + r[6:] for r in _rows(tmp_path / "a.tsv")[1:]}  # all but the time column
    b = {r[0]: r[:5] + r[6:] for r in _rows(tmp_path / "b.tsv")[1:]}
    assert set(b) == {"0", "2", "4"} and all(a[k] == b[k] for k in b)


def _run_cli(args: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smoothcert", *args], capture_output=True, text=True, cwd=REPO, **kw)


@pytest.mark.slow
def test_kill_and_resume_gives_identical_rows(tmp_path, model_dir, fmnist):
    common = [
        "certify",
        "--model",
        str(model_dir),
        "--data-dir",
        str(fmnist),
        "--n0",
        "10",
        "--n",
        "3000",
        "--batch",
        "20",
        "--max",
        "12",
        "--seed",
        "7",
        "--quiet",
    ]
    full = tmp_path / "full.tsv"
    assert _run_cli([*common, "--out", str(full)]).returncode == 0
    part = tmp_path / "part.tsv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "smoothcert", *common, "--out", str(part)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and (not part.exists() or len(part.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(part.read_text().splitlines()) - 1
    assert 2 <= done < 12, "the run was killed part way"
    with part.open("a") as fh:  # simulate a crash in the middle of writing a row
        fh.write("13\t4\t")
    assert _run_cli([*common, "--out", str(part)]).returncode == 0
    got, want = _rows(part), _rows(full)
    assert [r[0] for r in got[1:]] == [r[0] for r in want[1:]], "every index exactly once, in order"
    strip = lambda rows: [r[:5] + r[6:] for r in rows]  # noqa: E731  (the time column differs)
    assert strip(got) == strip(want)


def _error(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_missing_data_directory(capsys, model_dir, tmp_path):
    err = _error(
        capsys,
        [
            "certify",
            "--model",
            str(model_dir),
            "--data-dir",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "o.tsv"),
            "--quiet",
        ],
    )
    assert "nowhere" in err and "does not exist" in err
    assert not (tmp_path / "o.tsv").exists()


def test_unknown_arch(capsys, fmnist, tmp_path):
    err = _error(
        capsys,
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(fmnist),
            "--arch",
            "resnet9000",
            "--sigma",
            "0.25",
            "--out",
            str(tmp_path / "m"),
            "--epochs",
            "1",
            "--quiet",
        ],
    )
    assert "unknown arch 'resnet9000'" in err and "small_cnn" in err


def test_corrupt_checkpoint(capsys, model_dir, fmnist, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text((model_dir / "model.json").read_text())
    data = (model_dir / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    err = _error(
        capsys, ["certify", "--model", str(bad), "--data-dir", str(fmnist), "--out", str(tmp_path / "o.tsv"), "--quiet"]
    )
    assert "corrupt checkpoint" in err


def test_pickle_checkpoint_is_refused(capsys, model_dir, fmnist, tmp_path):
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "model.json").write_text((model_dir / "model.json").read_text())
    torch.save({"state_dict": {"w": torch.zeros(2)}}, evil / "model.safetensors")
    err = _error(
        capsys,
        ["certify", "--model", str(evil), "--data-dir", str(fmnist), "--out", str(tmp_path / "o.tsv"), "--quiet"],
    )
    assert "never unpickles" in err
    torch.save({"w": torch.zeros(2)}, tmp_path / "ckpt.pth")
    err = _error(
        capsys,
        [
            "certify",
            "--model",
            str(tmp_path / "ckpt.pth"),
            "--data-dir",
            str(fmnist),
            "--out",
            str(tmp_path / "o.tsv"),
            "--quiet",
        ],
    )
    assert "never unpickles" in err


def test_conflicting_resume_is_refused_and_file_kept(capsys, model_dir, fmnist, tmp_path):
    out = tmp_path / "c.tsv"
    common = [
        "certify",
        "--model",
        str(model_dir),
        "--data-dir",
        str(fmnist),
        "--n0",
        "10",
        "--batch",
        "100",
        "--max",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main([*common, "--n", "50"]) == 0
    before = out.read_bytes()
    err = _error(capsys, [*common, "--n", "80"])
    assert "different configuration" in err and "n: 50 there, 80 now" in err and "--overwrite" in err
    assert out.read_bytes() == before
    assert main([*common, "--n", "80", "--overwrite"]) == 0
    assert _rows(out)[1][7] == "80"


def test_file_without_sidecar_is_never_truncated(capsys, model_dir, fmnist, tmp_path):
    out = tmp_path / "mine.tsv"
    out.write_text("precious results\n")
    err = _error(
        capsys,
        [
            "predict",
            "--model",
            str(model_dir),
            "--data-dir",
            str(fmnist),
            "--n",
            "20",
            "--max",
            "1",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert "refusing" in err
    assert out.read_text() == "precious results\n"


def test_bad_argument_values(capsys, model_dir, fmnist, tmp_path):
    err = _error(
        capsys,
        [
            "certify",
            "--model",
            str(model_dir),
            "--data-dir",
            str(fmnist),
            "--alpha",
            "1.5",
            "--out",
            str(tmp_path / "o.tsv"),
            "--quiet",
        ],
    )
    assert "alpha must be in (0, 1), got 1.5" in err
    err = _error(
        capsys,
        [
            "certify",
            "--model",
            str(model_dir),
            "--data-dir",
            str(fmnist),
            "--sigma",
            "-1",
            "--out",
            str(tmp_path / "o.tsv"),
            "--quiet",
        ],
    )
    assert "sigma must be > 0" in err
    with pytest.raises(SystemExit) as info:  # argparse rejects the type itself, also with status 2
        main(["certify", "--model", str(model_dir), "--n", "0", "--out", "x"])
    assert info.value.code == 2


def test_cifar_resnet20_trains_on_cifar_batches(tmp_path):
    root = write_cifar10(tmp_path / "cifar", per_batch=4, n_test=4)
    assert (
        main(
            [
                "train",
                "--dataset",
                "cifar10",
                "--data-dir",
                str(root),
                "--arch",
                "cifar_resnet20",
                "--sigma",
                "0.12",
                "--out",
                str(tmp_path / "m"),
                "--epochs",
                "1",
                "--batch",
                "8",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "certify",
                "--model",
                str(tmp_path / "m"),
                "--data-dir",
                str(root),
                "--n0",
                "4",
                "--n",
                "20",
                "--batch",
                "20",
                "--max",
                "2",
                "--out",
                str(tmp_path / "c.tsv"),
                "--quiet",
            ]
        )
        == 0
    )
    assert len(_rows(tmp_path / "c.tsv")) == 3


def test_visualize_writes_png(tmp_path, fmnist):
    out = tmp_path / "grid.png"
    assert (
        main(["visualize", "--dataset", "fashion-mnist", "--data-dir", str(fmnist), "--count", "3", "--out", str(out)])
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_module_entry_point_help():
    res = _run_cli(["--help"])
    assert res.returncode == 0 and "certify" in res.stdout and "train" in res.stdout


def test_environment_variable_data_dir(tmp_path, model_dir, fmnist, monkeypatch):
    monkeypatch.setenv("SMOOTHCERT_DATA", str(fmnist))
    assert (
        main(
            [
                "predict",
                "--model",
                str(model_dir),
                "--n",
                "20",
                "--alpha",
                "0.1",
                "--max",
                "1",
                "--out",
                str(tmp_path / "p.tsv"),
                "--quiet",
            ]
        )
        == 0
    )
    assert os.path.exists(tmp_path / "p.tsv")


def _certify_args(model: Path | str, fmnist: Path, out: Path, *extra: str) -> list[str]:
    return ["certify", "--model", str(model), "--data-dir", str(fmnist), "--out", str(out), "--quiet", *extra]


def _writes(monkeypatch) -> list[int]:
    """Record how many rows each ResultWriter.write call appends."""
    from smoothcert.io.logs import ResultWriter

    sizes: list[int] = []
    original = ResultWriter.write

    def write(self, rows):
        rows = list(rows)
        sizes.append(len(rows))
        original(self, rows)

    monkeypatch.setattr(ResultWriter, "write", write)
    return sizes


def test_each_example_is_written_alone_when_n_exceeds_the_batch(tmp_path, model_dir, fmnist, monkeypatch):
    """n > batch: every example goes to the log as soon as it is done, with its own time (no
    chunk of examples is lost to a crash, and the time column is not a chunk average)."""
    sizes = _writes(monkeypatch)
    args = ["--n0", "10", "--n", "64", "--batch", "40", "--max", "6"]
    assert main(_certify_args(model_dir, fmnist, tmp_path / "big.tsv", *args)) == 0
    assert sizes == [1] * 6
    # positive control: when an example's draws fit in a batch, examples still share passes
    sizes.clear()
    args = ["--n0", "10", "--n", "30", "--batch", "100", "--max", "6"]
    assert main(_certify_args(model_dir, fmnist, tmp_path / "small.tsv", *args)) == 0
    assert max(sizes) > 1 and sum(sizes) == 6


def _other_weights(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the model directory holding a second, different weights file other.safetensors."""
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / "two"
    shutil.copytree(model_dir, d)
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(d / "model.safetensors").items()}
    save_file(weights, d / "other.safetensors")
    return d / "other.safetensors"


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_identity_is_the_file_given(tmp_path, model_dir, fmnist):
    other = _other_weights(model_dir, tmp_path)
    out = tmp_path / "o.tsv"
    assert main(_certify_args(other, fmnist, out, "--n0", "5", "--n", "20", "--max", "1")) == 0
    identity = json.loads(Path(str(out) + ".json").read_text())["identity"]
    assert identity["model_sha256"] == _sha256(other)
    assert identity["model_sha256"] != _sha256(other.parent / "model.safetensors")


def test_deepfool_log_refuses_to_resume_onto_another_model(capsys, tmp_path, model_dir, fmnist):
    other = _other_weights(model_dir, tmp_path)
    out = tmp_path / "df.tsv"
    common = ["attack", "--deepfool", "--data-dir", str(fmnist), "--max", "2", "--out", str(out)]
    assert main([*common, "--model", str(model_dir)]) == 0
    capsys.readouterr()
    before = out.read_bytes()
    err = _error(capsys, [*common, "--model", str(other)])
    assert "different configuration" in err and "model_sha256" in err
    assert out.read_bytes() == before
    assert main([*common, "--model", str(model_dir)]) == 0  # positive control: the same model resumes


def test_demo_with_no_sigmas_is_a_one_line_error(capsys, tmp_path):
    err = _error(capsys, ["demo", "--sigmas", "", "--out", str(tmp_path / "demo")])
    assert "sigmas" in err
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", [["--radius", "0.25"], ["--radius-cap", "0.5"], ["--eval-label"]])
def test_adaptive_certify_resumes_with_identical_rows(tmp_path, model_dir, fmnist, mode):
    common = [
        *("certify", "--model", str(model_dir), "--data-dir", str(fmnist), "--adaptive", *mode),
        *("--n-max", "2000", "--batch", "256", "--max", "20", "--seed", "3", "--quiet"),
    ]
    full = tmp_path / "full.tsv"
    assert _run_cli([*common, "--out", str(full)]).returncode == 0
    want = _rows(full)
    assert want[0][:10] == [
        "idx",
        "label",
        "predict",
        "radius",
        "correct",
        "time",
        "n_used",
        "decision",
        "stage",
        "p_upper",
    ]
    assert len(want) == 21 and {r[7] for r in want[1:]} <= {"certified", "not_certified", "undecided"}
    assert all(int(r[6]) <= 2000 + 100 for r in want[1:])
    # a run stopped after 8 rows with a torn 9th line resumes to the same rows
    part = tmp_path / "part.tsv"
    lines = full.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:9]) + lines[9][:7])
    (tmp_path / "part.tsv.json").write_text((tmp_path / "full.tsv.json").read_text())
    assert _run_cli([*common, "--out", str(part)]).returncode == 0
    strip = lambda rows: [r[:5] + r[6:] for r in rows]  # noqa: E731  (the time column differs)
    assert strip(_rows(part)) == strip(want)
    # a different decision radius is another configuration: refused, file untouched
    before = part.read_text()
    other = [*common[: common.index("--adaptive") + 1], "--radius", "0.75", *common[common.index("--n-max") :]]
    proc = _run_cli([*other, "--out", str(part)])
    assert proc.returncode == 2 and "different configuration" in proc.stderr and part.read_text() == before


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"n_max": 5000}, "n_max only apply to sequential certification"),
        ({"beta": 0.01, "radius_tol": 0.1}, "radius_tol, beta only apply to sequential certification"),
        ({"eval_label": True}, "eval_label only apply"),
        ({"adaptive": True, "radius": 0.5, "radius_cap": 1.0}, "cannot be combined with radius_cap"),
        ({"adaptive": True, "command": "predict"}, "adaptive applies to certify only"),
    ],
)
def test_sequential_settings_are_refused_where_they_would_be_ignored(kwargs, fragment):
    from smoothcert.runs.certify import RunConfig

    args = {"command": "certify", "model": "m", "out": "o.tsv"} | kwargs
    with pytest.raises(ValueError) as info:
        RunConfig(**args)
    assert fragment in str(info.value)


@pytest.mark.slow
def test_resume_refuses_a_change_of_precision(tmp_path, model_dir, fmnist, monkeypatch, capsys):
    # on every CPU: the precision is part of the identity, so a resume with --amp bf16 is refused by the
    # identity check (before any model runs). The CPU check is lifted so that the refusal tested is the
    # identity's, not the early "needs native bf16" one.
    import smoothcert.runs.certify as certify_run

    monkeypatch.setattr(certify_run, "cpu_supports_bf16", lambda: True)
    common = ["certify", "--model", str(model_dir), "--data-dir", str(fmnist), "--n", "50", "--max", "3", "--quiet"]
    out = tmp_path / "c.tsv"
    assert main([*common, "--out", str(out)]) == 0
    before = out.read_text()
    capsys.readouterr()
    assert main([*common, "--out", str(out)]) == 0  # control: the same settings resume (nothing left to do)
    assert main([*common, "--amp", "bf16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "amp: None there, 'bf16' now" in err, err
    assert out.read_text() == before


def test_bf16_on_a_cpu_without_it_is_refused_before_writing(tmp_path, model_dir, fmnist, monkeypatch, capsys):
    import smoothcert.runs.certify as certify_run

    monkeypatch.setattr(certify_run, "cpu_supports_bf16", lambda: False)
    out = tmp_path / "c.tsv"
    args = ["certify", "--model", str(model_dir), "--data-dir", str(fmnist), "--n", "50", "--max", "3", "--quiet"]
    assert main([*args, "--amp", "bf16", "--device", "cpu", "--out", str(out)]) == 2
    assert "needs native bf16" in capsys.readouterr().err
    assert not out.exists()
