"""``smoothcert attack`` rebuilds the classifier a certify log certified, key by key (issue 25 §2).

Every identity key of a certify log is on attack's allow-list (rebuilt, or describing only how
the certificate was computed); an unknown key is refused, naming it. The rows of the certify
logs below are edited to mark every example certified-correct at radius 0.1, so the attack has
targets whatever the one-epoch model certifies: the attack does not re-check certificates.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from synthdata import write_idx_dataset

from smoothcert.cli.main import main
from smoothcert.evaluation.attacks import onto_grid
from smoothcert.io.logs import ATTACK_COLUMNS, read_rows

REPO = Path(__file__).resolve().parents[1]


def _perturbed_copy(model: Path, dest: Path, shift: float) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, dest)
    weights = {k: v + shift if v.is_floating_point() else v for k, v in load_file(dest / "model.safetensors").items()}
    save_file(weights, dest / "model.safetensors")
    return dest


def _all_certified(log: Path) -> None:
    """Mark every row correct at radius 0.1 (targets for the attack)."""
    lines = log.read_text().splitlines()
    head = lines[0].split("\t")
    rows = [ln.split("\t") for ln in lines[1:]]
    for r in rows:
        r[head.index("radius")], r[head.index("correct")], r[head.index("predict")] = "0.1", "1", r[1]
    log.write_text("\n".join(["\t".join(head), *("\t".join(r) for r in rows)]) + "\n")


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rebuild")
    data = write_idx_dataset(root / "data", n_train=64, n_test=12)
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", str(data), "--arch", "small_cnn", "--sigma", "0.25"]
    assert main([*args, "--out", str(root / "m"), "--epochs", "1", "--batch", "32", "--quiet"]) == 0
    _perturbed_copy(root / "m", root / "m1", 0.01)
    _perturbed_copy(root / "m", root / "m2", -0.01)
    certify = ["certify", "--model", str(root / "m"), "--data-dir", str(data), "--n0", "10", "--n", "40"]
    certify += ["--alpha", "0.01", "--max", "3", "--device", "cpu", "--quiet"]
    variants = {
        "sound": [],
        "float": ["--float-noise"],
        "ensemble": ["--ensemble", f"{root / 'm1'},{root / 'm2'}", "--combine", "logits", "--consensus", "2"],
        "lift": ["--lift", "2", "--float-noise"],
        "adaptive": ["--adaptive", "--n-max", "200", "--radius-cap", "0.2"],
    }
    for name, extra in variants.items():
        assert main([*certify, *extra, "--out", str(root / f"{name}.tsv")]) == 0
        _all_certified(root / f"{name}.tsv")
    return root, data


def _attack(root: Path, data: Path, log: str, out: Path, *extra: str) -> list[str]:
    return [
        *("attack", "--model", str(root / "m"), "--certify-log", str(root / log), "--data-dir", str(data)),
        *("--multiples", "1.5", "--steps", "2", "--num-noise", "2", "--n", "20", "--max", "2", "--device", "cpu"),
        *("--out", str(out), *extra),
    ]


def _config(root: Path, data: Path, log: str, out: Path, *extra: str):
    from smoothcert.cli.main import build_parser
    from smoothcert.cli.options import build_config
    from smoothcert.runs.attack import AttackConfig

    return build_config(AttackConfig, build_parser("attack").parse_args(_attack(root, data, log, out, *extra)))


def _target(root: Path, data: Path, log: str, tmp_path: Path, *extra: str):
    from smoothcert.io.logs import read_sidecar
    from smoothcert.runs.attack import attack_target

    config = _config(root, data, log, tmp_path / "a.tsv", *extra)
    return attack_target(config, read_sidecar(root / log))


def _refused(capsys, args: list[str], out: Path) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("smoothcert: error: "), err
    assert not out.exists() and not Path(str(out) + ".json").exists()
    return err


def _edit_identity(src: Path, dest: Path, **changes) -> None:
    shutil.copy(src, dest)
    doc = json.loads(Path(str(src) + ".json").read_text())
    for key, value in changes.items():
        if value is None:
            doc["identity"].pop(key, None)
        else:
            doc["identity"][key] = value
    Path(str(dest) + ".json").write_text(json.dumps(doc))


def test_every_identity_key_certify_writes_is_on_the_allow_list(logs):
    from smoothcert.runs.attack import PROCEDURE_KEYS, REBUILT_KEYS

    root, _ = logs
    for name in ("sound", "float", "ensemble", "lift", "adaptive"):
        identity = json.loads((root / f"{name}.tsv.json").read_text())["identity"]
        assert set(identity) <= REBUILT_KEYS | PROCEDURE_KEYS, (name, set(identity) - REBUILT_KEYS - PROCEDURE_KEYS)


def test_an_unknown_identity_key_is_refused_naming_it(logs, tmp_path, capsys):
    root, data = logs
    _edit_identity(root / "sound.tsv", root / "unknown.tsv", frobnicate=3)
    out = tmp_path / "a.tsv"
    err = _refused(capsys, _attack(root, data, "unknown.tsv", out), out)
    assert "identity key 'frobnicate'" in err and "cannot rebuild" in err
    assert main(_attack(root, data, "sound.tsv", out)) == 0  # control: the same log without it is attacked


def test_sound_and_grid_are_rebuilt_and_the_attack_ends_on_the_grid(logs, tmp_path, capsys):
    root, data = logs
    target = _target(root, data, "sound.tsv", tmp_path)
    assert target.smoothed.sound and target.smoothed.grid == 255
    assert _target(root, data, "float.tsv", tmp_path).smoothed.grid is None
    out = tmp_path / "a.tsv"
    assert main(_attack(root, data, "sound.tsv", out)) == 0
    ident = json.loads(Path(str(out) + ".json").read_text())["identity"]
    assert ident["sound"] is True and ident["grid"] == 255
    assert all(float(r[4]) <= float(r[3]) for r in read_rows(out, ATTACK_COLUMNS))
    # --float-noise would attack another classifier than the sound-mode one the log certified
    out2 = tmp_path / "b.tsv"
    assert "certified in sound mode" in _refused(capsys, _attack(root, data, "sound.tsv", out2, "--float-noise"), out2)


def test_an_ensemble_log_is_attacked_as_the_ensemble(logs, tmp_path, capsys):
    from smoothcert.models.ensemble import Ensemble

    root, data = logs
    target = _target(root, data, "ensemble.tsv", tmp_path)
    base = target.smoothed.base_classifier
    assert isinstance(base, Ensemble) and len(base.members) == 3
    assert base.combine == "logits" and base.consensus == 2
    out = tmp_path / "a.tsv"
    assert main(_attack(root, data, "ensemble.tsv", out)) == 0
    ident = json.loads(Path(str(out) + ".json").read_text())["identity"]
    logged = json.loads((root / "ensemble.tsv.json").read_text())["identity"]
    assert ident["ensemble_sha256"] == logged["ensemble_sha256"] and ident["combine"] == "logits"
    assert ident["consensus"] == 2
    # members other than the certified ones: refused, naming the key
    _perturbed_copy(root / "m", tmp_path / "other", 0.02)
    out2 = tmp_path / "b.tsv"
    err = _refused(
        capsys, _attack(root, data, "ensemble.tsv", out2, "--ensemble", f"{root / 'm1'},{tmp_path / 'other'}"), out2
    )
    assert "ensemble_sha256" in err
    # an ensemble log whose members cannot be found, and --ensemble on a single-model log
    _edit_identity(root / "ensemble.tsv", root / "ens_nopaths.tsv")
    doc = json.loads((root / "ens_nopaths.tsv.json").read_text())
    doc["config"]["ensemble"] = None
    (root / "ens_nopaths.tsv.json").write_text(json.dumps(doc))
    assert "members were not found" in _refused(capsys, _attack(root, data, "ens_nopaths.tsv", out2), out2)
    err = _refused(capsys, _attack(root, data, "sound.tsv", out2, "--ensemble", str(root / "m1")), out2)
    assert "without an ensemble" in err


def test_a_lifted_log_is_attacked_at_the_lifted_resolution_and_sigma(logs, tmp_path, capsys):
    from smoothcert.smoothing.lifting import AvgPoolThen

    root, data = logs
    target = _target(root, data, "lift.tsv", tmp_path)
    assert target.smoothed.sigma == pytest.approx(0.5) and isinstance(target.smoothed.base_classifier, AvgPoolThen)
    assert tuple(target.plan.dataset[0][0].shape) == (1, 56, 56)
    out = tmp_path / "a.tsv"
    assert main(_attack(root, data, "lift.tsv", out)) == 0
    ident = json.loads(Path(str(out) + ".json").read_text())["identity"]
    assert ident["lift"] == 2 and ident["lifted_sigma"] == pytest.approx(0.5)
    # a log whose lifted sigma is not the one its lift gives: refused, naming the key
    _edit_identity(root / "lift.tsv", root / "lift_bad.tsv", lifted_sigma=0.75)
    out2 = tmp_path / "b.tsv"
    assert "in lifted_sigma: 0.75 there, 0.5 rebuilt" in _refused(
        capsys, _attack(root, data, "lift_bad.tsv", out2), out2
    )


def test_a_denoiser_and_amp_in_the_identity_are_rebuilt_or_refused(logs, tmp_path, capsys):
    from smoothcert.runtime.perf import cpu_supports_bf16

    root, data = logs
    _edit_identity(root / "sound.tsv", root / "den.tsv", denoiser_sha256="0" * 64)
    out = tmp_path / "a.tsv"
    assert "with a denoiser, but none was found" in _refused(capsys, _attack(root, data, "den.tsv", out), out)
    _edit_identity(root / "sound.tsv", root / "bf16.tsv", amp="bf16")
    if cpu_supports_bf16():
        assert _target(root, data, "bf16.tsv", tmp_path).smoothed.autocast_dtype == torch.bfloat16
    else:
        assert "bf16" in _refused(capsys, _attack(root, data, "bf16.tsv", out), out)
    assert _target(root, data, "sound.tsv", tmp_path).smoothed.autocast_dtype is None


def test_onto_grid_stays_in_the_ball_and_on_the_grid():
    g = torch.Generator().manual_seed(0)
    q = 255
    x = torch.randint(0, q + 1, (6, 1, 8, 8), generator=g).double() / q
    delta = torch.randn(x.shape, generator=g, dtype=torch.float64) * 0.7 / q  # under a grid step per pixel
    eps = delta.flatten(1).norm(dim=1)
    out = onto_grid(x, x + delta, grid=q, epsilon=eps)
    steps = out * q
    assert torch.allclose(steps, torch.round(steps), atol=1e-9)
    assert bool(((out - x).flatten(1).norm(dim=1) <= eps + 1e-12).all())
    assert bool(((out - (x + delta)).abs() <= 1 / q + 1e-12).all())  # within a step of the attack's point
    assert bool((out != x).any())  # it keeps part of the perturbation
    # positive control: rounding each coordinate to the nearest step leaves the ball for some example
    nearest = x + torch.round(delta * q) / q
    assert bool(((nearest - x).flatten(1).norm(dim=1) > eps).any())


def test_attack_resumes_its_own_log_with_identical_rows(logs, tmp_path):
    """Killed part way and run again (the same --multiples: 0.2 refused it, comparing a tuple with
    its JSON list), the attack log ends with the rows of one uninterrupted run."""
    root, data = logs
    shutil.copy(root / "sound.tsv", root / "many.tsv")
    shutil.copy(root / "sound.tsv.json", root / "many.tsv.json")
    head, *rows = (root / "many.tsv").read_text().splitlines()
    more = [ln.split("\t") for ln in rows]
    extra = []
    for i in range(3, 12):  # nine more certified-correct targets, examples 3..11
        r = list(more[0])
        r[0] = str(i)
        extra.append("\t".join(r))
    (root / "many.tsv").write_text("\n".join([head, *rows, *extra]) + "\n")

    def args(out: Path) -> list[str]:
        a = _attack(root, data, "many.tsv", out, "--n", "300", "--batch", "20", "--steps", "3")
        return [a[i] for i in range(len(a)) if not (a[i] == "--max" or (i and a[i - 1] == "--max"))]

    full = tmp_path / "full.tsv"
    assert main(args(full)) == 0
    assert len(read_rows(full, ATTACK_COLUMNS)) == 12
    part = tmp_path / "part.tsv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "smoothcert", *args(part)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and (not part.exists() or len(part.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(part.read_text().splitlines()) - 1
    assert 2 <= done < 12, "the run was killed part way"
    with part.open("a") as fh:  # a row torn by the kill
        fh.write("11\t4\t")
    assert main(args(part)) == 0
    assert read_rows(part, ATTACK_COLUMNS) == read_rows(full, ATTACK_COLUMNS)
    assert main(args(part)) == 0  # and once more: nothing to add, nothing refused
    assert read_rows(part, ATTACK_COLUMNS) == read_rows(full, ATTACK_COLUMNS)


def test_a_log_without_sidecar_is_attacked_in_sound_mode_unless_float_noise(logs, tmp_path):
    root, data = logs
    shutil.copy(root / "sound.tsv", root / "bare.tsv")  # no sidecar: the 2019 reference's kind of log
    with pytest.warns(UserWarning, match="in sound mode"):
        assert _target(root, data, "bare.tsv", tmp_path).smoothed.grid == 255
    with pytest.warns(UserWarning, match="in float mode"):
        assert _target(root, data, "bare.tsv", tmp_path, "--float-noise").smoothed.grid is None


# ------------------------------------------------------------------ diffusion denoised smoothing (issue 28)


@pytest.fixture(scope="module")
def diffusion_logs(logs):
    """A sound-mode certify log of the model through a tiny 28 x 28 diffusion model (certify --diffusion)."""
    pytest.importorskip("diffusers")
    from tinyddpm import write_tiny_diffusion

    root, data = logs
    ddpm = write_tiny_diffusion(root / "ddpm")
    certify = ["certify", "--model", str(root / "m"), "--data-dir", str(data), "--n0", "10", "--n", "40"]
    certify += ["--alpha", "0.01", "--max", "3", "--device", "cpu", "--quiet", "--diffusion", str(ddpm)]
    certify += ["--pass-size", "50"]  # no pass-size probe through the UNet: a faster test
    assert main([*certify, "--out", str(root / "diffusion.tsv")]) == 0
    _all_certified(root / "diffusion.tsv")
    return root, data, ddpm


def _dattack(root: Path, data: Path, log: str, out: Path, *extra: str) -> list[str]:
    return _attack(root, data, log, out, "--batch", "20", *extra)  # a small pass-size probe through the UNet


def _dtarget(root: Path, data: Path, log: str, tmp_path: Path, *extra: str):
    return _target(root, data, log, tmp_path, "--batch", "20", *extra)


def test_a_diffusion_log_is_attacked_through_its_diffusion_model(diffusion_logs, tmp_path):
    """The rebuilt base classifier is model(D(.)) with D the log's diffusion model at the log's timestep,
    and the attack log records both keys. (0.3 refused the log, its identity key diffusion_sha256 unknown.)"""
    from smoothcert.io.diffusion import diffusion_sha256
    from smoothcert.models.diffusion import DiffusionDenoiser
    from smoothcert.runs.attack import PROCEDURE_KEYS, REBUILT_KEYS

    root, data, ddpm = diffusion_logs
    logged = json.loads((root / "diffusion.tsv.json").read_text())["identity"]
    assert set(logged) <= REBUILT_KEYS | PROCEDURE_KEYS, set(logged) - REBUILT_KEYS - PROCEDURE_KEYS
    assert logged["diffusion_sha256"] == diffusion_sha256(ddpm)
    target = _dtarget(root, data, "diffusion.tsv", tmp_path)
    front = target.smoothed.base_classifier[0]
    assert isinstance(front, DiffusionDenoiser) and front.timestep == logged["diffusion_t"]
    assert target.smoothed.sigma == pytest.approx(0.25) and target.smoothed.grid == 255
    out = tmp_path / "a.tsv"
    assert main(_dattack(root, data, "diffusion.tsv", out)) == 0
    ident = json.loads(Path(str(out) + ".json").read_text())["identity"]
    assert (ident["diffusion_sha256"], ident["diffusion_t"]) == (logged["diffusion_sha256"], logged["diffusion_t"])
    rows = read_rows(out, ATTACK_COLUMNS)
    assert len(rows) == 2 and all(float(r[4]) <= float(r[3]) for r in rows)  # delta within the attack radius
    # a log without a diffusion model carries neither key into its attack log
    plain = _dtarget(root, data, "sound.tsv", tmp_path)
    assert "diffusion_sha256" not in plain.identity and "diffusion_t" not in plain.identity
    assert not any(isinstance(m, DiffusionDenoiser) for m in plain.smoothed.base_classifier.modules())


def test_a_changed_diffusion_directory_or_timestep_is_refused_naming_the_key(diffusion_logs, tmp_path, capsys):
    """The diffusion directory the log recorded, changed after certification (its weights moved by 1e-3),
    is refused in one line naming diffusion_sha256; positive control: the same log and directory before
    the change are attacked. A log whose timestep is not the one its sigma gives: refused naming diffusion_t."""
    from tinyddpm import perturb_diffusion

    root, data, ddpm = diffusion_logs
    copy = tmp_path / "ddpm-copy"
    shutil.copytree(ddpm, copy)
    doc = json.loads((root / "diffusion.tsv.json").read_text())
    doc["config"]["diffusion"] = str(copy)  # the log as if certified with the copy (same files, same sha256)
    shutil.copy(root / "diffusion.tsv", tmp_path / "moved.tsv")
    (tmp_path / "moved.tsv.json").write_text(json.dumps(doc))
    out = tmp_path / "a.tsv"
    assert main(_dattack(root, data, str(tmp_path / "moved.tsv"), out)) == 0  # control: unchanged, attacked
    perturb_diffusion(copy)
    out2 = tmp_path / "b.tsv"
    err = _refused(capsys, _dattack(root, data, str(tmp_path / "moved.tsv"), out2), out2)
    assert "differs from the one it certified in diffusion_sha256" in err and "--diffusion" in err
    # --diffusion names another model: refused alike; naming the certified one is accepted
    err = _refused(capsys, _dattack(root, data, "diffusion.tsv", out2, "--diffusion", str(copy)), out2)
    assert "in diffusion_sha256" in err
    assert (
        _dtarget(root, data, str(tmp_path / "moved.tsv"), tmp_path, "--diffusion", str(ddpm)).identity[
            "diffusion_sha256"
        ]
        == doc["identity"]["diffusion_sha256"]
    )
    _edit_identity(root / "diffusion.tsv", tmp_path / "t.tsv", diffusion_t=doc["identity"]["diffusion_t"] + 1)
    err = _refused(capsys, _dattack(root, data, str(tmp_path / "t.tsv"), out2), out2)
    t = doc["identity"]["diffusion_t"]
    assert f"in diffusion_t: {t + 1} there, {t} rebuilt" in err


def test_a_diffusion_model_missing_or_added_is_refused(diffusion_logs, tmp_path, capsys):
    root, data, ddpm = diffusion_logs
    doc = json.loads((root / "diffusion.tsv.json").read_text())
    doc["config"]["diffusion"] = None  # the log's diffusion directory is not recorded
    shutil.copy(root / "diffusion.tsv", tmp_path / "lost.tsv")
    (tmp_path / "lost.tsv.json").write_text(json.dumps(doc))
    out = tmp_path / "a.tsv"
    err = _refused(capsys, _dattack(root, data, str(tmp_path / "lost.tsv"), out), out)
    assert "with a diffusion model, but none was found (pass --diffusion)" in err
    err = _refused(capsys, _dattack(root, data, "sound.tsv", out, "--diffusion", str(ddpm)), out)
    assert "without a diffusion model, but --diffusion was given" in err
