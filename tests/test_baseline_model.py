"""``smoothcert baseline`` keeps its trained network as a model directory (issue 25 §2).

The directory is what ``smoothcert train`` writes (``model.safetensors`` + ``model.json``, read by
:func:`smoothcert.io.checkpoints.load_model`, nothing unpickled); the log's identity names its sha256.
The reloaded network must compute exactly the trained one's logits (bit for bit: same float32
parameters, same operations) and its certificates must reproduce the log's rows exactly. A second
run with the same training settings reuses the directory without training; other settings are refused
in one line, and ``overwrite`` retrains.
"""

from __future__ import annotations

import json

import pytest
import torch
from synthdata import write_idx_dataset

from smoothcert.baselines.run import certify_dataset
from smoothcert.cli.main import main
from smoothcert.core.errors import CheckpointError, ConfigError
from smoothcert.io.checkpoints import checkpoint_sha256, load_model
from smoothcert.io.data import load_dataset
from smoothcert.io.logs import BASELINE_COLUMNS, read_rows
from smoothcert.runs.baseline import BaselineConfig, run_baseline

SETTINGS = {"epochs": 2, "hidden": "16,16", "max": 10, "lr": 5e-3}


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline_model")
    data = write_idx_dataset(root / "fmnist", n_train=64, n_test=20)
    config = BaselineConfig(out=str(root / "lip.tsv"), data_dir=str(data), **SETTINGS)
    return root, data, config, run_baseline(config)


def _test_batch(data, config):
    test = load_dataset("fashion-mnist", "test", str(data))
    idx = list(range(config.max))
    return idx, torch.stack([test[i][0] for i in idx]), torch.tensor([int(test[i][1]) for i in idx])


def _rows(path):
    return [r[:5] for r in read_rows(path, BASELINE_COLUMNS)]  # all but time


def test_the_model_directory_reloads_the_trained_network_and_its_certificates(first):
    root, data, config, result = first
    assert result.trained and result.model_dir == root / "lip.tsv.model"
    assert (result.model_dir / "model.safetensors").exists() and (result.model_dir / "model.json").exists()
    sidecar = json.loads((root / "lip.tsv.json").read_text())
    assert sidecar["identity"]["model_sha256"] == checkpoint_sha256(result.model_dir) == result.model_sha256
    model, meta = load_model(result.model_dir)
    assert meta["arch"] == "lipschitz_mlp" and meta["arch_params"]["hidden"] == [16, 16]
    idx, xt, yt = _test_batch(data, config)
    with torch.no_grad():
        assert torch.equal(model(xt), result.model(xt))
    run = certify_dataset(model, xt, yt, indices=idx)
    logged = _rows(result.log)
    assert len(logged) == config.max
    assert [[str(r.idx), str(r.label), str(r.predict), repr(r.radius), str(r.correct)] for r in run.rows] == logged
    assert sidecar["lipschitz"] == run.bound.value
    assert any(float(r[3]) > 0 for r in logged)  # the comparison covers real radii, not only zeros


def test_a_second_run_reuses_the_model_without_training(first, monkeypatch, tmp_path):
    _, data, _, result = first

    def no_training(*args, **kwargs):
        raise AssertionError("the baseline was retrained although its model directory was reusable")

    monkeypatch.setattr("smoothcert.baselines.train.train_lipschitz_margin", no_training)
    again = BaselineConfig(
        out=str(tmp_path / "again.tsv"), data_dir=str(data), model_dir=str(result.model_dir), **SETTINGS
    )
    reused = run_baseline(again)
    assert not reused.trained and reused.model_sha256 == result.model_sha256
    assert _rows(reused.log) == _rows(result.log)
    assert json.loads((tmp_path / "again.tsv.json").read_text())["model_reused"] is True
    # positive control: the patched training does run (and fail) where no model can be reused
    fresh = BaselineConfig(out=str(tmp_path / "fresh.tsv"), data_dir=str(data), **SETTINGS)
    with pytest.raises(AssertionError, match="retrained"):
        run_baseline(fresh)


def test_other_settings_are_refused_in_one_line_and_overwrite_retrains(first, tmp_path, capsys):
    _, data, _, result = first
    model_dir = tmp_path / "m"
    base = BaselineConfig(out=str(tmp_path / "a.tsv"), data_dir=str(data), model_dir=str(model_dir), **SETTINGS)
    sha = run_baseline(base).model_sha256
    assert sha == result.model_sha256  # seeded: the same settings train the same weights
    other = {**SETTINGS, "epsilon": 0.3}
    with pytest.raises(ConfigError, match=r"epsilon: 0\.5 there, 0\.3 now") as err:
        run_baseline(BaselineConfig(out=str(tmp_path / "b.tsv"), data_dir=str(data), model_dir=str(model_dir), **other))
    assert "\n" not in str(err.value) and not (tmp_path / "b.tsv").exists()
    assert checkpoint_sha256(model_dir) == sha  # refused before anything was written
    args = ["baseline", "--data-dir", str(data), "--out", str(tmp_path / "c.tsv"), "--model-dir", str(model_dir)]
    args += ["--epochs", "2", "--hidden", "16,16", "--max", "10", "--lr", "0.005", "--epsilon", "0.3"]
    assert main(args) == 2
    err_text = capsys.readouterr().err.strip()
    assert len(err_text.splitlines()) == 1 and "epsilon" in err_text
    assert main([*args, "--overwrite"]) == 0
    assert "trained and saved" in capsys.readouterr().out
    new_sha = checkpoint_sha256(model_dir)
    assert new_sha != sha
    assert json.loads((tmp_path / "c.tsv.json").read_text())["identity"]["model_sha256"] == new_sha
    assert json.loads((model_dir / "model.json").read_text())["baseline"]["epsilon"] == 0.3


def test_other_models_and_interrupted_saves_are_not_reused(first, tmp_path):
    _, data, _, result = first
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.safetensors").write_bytes((result.model_dir / "model.safetensors").read_bytes())
    (foreign / "model.json").write_text(json.dumps({"arch": "small_cnn", "sigma": 0.25}))
    for overwrite in (False, True):  # another kind of model is never replaced
        cfg = BaselineConfig(
            out=str(tmp_path / f"f{overwrite}.tsv"),
            data_dir=str(data),
            model_dir=str(foreign),
            overwrite=overwrite,
            **SETTINGS,
        )
        with pytest.raises(ConfigError, match="not written by 'smoothcert baseline'"):
            run_baseline(cfg)
    assert json.loads((foreign / "model.json").read_text())["arch"] == "small_cnn"
    run_dir = tmp_path / "run"  # e.g. an unfinished 'smoothcert train' directory: no model yet, other files
    run_dir.mkdir()
    (run_dir / "checkpoint.safetensors").write_bytes(b"")
    cfg = BaselineConfig(
        out=str(tmp_path / "r.tsv"), data_dir=str(data), model_dir=str(run_dir), overwrite=True, **SETTINGS
    )
    with pytest.raises(ConfigError, match="holds other files but no model"):
        run_baseline(cfg)
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.safetensors"]
    torn = tmp_path / "torn"  # weights renamed into place, model.json not yet: an interrupted save
    torn.mkdir()
    (torn / "model.safetensors").write_bytes((result.model_dir / "model.safetensors").read_bytes())
    cfg = BaselineConfig(out=str(tmp_path / "t.tsv"), data_dir=str(data), model_dir=str(torn), **SETTINGS)
    with pytest.raises(CheckpointError, match=r"no model\.json"):
        run_baseline(cfg)
    cfg = BaselineConfig(
        out=str(tmp_path / "t.tsv"), data_dir=str(data), model_dir=str(torn), overwrite=True, **SETTINGS
    )
    assert run_baseline(cfg).trained and (torn / "model.json").exists()


def test_load_model_needs_the_lipschitz_widths_and_other_archs_take_none(first, tmp_path):
    _, _, _, result = first
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((result.model_dir / "model.safetensors").read_bytes())
    meta = json.loads((result.model_dir / "model.json").read_text())
    (broken / "model.json").write_text(json.dumps({**meta, "arch_params": {"in_features": 784}}))
    with pytest.raises(ConfigError, match="lipschitz_mlp' needs arch_params"):
        load_model(broken)
    (broken / "model.json").write_text(json.dumps({**meta, "arch_params": {"hidden": [16, 32], "in_features": 784}}))
    with pytest.raises(CheckpointError, match=r"does not fit its model\.json"):
        load_model(broken)
    (broken / "model.json").write_text(json.dumps({**meta, "arch": "small_cnn"}))
    with pytest.raises(ConfigError, match="'small_cnn' takes no arch_params"):
        load_model(broken)
