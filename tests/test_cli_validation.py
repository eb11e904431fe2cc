"""The whole configuration is validated before any file is written; errors and warnings are one line.

Each refused setting must exit with status 2, print exactly one line ``smoothcert: error: ...``
and leave neither the log nor its sidecar behind; the corrected command must then succeed
(the positive control: the refusal was the setting, not the fixture).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from synthdata import write_cifar10, write_idx_dataset

from smoothcert.cli.main import main


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    return write_idx_dataset(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=12)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, fmnist) -> Path:
    out = tmp_path_factory.mktemp("run") / "model"
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist), "--arch", "small_cnn"]
    args += ["--sigma", "0.25", "--out", str(out), "--epochs", "1", "--batch", "32", "--train-limit", "32", "--quiet"]
    assert main(args) == 0
    return out


def _copy_model(model_dir: Path, dest: Path, **meta_changes: object) -> Path:
    """A copy of the model directory whose model.json has ``meta_changes`` (weights unchanged)."""
    shutil.copytree(model_dir, dest)
    meta = json.loads((dest / "model.json").read_text())
    (dest / "model.json").write_text(json.dumps({**meta, **meta_changes}))
    return dest


def _denoiser(dest: Path, **meta_changes: object) -> Path:
    """A small DnCNN denoiser directory in smoothcert's format (untrained weights: only the metadata matters)."""
    import torch

    from smoothcert.io.checkpoints import save_model
    from smoothcert.models.denoisers import DnCNN

    torch.manual_seed(0)
    meta = {"kind": "denoiser", "arch": "dncnn", "depth": 3, "width": 4, "input_shape": [1, 28, 28]}
    meta |= {"dataset": "fashion-mnist", "sigma": 0.5, "noise": "gaussian", **meta_changes}
    save_model(dest, DnCNN(1, depth=3, width=4), meta)
    return dest


def _certify(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["certify", "--model", str(model), "--data-dir", str(data), "--out", str(out), "--quiet", *extra]


_SMALL = ("--n0", "5", "--n", "20", "--max", "1", "--batch", "100")


def _refused(capsys, args: list[str], out: Path) -> str:
    """Run ``args``: exit 2, one line ``smoothcert: error: ...`` (after any one-line warnings), no file written."""
    assert main(args) == 2
    lines = capsys.readouterr().err.splitlines()
    errors = [ln for ln in lines if not ln.startswith("smoothcert: warning: ")]
    assert len(errors) == 1 and errors[0].startswith("smoothcert: error: "), lines
    err = errors[0] + "\n"
    assert not out.exists() and not Path(str(out) + ".json").exists(), "a refused run wrote a file"
    return err


def _sidecar(out: Path) -> dict:
    return json.loads(Path(str(out) + ".json").read_text())


@pytest.mark.parametrize(
    ("bad", "fragment", "good"),
    [
        (["--radius", "-1"], "radius must be >= 0", ["--radius", "0.1"]),
        (["--beta", "2"], "beta must be in (0, 1)", ["--beta", "0.01"]),
        (["--radius-tol", "-1"], "radius_tol must be >= 0", ["--radius-tol", "0.1"]),
        (["--radius", "100"], "cannot be certified in l2 with gaussian noise", ["--radius", "0.5"]),
        (  # uniform noise has bounded radii: lam = sqrt(3) * 0.25 ~ 0.43 in l1
            ["--noise", "uniform", "--norm", "l1", "--radius", "1"],
            "cannot be certified in l1 with uniform noise",
            ["--noise", "uniform", "--norm", "l1", "--radius", "0.1"],
        ),
    ],
)
def test_bad_sequential_settings_write_nothing(capsys, tmp_path, model_dir, fmnist, bad, fragment, good):
    out = tmp_path / "seq.tsv"
    common = [*_certify(model_dir, fmnist, out), "--adaptive", "--n-max", "200", "--max", "1"]
    err = _refused(capsys, [*common, *bad], out)
    assert fragment in err, err
    assert main([*common, *good]) == 0  # the corrected run is not refused as "a different configuration"
    assert len(out.read_text().splitlines()) == 2


def test_model_and_data_shapes_are_compared_before_writing(capsys, tmp_path, model_dir):
    cifar = write_cifar10(tmp_path / "cifar", per_batch=2, n_test=2)
    out = tmp_path / "c.tsv"
    err = _refused(capsys, [*_certify(model_dir, cifar, out, *_SMALL), "--dataset", "cifar10"], out)
    assert "[1, 28, 28]" in err and "[3, 32, 32]" in err and "xs" not in err


def test_another_data_set_than_the_models_is_one_warning(capsys, tmp_path, model_dir, fmnist):
    out = tmp_path / "m.tsv"
    assert main([*_certify(model_dir, fmnist, out, *_SMALL), "--dataset", "mnist"]) == 0  # same IDX names
    err = capsys.readouterr().err
    assert err == "smoothcert: warning: the model was trained on 'fashion-mnist' but the data set is 'mnist'\n"
    assert main(_certify(model_dir, fmnist, tmp_path / "f.tsv", *_SMALL)) == 0
    assert capsys.readouterr().err == "", "positive control: no warning on the model's own data set"


def test_denoiser_sets_noise_and_sigma_defaults(capsys, tmp_path, model_dir, fmnist):
    laplace = _copy_model(model_dir, tmp_path / "laplace", noise="laplace", sigma=0.25)
    den = _denoiser(tmp_path / "den", sigma=0.5)
    out = tmp_path / "d.tsv"
    assert main([*_certify(laplace, fmnist, out, *_SMALL), "--denoiser", str(den)]) == 0
    assert capsys.readouterr().err == ""
    identity = _sidecar(out)["identity"]
    assert identity["sigma"] == 0.5 and "noise" not in identity  # Gaussian l2, the denoiser's
    # positive control: without the denoiser the classifier's (laplace) noise is the default
    out2 = tmp_path / "l.tsv"
    assert main([*_certify(laplace, fmnist, out2, *_SMALL), "--norm", "l1"]) == 0
    assert _sidecar(out2)["identity"]["noise"] == "laplace"


def test_denoiser_mismatches_warn(capsys, tmp_path, model_dir, fmnist):
    den = _denoiser(tmp_path / "den", sigma=0.5, dataset="mnist")
    out = tmp_path / "w.tsv"
    args = [*_certify(model_dir, fmnist, out, *_SMALL), "--denoiser", str(den), "--sigma", "1.0"]
    assert main([*args, "--noise", "uniform", "--norm", "l1"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert all(ln.startswith("smoothcert: warning: ") for ln in lines), lines
    text = "\n".join(lines)
    assert "sigma=1 with a denoiser trained at sigma=0.5" in text
    assert "uniform noise a denoiser trained to remove gaussian noise" in text
    assert "denoiser was trained on 'mnist'" in text
    assert len(lines) == 3


def test_model_trained_without_noise_asks_for_sigma(capsys, tmp_path, model_dir, fmnist):
    plain = _copy_model(model_dir, tmp_path / "plain", sigma=0.0)
    out = tmp_path / "p.tsv"
    err = _refused(capsys, _certify(plain, fmnist, out, *_SMALL), out)
    assert "trained without noise" in err and "pass --sigma or --denoiser" in err
    assert main([*_certify(plain, fmnist, out, *_SMALL), "--sigma", "0.25"]) == 0


def test_debug_shows_the_traceback_of_a_caught_error(capsys, tmp_path, model_dir, fmnist):
    out = tmp_path / "x.tsv"
    assert main(["--debug", *_certify(model_dir, fmnist, out, "--adaptive", "--radius", "-1")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("smoothcert: error: radius must be >= 0")
    assert main([*_certify(model_dir, fmnist, out, "--adaptive", "--radius", "-1"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err  # also accepted after the command


def test_a_bug_is_not_turned_into_a_user_error(monkeypatch, tmp_path, model_dir, fmnist):
    """Only SmoothcertError and OSError are one-line errors: a TypeError or KeyError inside is a bug."""
    import smoothcert.runs.certify as certify_run

    for exc in (TypeError("internal"), KeyError("xs")):

        def broken(*a, _exc=exc, **k):
            raise _exc

        monkeypatch.setattr(certify_run, "run", broken)
        with pytest.raises(type(exc)):
            main(_certify(model_dir, fmnist, tmp_path / "b.tsv", *_SMALL))


def test_missing_data_is_one_line(capsys, tmp_path, model_dir):
    out = tmp_path / "o.tsv"
    err = _refused(capsys, _certify(model_dir, tmp_path / "nowhere", out), out)
    assert "nowhere" in err


def test_truncated_data_file_is_one_line(capsys, tmp_path, model_dir):
    data = write_idx_dataset(tmp_path / "trunc", n_train=8, n_test=8)
    target = data / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:100])  # a download cut short
    out = tmp_path / "o.tsv"
    _refused(capsys, _certify(model_dir, data, out), out)


def test_visualize_refuses_negative_sigmas(capsys, tmp_path, fmnist):
    out = tmp_path / "g.png"
    args = ["visualize", "--dataset", "fashion-mnist", "--data-dir", str(fmnist), "--count", "2", "--out", str(out)]
    err = _refused(capsys, [*args, "--sigmas", "0,-1"], out)
    assert "--sigmas must be finite and >= 0, got -1" in err
    assert main([*args, "--sigmas", "0,0.5"]) == 0 and out.exists()


def test_import_of_a_directory_says_so(capsys, tmp_path, model_dir):
    out = tmp_path / "imported"
    err = _refused(capsys, ["import", str(model_dir), "--out", str(out)], out)
    assert "is a directory, not a checkpoint file" in err and "--model" in err and "does not exist" not in err
