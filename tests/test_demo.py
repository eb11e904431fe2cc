"""The demo's report: a table on the coarse radius grid, a plot drawn from a fine one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from smoothcert.evaluation import plotting
from smoothcert.io.logs import CERTIFY_COLUMNS
from smoothcert.runs import demo


def _fake_log(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    radii = rng.uniform(0.0, 1.2, 40)
    rows = [f"{i}\t1\t1\t{float(r)!r}\t1\t0.1\t90\t100\t10\t0.9\t1" for i, r in enumerate(radii)]
    path.write_text("\t".join(CERTIFY_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    return path


def test_plot_uses_a_fine_grid_and_the_table_the_coarse_one(tmp_path, monkeypatch):
    def fake_train(config: Any) -> dict[str, Any]:
        return {"sigma": config.sigma, "clean_accuracy": 0.9, "noisy_accuracy": 0.8}

    def fake_run(config: Any) -> Path:
        return _fake_log(Path(config.out), seed=len(config.out))

    drawn: list[Any] = []

    def fake_plot(summaries: Any, path: Any, **kw: Any) -> Path:
        drawn.extend(summaries)
        return Path(path)

    monkeypatch.setattr(demo, "train", fake_train)
    monkeypatch.setattr(demo, "run", fake_run)
    monkeypatch.setattr(plotting, "plot_certified_accuracy", fake_plot)
    summaries = demo.run_demo(out=tmp_path, sigmas=[0.25, 0.5], progress=False)
    assert [s.radii for s in summaries] == [list(demo.RADII)] * 2  # the table's grid
    table = (tmp_path / "table.md").read_text()
    assert "r = 0.25" in table and "r = 0.01" not in table
    assert len(drawn) == 2
    for s in drawn:
        steps = np.diff(s.radii)
        assert steps == pytest.approx(np.full(len(steps), 0.01)) and s.radii[0] == 0.0 and s.radii[-1] >= 1.5
        # the curve follows the log between table radii instead of joining them with a chord
        fine = dict(zip(np.round(s.radii, 2), s.certified_accuracy, strict=True))
        assert len({fine[r] for r in np.round(np.arange(0.26, 0.5, 0.01), 2)}) > 1


def test_demo_refuses_a_bad_sigma_before_training(tmp_path):
    with pytest.raises(ValueError, match="sigma must be > 0"):
        demo.run_demo(out=tmp_path / "d", sigmas=[0.25, -1.0])
    with pytest.raises(ValueError, match="sigmas must list at least one"):
        demo.run_demo(out=tmp_path / "d", sigmas=[])
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("sound", "said"), [(True, "sound (grid 255)"), (False, "float")])
def test_demo_certifies_in_sound_mode_and_its_table_says_so(tmp_path, monkeypatch, sound, said):
    import json

    seen: list[Any] = []

    def fake_train(config: Any) -> dict[str, Any]:
        return {"sigma": config.sigma, "clean_accuracy": 0.9, "noisy_accuracy": 0.8}

    def fake_run(config: Any) -> Path:  # the sidecar a certify run writes, as far as the table reads it
        seen.append(config.sound)
        identity = {"sigma": 0.25, "sound": config.sound, "grid": 255 if config.sound else None}
        Path(config.out + ".json").write_text(json.dumps({"identity": identity}))
        return _fake_log(Path(config.out), seed=1)

    monkeypatch.setattr(demo, "train", fake_train)
    monkeypatch.setattr(demo, "run", fake_run)
    monkeypatch.setattr(plotting, "plot_certified_accuracy", lambda summaries, path, **kw: Path(path))
    demo.run_demo(out=tmp_path, sigmas=[0.25], progress=False, sound=sound)
    assert seen == [sound]  # the default is sound mode: test_demo's other test runs it that way
    table = (tmp_path / "table.md").read_text()
    assert ("CERTIFY in sound mode (grid 255" in table) == sound and f"smoothing: {said}." in table
