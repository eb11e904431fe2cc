"""The main job on Fashion-MNIST: train at several sigma, certify a test subsample, tabulate, plot.

Every step resumes: re-running the demo after an interruption continues where it stopped.
Certification runs in sound mode (grid 255: Fashion-MNIST is 8-bit), the command line's default;
``sound=False`` (``smoothcert demo --float-noise``) keeps float mode, e.g. to continue a 0.2 demo.
Default settings fit a 2-core CPU in minutes; ``full=True`` uses the paper's certification
settings (N = 100,000 on the whole test set) and a longer training schedule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from smoothcert.core.checks import check_sigma
from smoothcert.evaluation import analysis
from smoothcert.runs.certify import RunConfig, run
from smoothcert.runtime.devices import resolve_device
from smoothcert.training.loop import TrainConfig, train

__all__ = ["DemoSettings", "run_demo"]

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # the table's columns
PLOT_STEP = 0.01  # the plot's radius grid, fine enough that curves are not chords between table columns


def plot_radii(max_radius: float) -> NDArray[np.float64]:
    """``0, 0.01, ...`` up to the larger of the table's last radius and ``max_radius``."""
    top = max(RADII[-1], math.ceil(max_radius / 0.25) * 0.25)
    return np.round(np.arange(round(top / PLOT_STEP) + 1) * PLOT_STEP, 10)


@dataclass(frozen=True)
class DemoSettings:
    epochs: int
    lr_step: int
    n0: int
    n: int
    skip: int
    alpha: float = 0.001
    batch: int = 1000


QUICK = DemoSettings(epochs=4, lr_step=3, n0=100, n=1_000, skip=20)
FULL = DemoSettings(epochs=30, lr_step=10, n0=100, n=100_000, skip=1)


def run_demo(
    *,
    out: str | Path = "runs/demo",
    full: bool = False,
    sigmas: Sequence[float] = (0.25, 0.5, 1.0),
    data_dir: str | None = None,
    device: str = "auto",
    progress: bool = True,
    sound: bool = True,
) -> list[analysis.Summary]:
    """Train ``small_cnn`` at each sigma, certify, and write ``table.md`` and ``certified_accuracy.png`` in ``out``.

    The table reports certified accuracy at :data:`RADII`; the plot draws it on a 0.01 grid.
    """
    if len(sigmas) == 0:
        raise ValueError("sigmas must list at least one noise level, e.g. --sigmas 0.25,0.5,1, got none")
    for sigma in sigmas:
        check_sigma(sigma)
    settings = FULL if full else QUICK
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    began = time.perf_counter()
    logs, metas = [], []
    for sigma in sigmas:
        model_dir = root / f"model_sigma_{sigma:g}"
        t0 = time.perf_counter()
        meta = train(
            TrainConfig(
                dataset="fashion-mnist",
                arch="small_cnn",
                sigma=sigma,
                out=str(model_dir),
                epochs=settings.epochs,
                lr_step=settings.lr_step,
                device=device,
                data_dir=data_dir,
                progress=progress,
            )
        )
        print(
            f"[demo] sigma={sigma:g}: trained in {time.perf_counter() - t0:.0f} s, "
            f"clean accuracy {meta['clean_accuracy']:.4f}, noisy accuracy {meta['noisy_accuracy']:.4f}",
            flush=True,
        )
        t0 = time.perf_counter()
        log_path = run(
            RunConfig(
                command="certify",
                model=str(model_dir),
                out=str(root / f"certify_sigma_{sigma:g}.tsv"),
                data_dir=data_dir,
                n0=settings.n0,
                n=settings.n,
                alpha=settings.alpha,
                batch=settings.batch,
                skip=settings.skip,
                device=device,
                channels_last=dev.type == "cpu",
                progress=progress,
                sound=sound,
            )
        )
        print(f"[demo] sigma={sigma:g}: certified in {time.perf_counter() - t0:.0f} s -> {log_path}", flush=True)
        logs.append(analysis.read_certify_log(log_path))
        metas.append(meta)
    summaries = analysis.summarize(logs, RADII)
    table = analysis.format_markdown(summaries)
    clean = "\n".join(
        f"- σ = {m['sigma']:g}: base classifier clean test accuracy {m['clean_accuracy']:.4f}, "
        f"under noise {m['noisy_accuracy']:.4f}"
        for m in metas
    )
    elapsed = time.perf_counter() - began
    header = (
        f"Fashion-MNIST, small_cnn, {settings.epochs} epochs; CERTIFY in "
        + ("sound mode (grid 255: noise drawn on the 8-bit grid)" if sound else "float mode (--float-noise)")
        + f" with n0 = {settings.n0}, n = {settings.n:,}, "
        f"alpha = {settings.alpha}, every {settings.skip}th test example ({logs[0].examples} examples).\n\n"
    )
    (root / "table.md").write_text(header + table + "\n" + clean + "\n")
    from smoothcert.evaluation.plotting import plot_certified_accuracy

    fine = analysis.summarize(logs, plot_radii(max(float(np.max(log.radius, initial=0.0)) for log in logs)))
    plot = plot_certified_accuracy(
        fine, root / "certified_accuracy.png", envelope=True, title="Fashion-MNIST: certified accuracy (small_cnn)"
    )
    print("\n" + header + table + "\n" + clean)
    print(f"\n[demo] table: {root / 'table.md'}; plot: {plot}; total {elapsed:.0f} s")
    return summaries
