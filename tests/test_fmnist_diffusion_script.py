"""benchmarks/fmnist_diffusion.sh, dry-run: the script runs with a stub in place of ``smoothcert`` that only
records its arguments, and every recorded command line must parse with smoothcert's own parser. Checks the
measured DDPM configuration is the default, and that CLASSIFIER=DIR and DIFFUSION=DIR skip training."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from smoothcert.cli.main import build_parser

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fmnist_diffusion.sh"


def _dry_run(tmp_path: Path, **env: str) -> list[list[str]]:
    """The smoothcert command lines the script runs, in order."""
    calls = tmp_path / "calls"
    calls.mkdir()
    stub = tmp_path / "smoothcert-stub"
    stub.write_text(f'#!/bin/sh\nf="{calls}/$(ls "{calls}" | wc -l | tr -d " ")"\nprintf "%s\\0" "$@" > "$f"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SMOOTHCERT": str(stub), **env}
    subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=environ, check=True, timeout=60)
    files = sorted(calls.iterdir(), key=lambda p: int(p.name))
    return [[a.decode() for a in f.read_bytes().split(b"\0")[:-1]] for f in files]


def _parses(line: list[str]) -> None:
    build_parser(line[0]).parse_args(line)  # argparse exits (SystemExit) on an unknown flag or a bad choice


def _value(line: list[str], flag: str) -> str:
    return line[line.index(flag) + 1]


def test_default_run_trains_the_measured_ddpm_and_every_line_parses(tmp_path):
    lines = _dry_run(tmp_path)
    for line in lines:
        _parses(line)
    commands = [line[0] for line in lines]
    assert commands.count("train-diffusion") == 1
    ddpm = next(line for line in lines if line[0] == "train-diffusion")
    measured = {"--epochs": "8", "--channels": "16,32,32", "--batch": "64", "--lr": "5e-4"}
    assert {flag: _value(ddpm, flag) for flag in measured} == measured and "--train-limit" not in ddpm
    undefended = str(tmp_path / "out" / "undefended")
    plain = [line for line in lines if line[0] == "train" and _value(line, "--sigma") == "0"]
    assert [_value(line, "--out") for line in plain] == [undefended]
    through = [line for line in lines if line[0] == "certify" and "--diffusion" in line]
    assert sorted(_value(line, "--sigma") for line in through) == ["0.25", "0.5"]
    assert {_value(line, "--model") for line in through} == {undefended}
    assert commands.count("certify") == 8 and commands.count("analyze") == 4
    alone = [line for line in lines if line[0] == "certify" and _value(line, "--model") == undefended]
    assert len(alone) == 6  # per sigma: alone, through the DDPM, through the DnCNN


def test_classifier_and_diffusion_directories_are_reused(tmp_path):
    lines = _dry_run(tmp_path, CLASSIFIER="/given/clf", DIFFUSION="/given/ddpm", EPOCHS="2")
    for line in lines:
        _parses(line)
    assert not [line for line in lines if line[0] == "train-diffusion"]
    assert not [line for line in lines if line[0] == "train" and _value(line, "--sigma") == "0"]
    assert len([line for line in lines if line[0] == "train"]) == 2  # the Gaussian-trained comparisons only
    through = [line for line in lines if line[0] == "certify" and "--diffusion" in line]
    assert {(_value(line, "--model"), _value(line, "--diffusion")) for line in through} == {
        ("/given/clf", "/given/ddpm")
    }
    denoisers = [line for line in lines if line[0] == "train-denoiser"]
    assert len(denoisers) == 4 and {_value(line, "--classifier") for line in denoisers} == {"/given/clf"}


def test_gaussian_models_are_reused_from_a_demo_directory(tmp_path):
    lines = _dry_run(tmp_path, CLASSIFIER="/given/clf", DIFFUSION="/given/ddpm", GAUSSIAN="/demo")
    assert not [line for line in lines if line[0] == "train"]
    models = {_value(line, "--model") for line in lines if line[0] == "certify"}
    assert models == {"/given/clf", "/demo/model_sigma_0.25", "/demo/model_sigma_0.5"}
