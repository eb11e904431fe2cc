"""Fashion-MNIST scenes, and the dense-task pipeline on them: train, certify (resumable), analyze.

The scenes are built here from small synthetic IDX files in the Fashion-MNIST layout
(tests/synthdata.py), so the tests run wherever the real data set is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthdata import write_idx_dataset

from smoothcert.core.errors import ConfigError, ResultFileError
from smoothcert.evaluation.tasks import (
    localization_curve,
    markdown_table,
    plot_localization,
    plot_segmentation,
    read_localization,
    read_segmentation,
    segmentation_curve,
    segmentation_summary,
)
from smoothcert.io.logs import read_rows
from smoothcert.io.scenes import CANVAS, FashionScenes, load_scenes, scene_spec


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(write_idx_dataset(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=24))


def test_scenes_are_deterministic_for_a_seed(data_dir):
    for task in ("segmentation", "localization"):
        a = load_scenes(task, "test", data_dir, size=20, seed=3)
        b = FashionScenes(task, "test", size=50, seed=3, data_dir=data_dir)  # size does not change scene i
        other = load_scenes(task, "test", data_dir, size=20, seed=4)
        for i in (0, 7, 19):
            xa, ya = a[i]
            xb, yb = b[i]
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert any(not torch.equal(a[i][0], other[i][0]) for i in range(20))  # positive control: seeds differ
        # reading out of order gives the same scene
        assert torch.equal(a[5][0], FashionScenes(task, "test", size=20, seed=3, data_dir=data_dir)[5][0])


def test_segmentation_masks_are_the_item_pixels(data_dir):
    ds = load_scenes("segmentation", "train", data_dir, size=30)
    assert scene_spec("segmentation").num_outputs == 11
    for i in range(len(ds)):
        canvas, mask, classes = ds.scene(i)
        x, y = ds[i]
        assert x.shape == (1, CANVAS, CANVAS) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert 1 <= len(classes) <= 4
        assert np.array_equal(mask > 0, canvas > 0)  # an item's pixels are exactly the labeled ones
        assert set(np.unique(mask)) <= {0, *(c + 1 for c in classes)}
        assert np.array_equal(y.numpy(), mask) and np.allclose(x.numpy()[0], canvas / 255.0)


def test_positive_control_a_mask_missing_the_last_item_is_caught(data_dir):
    ds = load_scenes("segmentation", "train", data_dir, size=30)
    canvas, mask, _ = ds.scene(0)
    wrong = mask.copy()
    wrong[wrong == wrong.max()] = 0
    assert not np.array_equal(wrong > 0, canvas > 0)


def _contains(box: np.ndarray, canvas: np.ndarray) -> bool:
    rows, cols = np.nonzero(canvas)
    x0, y0, x1, y1 = box * CANVAS
    return bool(cols.min() >= x0 and cols.max() + 1 <= x1 and rows.min() >= y0 and rows.max() + 1 <= y1)


def test_boxes_contain_the_item_tightly(data_dir):
    ds = load_scenes("localization", "test", data_dir, size=40)
    for i in range(len(ds)):
        canvas, box, _ = ds.scene(i)
        assert box.dtype == np.float32 and 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
        assert _contains(box, canvas)
        # tight: shrinking any side by one pixel loses part of the item (positive control of _contains)
        for side, step in ((0, 1), (1, 1), (2, -1), (3, -1)):
            shrunk = box.copy()
            shrunk[side] += step / CANVAS
            assert not _contains(shrunk, canvas)


def test_bad_task_and_split_are_refused(data_dir):
    with pytest.raises(ConfigError, match="task"):
        load_scenes("detection", "test", data_dir)
    with pytest.raises(ConfigError, match="split"):
        load_scenes("segmentation", "dev", data_dir)


# ------------------------------------------------------------------------------ pipeline


@pytest.fixture(scope="module")
def models(tmp_path_factory, data_dir):
    from smoothcert.training.tasks import TaskTrainConfig, train_task

    root = tmp_path_factory.mktemp("models")
    out = {}
    for task in ("segmentation", "localization"):
        cfg = TaskTrainConfig(
            task=task,
            sigma=0.25,
            out=str(root / task),
            epochs=1,
            batch=16,
            train_size=32,
            test_size=8,
            data_dir=data_dir,
            progress=False,
        )
        meta = train_task(cfg)
        assert meta["task"] == task and meta["dataset"] == "fashion-mnist-scenes" and meta["sigma"] == 0.25
        out[task] = str(root / task)
    return out


def _config(task, model, out, data_dir, **kw):
    from smoothcert.runs.tasks import TaskRunConfig

    base = dict(
        task=task,
        model=model,
        out=str(out),
        n0=8,
        n=40,
        alpha=0.05,
        batch=64,
        max=4,
        data_dir=data_dir,
        scenes_size=10,
        progress=False,
    )
    return TaskRunConfig(**{**base, **kw})


def _without_time(path, columns):
    return [[v for c, v in zip(columns, row, strict=True) if c != "time"] for row in read_rows(path, columns)]


def test_segmentation_log_resumes_with_identical_rows(models, data_dir, tmp_path):
    from smoothcert.io.logs import SEGMENTATION_COLUMNS
    from smoothcert.runs.tasks import run_task

    full = run_task(_config("segmentation", models["segmentation"], tmp_path / "full.tsv", data_dir, taus=(0.6, 0.8)))
    part = run_task(
        _config("segmentation", models["segmentation"], tmp_path / "part.tsv", data_dir, taus=(0.6, 0.8), max=2)
    )
    for tau in (0.6, 0.8):  # interrupted after two images: the resumed log equals the uninterrupted one
        run_task(_config("segmentation", models["segmentation"], tmp_path / "part.tsv", data_dir, taus=(0.6, 0.8)))
        assert _without_time(part[tau], SEGMENTATION_COLUMNS) == _without_time(full[tau], SEGMENTATION_COLUMNS)
        assert len(read_rows(full[tau], SEGMENTATION_COLUMNS)) == 4
    logs = [read_segmentation(full[t]) for t in (0.6, 0.8)]
    s = segmentation_summary(logs[0])
    assert 0 <= s["certified_accuracy"] <= 1 - s["abstain"] + 1e-12
    curve = segmentation_curve(logs, [0.0, logs[1].radius, logs[1].radius + 1])
    assert curve[-1]["certified_accuracy"] == 0.0 and curve[1]["tau"] == 0.8
    assert plot_segmentation({"sigma 0.25": logs}, tmp_path / "seg.png").stat().st_size > 0


def test_localization_log_and_analysis(models, data_dir, tmp_path):
    from smoothcert.runs.tasks import run_task

    paths = run_task(_config("localization", models["localization"], tmp_path / "loc.tsv", data_dir, radii=(0.0, 0.1)))
    logs = [read_localization(p) for p in paths.values()]
    for g in logs:
        assert np.all(g.lower <= g.estimate) and np.all(g.estimate <= g.upper)
        assert np.all(g.iou_truth <= g.est_iou_truth + 1e-12)  # the worst case is no better than the estimate
    curve = localization_curve(logs)
    assert curve[0]["mean_width"] <= curve[1]["mean_width"]
    assert plot_localization({"sigma 0.25": logs}, tmp_path / "loc.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("task", "kw", "match"),
    [
        ("segmentation", {"taus": (0.5,)}, "tau"),
        ("segmentation", {"taus": (1.2,)}, "tau"),
        ("localization", {"radii": (-0.1,)}, "radius"),
        ("detection", {}, "task"),
    ],
)
def test_bad_run_settings_are_refused_by_name(task, kw, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        _config(task, "m", tmp_path / "x.tsv", None, **kw)


def test_a_model_of_another_task_is_refused(models, data_dir, tmp_path):
    from smoothcert.runs.tasks import run_task

    with pytest.raises(ConfigError, match="localization model"):
        run_task(_config("segmentation", models["localization"], tmp_path / "x.tsv", data_dir))


# ------------------------------------------------------------------------------ sound mode


@pytest.mark.parametrize("task", ["segmentation", "localization"])
def test_every_scene_lies_on_the_8bit_grid(data_dir, task):
    """Sound mode needs inputs i / 255: the canvases are built as uint8, resized items rounded back."""
    from smoothcert.core.lattice import check_grid
    from smoothcert.io.scenes import GRID

    ds = FashionScenes(task, "test", size=40, data_dir=data_dir)
    xs = torch.stack([ds[i][0] for i in range(len(ds))]).to(torch.float64)
    assert GRID == 255 and float((255 * xs - torch.round(255 * xs)).abs().max()) < 1e-5
    check_grid(xs.numpy(), GRID, name="scenes")  # the check sound mode applies
    # positive control: a bilinearly resized canvas not rounded back to uint8 is off the grid
    off = torch.nn.functional.interpolate(xs[:4], scale_factor=1.37, mode="bilinear", align_corners=False)
    with pytest.raises(ValueError, match="grid"):
        check_grid(off.numpy(), GRID, name="resized")


def test_runs_default_to_sound_mode_and_record_it(models, data_dir, tmp_path):
    from smoothcert.io.logs import read_sidecar
    from smoothcert.runs.tasks import run_task

    sound = run_task(_config("localization", models["localization"], tmp_path / "s.tsv", data_dir, max=2))
    fl = run_task(
        _config("localization", models["localization"], tmp_path / "f.tsv", data_dir, max=2, float_noise=True)
    )
    s_id, f_id = (read_sidecar(p[0.25])["identity"] for p in (sound, fl))
    assert (s_id["sound"], s_id["grid"]) == (True, 255) and (f_id["sound"], f_id["grid"]) == (False, None)
    assert read_localization(sound[0.25]).mode == "sound, grid 255" and read_localization(fl[0.25]).mode == "float"
    # a float log is not resumed in sound mode, nor the reverse (the generic identity check)
    with pytest.raises(ResultFileError, match="sound"):
        run_task(_config("localization", models["localization"], tmp_path / "f.tsv", data_dir, max=2))


def test_a_float_log_of_0_2_is_refused_in_sound_mode_naming_float_noise_and_resumes_with_it(models, data_dir, tmp_path):
    import json

    from smoothcert.io.logs import SEGMENTATION_COLUMNS, sidecar_path
    from smoothcert.runs.tasks import run_task

    model = models["segmentation"]
    legacy = {"float_noise": True, "float_draws": "float64"}  # 0.2's float64 Gaussian stream
    full = run_task(_config("segmentation", model, tmp_path / "full.tsv", data_dir, **legacy))[0.75]
    old = run_task(_config("segmentation", model, tmp_path / "old.tsv", data_dir, max=2, **legacy))[0.75]
    side = json.loads(sidecar_path(old).read_text())  # as 0.2 wrote it: no sound, no grid (and no sampler)
    assert "sampler" not in side["identity"]
    del side["identity"]["sound"], side["identity"]["grid"]
    sidecar_path(old).write_text(json.dumps(side))
    with pytest.raises(ResultFileError, match="--float-noise"):
        run_task(_config("segmentation", model, tmp_path / "old.tsv", data_dir))
    with pytest.raises(ResultFileError, match="--float-draws float64"):  # float32 draws: another stream
        run_task(_config("segmentation", model, tmp_path / "old.tsv", data_dir, float_noise=True))
    assert len(read_rows(old, SEGMENTATION_COLUMNS)) == 2  # refused before writing
    run_task(_config("segmentation", model, tmp_path / "old.tsv", data_dir, **legacy))
    assert _without_time(old, SEGMENTATION_COLUMNS) == _without_time(full, SEGMENTATION_COLUMNS)
    assert read_segmentation(old).mode == "float"
    table = markdown_table([segmentation_summary(read_segmentation(old))], ["tau", "certified_accuracy"])
    assert table.splitlines()[0] == "| tau | certified_accuracy | mode |" and "| float |" in table
