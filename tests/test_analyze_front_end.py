"""``analyze`` names what runs in front of the classifier: a diffusion model or a denoiser."""

from __future__ import annotations

import json
from pathlib import Path

from smoothcert.cli.main import main
from smoothcert.io.logs import CERTIFY_COLUMNS

ROWS = [[0, 3, 3, 0.4, 1, 0.1, 900, 1000, 100, 0.8, 3], [1, 5, 5, 0.0, 1, 0.1, 400, 1000, 100, 0.4, 5]]


def _log(path: Path, identity: dict, **more: object) -> Path:
    path.write_text("\n".join("\t".join(map(str, r)) for r in [CERTIFY_COLUMNS, *ROWS]) + "\n")
    side = {
        "identity": {"sigma": 0.5, "alpha": 0.001, "sound": True, "grid": 255, **identity},
        "model": {"arch": "small_cnn"},
    }
    Path(f"{path}.json").write_text(json.dumps({**side, **more}))
    return path


def test_tables_name_the_diffusion_model_and_the_denoiser(tmp_path, capsys):
    diff = _log(tmp_path / "d.tsv", {"diffusion_sha256": "e53fb992" + "0" * 56, "diffusion_t": 46})
    den = _log(
        tmp_path / "n.tsv",
        {"denoiser_sha256": "1a2b3c4d" + "0" * 56},
        denoiser={"arch": "dncnn", "objective": "stability"},
    )
    plain = _log(tmp_path / "p.tsv", {})
    assert main(["analyze", str(diff), str(den), str(plain), "--label", "A", "--label", "B", "--label", "C"]) == 0
    out = capsys.readouterr().out
    note = next(ln for ln in out.splitlines() if ln.startswith("in front of the classifier"))
    assert "A: diffusion t=46 (e53fb992)" in note and "B: denoiser dncnn stability (1a2b3c4d)" in note
    assert "C:" not in note  # control: a log with nothing in front is not named there
    assert main(["analyze", str(diff)]) == 0  # the default name carries it too
    assert "small_cnn σ=0.5 sound + diffusion t=46 (e53fb992)" in capsys.readouterr().out
    assert main(["analyze", str(plain)]) == 0
    assert "in front of the classifier" not in capsys.readouterr().out
