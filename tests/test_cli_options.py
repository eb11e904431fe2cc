"""Options derived from the config dataclasses, rows written by column name, and the attack's checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from synthdata import write_idx_dataset

from smoothcert.cli.main import build_parser, main
from smoothcert.cli.options import add_options, build_config
from smoothcert.io.logs import CERTIFY_COLUMNS, PREDICT_COLUMNS, ResultWriter


def _config(cls, argv, **fixed):
    args = build_parser().parse_args(argv)
    from smoothcert.cli import denoiser, train

    overrides = {"train": train.OVERRIDES, "train-denoiser": denoiser.OVERRIDES}.get(args.command)
    return build_config(cls, args, overrides=overrides, **fixed)


def test_run_options_defaults_are_the_config_defaults():
    from smoothcert.runs.certify import RunConfig

    assert _config(RunConfig, ["certify", "--model", "m", "--out", "o"], command="certify") == RunConfig(
        command="certify", model="m", out="o"
    )
    got = _config(
        RunConfig, ["predict", "--model", "m", "--out", "o", "--quiet", "--no-channels-last"], command="predict"
    )
    assert got == RunConfig(command="predict", model="m", out="o", progress=False, channels_last=False)


def test_every_config_field_is_an_option_and_only_certify_takes_n0():
    from smoothcert.runs.certify import RunConfig

    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    certify = {a.dest for a in sub["certify"]._actions}
    predict = {a.dest for a in sub["predict"]._actions}
    fields = {f.name for f in dataclasses.fields(RunConfig)} - {"command", "progress", "sound"}
    assert fields | {"quiet", "float_noise"} <= certify  # sound's flag is --float-noise (negated)
    assert "n0" not in predict and "adaptive" not in predict and "n" in predict


def test_noise_and_norm_choices_come_from_the_registry():
    from smoothcert.core.radii import NORMS
    from smoothcert.smoothing.noises import NOISES

    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in ("certify", "predict", "train"):
        actions = {a.dest: a for a in sub[command]._actions}
        assert tuple(actions["noise"].choices) == NOISES
    assert tuple({a.dest: a for a in sub["certify"]._actions}["norm"].choices) == NORMS


def test_train_and_denoiser_configs_round_trip():
    from smoothcert.training.denoiser import DenoiserConfig
    from smoothcert.training.loop import TrainConfig

    argv = ["train", "--dataset", "fashion-mnist", "--arch", "small_cnn", "--sigma", "0.25", "--out", "o"]
    assert _config(TrainConfig, [*argv, "--epochs", "3"], method_params={}) == TrainConfig(
        dataset="fashion-mnist", arch="small_cnn", sigma=0.25, out="o", epochs=3
    )
    argv = ["train-denoiser", "--classifier", "c", "--sigma", "0.5", "--out", "o", "--depth", "5"]
    assert _config(DenoiserConfig, argv) == DenoiserConfig(classifier="c", sigma=0.5, out="o", depth=5)


def test_a_new_field_becomes_an_option():
    """Positive control for the derivation: a field declared once is a flag with its default and type."""
    import argparse

    @dataclasses.dataclass(frozen=True)
    class Demo:
        out: str
        rate: float = 0.5
        steps: int = dataclasses.field(default=3, metadata={"min": 1, "help": "steps"})
        radii: tuple[float, ...] | None = None
        fast: bool = True

    p = argparse.ArgumentParser()
    add_options(p, Demo)
    args = p.parse_args(["--out", "x", "--rate", "2", "--radii", "1,2", "--no-fast"])
    assert build_config(Demo, args) == Demo(out="x", rate=2.0, radii=(1.0, 2.0), fast=False)
    with pytest.raises(SystemExit):
        p.parse_args(["--out", "x", "--steps", "0"])


def test_rows_are_written_by_column_name(tmp_path):
    out = tmp_path / "p.tsv"
    side = {"identity": {"k": 1}}
    row = {c: i for i, c in enumerate(PREDICT_COLUMNS)}
    with ResultWriter(out, PREDICT_COLUMNS, sidecar=side) as w:
        w.write([dict(reversed(list(row.items())))])  # the mapping's order does not matter
    assert out.read_text().splitlines()[1] == "\t".join(str(i) for i in range(len(PREDICT_COLUMNS)))
    with ResultWriter(out, PREDICT_COLUMNS, sidecar=side) as w:  # positive control: a wrong schema is refused
        with pytest.raises(ValueError, match="missing \\['pvalue'\\]"):
            w.write([{k: v for k, v in row.items() if k != "pvalue"}])
        with pytest.raises(ValueError, match="unexpected \\['p_lower'\\]"):
            w.write([{**{k: v for k, v in row.items() if k != "pvalue"}, "p_lower": 0}])
    assert len(out.read_text().splitlines()) == 2


@pytest.fixture(scope="module")
def certified(tmp_path_factory):
    root = tmp_path_factory.mktemp("atk")
    data = write_idx_dataset(root / "data", n_train=64, n_test=8)
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", str(data), "--arch", "small_cnn", "--sigma", "0.25"]
    assert main([*args, "--out", str(root / "m"), "--epochs", "1", "--batch", "32", "--quiet"]) == 0
    common = ["certify", "--model", str(root / "m"), "--data-dir", str(data), "--n0", "10", "--n", "50"]
    common += ["--max", "4", "--quiet"]
    assert main([*common, "--out", str(root / "c.tsv")]) == 0
    assert main([*common, "--noise", "laplace", "--norm", "l1", "--out", str(root / "l1.tsv")]) == 0
    return root, data


def _other_weights(model: Path, dest: Path) -> Path:
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(model, dest)
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(dest / "model.safetensors").items()}
    save_file(weights, dest / "model.safetensors")
    return dest


def _attack(root: Path, data: Path, model: Path, log: str, out: Path, *extra: str) -> list[str]:
    return [
        *("attack", "--model", str(model), "--certify-log", str(root / log), "--data-dir", str(data)),
        *("--radii", "0.1", "--steps", "1", "--num-noise", "2", "--n", "20", "--max", "1", "--out", str(out), *extra),
    ]


def _one_line_refusal(capsys, args: list[str], out: Path) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("smoothcert: error: "), err
    assert not out.exists() and not Path(str(out) + ".json").exists()
    return err


def test_attack_refuses_a_model_the_log_did_not_certify(capsys, tmp_path, certified):
    root, data = certified
    other = _other_weights(root / "m", tmp_path / "other")
    out = tmp_path / "a.tsv"
    err = _one_line_refusal(capsys, _attack(root, data, other, "c.tsv", out), out)
    assert "is not the model certify log" in err and "sha256" in err
    assert main(_attack(root, data, root / "m", "c.tsv", out)) == 0  # positive control: the certified model
    assert json.loads(Path(str(out) + ".json").read_text())["identity"]["sigma"] == 0.25


def test_attack_refuses_logs_whose_attack_is_not_implemented(capsys, tmp_path, certified):
    root, data = certified
    out = tmp_path / "a.tsv"
    err = _one_line_refusal(capsys, _attack(root, data, root / "m", "l1.tsv", out), out)
    assert "certifies l1 radii under laplace noise" in err and "L2 PGD" in err
    err = _one_line_refusal(capsys, _attack(root, data, root / "m", "c.tsv", out, "--sigma", "0.5"), out)
    assert "--sigma 0.5 contradicts the certify log's sigma 0.25" in err


def test_sidecar_records_layout_outside_the_identity(certified):
    root, _ = certified
    side = json.loads((root / "c.tsv.json").read_text())
    assert side["layout"] == {"channels_last": True, "pass_size": "auto"}
    assert "channels_last" not in side["identity"] and "pass_size" not in side["identity"]
    assert tuple((root / "c.tsv").read_text().splitlines()[0].split("\t")) == CERTIFY_COLUMNS
