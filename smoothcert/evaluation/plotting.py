"""Figures, drawn headless. matplotlib is imported only when a figure is made."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from smoothcert.evaluation.analysis import Summary, check_same_norm, norm_label

__all__ = ["plot_bounds", "plot_certified_accuracy", "plot_max_radius", "plot_noise_grid"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    p = Path(path)
    if p.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ValueError(f"plot file must end in .png, .pdf or .svg, got {str(path)!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=150, bbox_inches="tight")
    _pyplot().close(fig)
    return p


def plot_certified_accuracy(
    summaries: Sequence[Summary],
    path: str | Path,
    *,
    envelope: bool = False,
    title: str | None = None,
    empirical: Sequence[tuple[str, NDArray[np.float64], NDArray[np.float64]]] = (),
) -> Path:
    """Certified accuracy against radius for every log (paper Fig. 6/7).

    The x axis is labelled with the logs' norm (logs of different norms are refused). A
    decision-mode log is one marker at its radius; a capped log's curve stops at its cap.
    ``envelope`` adds the best accuracy over logs at each radius; a summary with
    ``certified_accuracy_lower`` gets its high-probability bound drawn dotted (Fig. 14);
    ``empirical`` adds dashed ``(label, radii, accuracy)`` curves, e.g. DeepFool on an
    undefended model (Fig. 6).
    """
    norm = check_same_norm(summaries)  # one radius axis: refuse logs of different norms
    if empirical and norm != "l2":
        raise ValueError(f"empirical (DeepFool) curves are L2 distances; they cannot be drawn on a {norm} axis")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for s in summaries:
        if s.mode == "decision":  # one meaningful radius: a single marker
            j = next(k for k, v in enumerate(s.certified_accuracy) if v is not None)
            ax.plot([s.radii[j]], [s.certified_accuracy[j]], marker="o", ls="", label=f"{s.name} (decision)")
            continue
        keep = [k for k, v in enumerate(s.certified_accuracy) if v is not None]  # capped logs stop at the cap
        xs = [s.radii[k] for k in keep]
        (line,) = ax.plot(xs, [s.certified_accuracy[k] for k in keep], label=s.name, lw=1.8)
        if "certified_accuracy_lower" in s.extra:
            ax.plot(
                xs,
                [s.extra["certified_accuracy_lower"][k] for k in keep],
                ls=":",
                color=line.get_color(),
                label=f"{s.name}, lower bound (γ={s.extra['gamma']:g})",
            )
    curves = [s for s in summaries if s.mode != "decision"]
    if envelope and curves:
        grid = curves[0].radii
        acc = np.array([[np.nan if v is None else v for v in s.certified_accuracy] for s in curves], dtype=float)
        defined = ~np.all(np.isnan(acc), axis=0)
        best = np.nanmax(acc[:, defined], axis=0)
        ax.plot(np.asarray(grid)[defined], best, color="black", lw=2.5, alpha=0.35, label="best over logs")
    for label, radii, acc in empirical:
        ax.plot(radii, acc, ls="--", color="gray", label=label)
    ax.set_xlabel(f"{norm_label(norm)} radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bounds(path: str | Path, *, sigma: float = 1.0) -> Path:
    """Radius against pA for the Cohen, Li and Lecuyer guarantees (paper Fig. 5 left, Fig. 8 left)."""
    from smoothcert.core import stats

    plt = _pyplot()
    pa = np.linspace(0.5005, 0.9999, 600)
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    ax.plot(pa, stats.cohen_radius(pa, sigma=sigma), label="Cohen et al. (this work)")
    ax.plot(pa, stats.li_radius(pa, sigma=sigma), label="Li et al. (Rényi divergence)")
    ax.plot(pa, stats.lecuyer_radius(pa, sigma=sigma), label="Lecuyer et al. (PixelDP)")
    ax.set_xlabel("pA (with pB = 1 − pA)")
    ax.set_ylabel(f"certified L2 radius, Gaussian noise (σ = {sigma:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_max_radius(path: str | Path, *, alphas: Sequence[float] = (0.1, 0.01, 0.001), sigma: float = 1.0) -> Path:
    """Largest certifiable radius ``sigma * Phi^-1(alpha^(1/n))`` against n (paper Fig. 5 right)."""
    from smoothcert.core import stats

    plt = _pyplot()
    ns = np.unique(np.logspace(1, 6, 200).astype(int))
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for a in alphas:
        ax.plot(ns, stats.max_radius(ns, a, sigma=sigma), label=f"α = {a:g}")
    ax.set_xscale("log")
    ax.set_xlabel("number of samples n")
    ax.set_ylabel(f"largest certifiable L2 radius, Gaussian (σ = {sigma:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_noise_grid(images: NDArray[np.float32], sigmas: Sequence[float], path: str | Path, *, seed: int = 0) -> Path:
    """Each image (rows) under Gaussian noise of each sigma (columns), paper App. K.

    ``images`` is ``(k, C, H, W)`` in ``[0, 1]``. The noisy images are clipped to ``[0, 1]`` for
    display only; the smoothed classifier itself never clips.
    """
    plt = _pyplot()
    rng = np.random.default_rng(seed)
    k = len(images)
    fig, axes = plt.subplots(k, len(sigmas), figsize=(1.4 * len(sigmas), 1.4 * k), squeeze=False)
    for i in range(k):
        for j, s in enumerate(sigmas):
            noisy = np.clip(images[i] + s * rng.standard_normal(images[i].shape), 0, 1)
            img = noisy.transpose(1, 2, 0)
            ax = axes[i][j]
            ax.imshow(
                img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"σ = {s:g}", fontsize=9)
    return _save(fig, path)
