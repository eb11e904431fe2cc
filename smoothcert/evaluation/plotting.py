"""Figures, drawn headless, with no global side effect on the user's matplotlib session.

matplotlib is an optional dependency (``pip install 'smoothcert[plot]'``), imported only when a
figure is made. Each figure is a :class:`matplotlib.figure.Figure` with its own Agg canvas: no
``matplotlib.use``, no pyplot, so the user's backend and pyplot figure list stay as they were.
A missing matplotlib is one :class:`~smoothcert.core.errors.ConfigError` line naming the extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from smoothcert.core.errors import ConfigError
from smoothcert.evaluation.logs import CertifyLog, check_same_norm, norm_label
from smoothcert.evaluation.metrics import Summary, smoothing_caption

__all__ = [
    "PLOT_EXTRA",
    "new_figure",
    "plot_bounds",
    "plot_certified_accuracy",
    "plot_max_radius",
    "plot_noise_grid",
    "plot_p_lower_ecdf",
    "save_figure",
]

PLOT_EXTRA = "pip install 'smoothcert[plot]'"


def new_figure(
    nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], squeeze: bool = True
) -> tuple[Any, Any]:
    """A new figure on its own Agg canvas, and its axes (as ``Figure.subplots`` returns them)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(f"plots need matplotlib, which is not installed: {PLOT_EXTRA}") from None
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=squeeze)
    return fig, axes


def save_figure(fig: Any, path: str | Path) -> Path:
    p = Path(path)
    if p.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ConfigError(f"plot file must end in .png, .pdf or .svg, got {str(path)!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=150, bbox_inches="tight")
    return p


def _finish(fig: Any, ax: Any, path: str | Path, *, title: str | None) -> Path:
    """Unit y range, grid, optional title and legend; then save."""
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


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
    fig, ax = new_figure(figsize=(6.4, 4.2))
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
    fig.text(0.01, 0.005, smoothing_caption([(s.name, s.smoothing) for s in summaries]), fontsize=7, va="bottom")
    return _finish(fig, ax, path, title=title)


def plot_bounds(path: str | Path, *, sigma: float = 1.0) -> Path:
    """Radius against pA for the Cohen, Li and Lecuyer guarantees (paper Fig. 5 left, Fig. 8 left)."""
    from smoothcert.core import stats

    pa = np.linspace(0.5005, 0.9999, 600)
    fig, ax = new_figure(figsize=(5.6, 4.0))
    ax.plot(pa, stats.cohen_radius(pa, sigma=sigma), label="Cohen et al. (this work)")
    ax.plot(pa, stats.li_radius(pa, sigma=sigma), label="Li et al. (Rényi divergence)")
    ax.plot(pa, stats.lecuyer_radius(pa, sigma=sigma), label="Lecuyer et al. (PixelDP)")
    ax.set_xlabel("pA (with pB = 1 − pA)")
    ax.set_ylabel(f"certified L2 radius, Gaussian noise (σ = {sigma:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_max_radius(path: str | Path, *, alphas: Sequence[float] = (0.1, 0.01, 0.001), sigma: float = 1.0) -> Path:
    """Largest certifiable radius ``sigma * Phi^-1(alpha^(1/n))`` against n (paper Fig. 5 right)."""
    from smoothcert.core import stats

    ns = np.unique(np.logspace(1, 6, 200).astype(int))
    fig, ax = new_figure(figsize=(5.6, 4.0))
    for a in alphas:
        ax.plot(ns, stats.max_radius(ns, a, sigma=sigma), label=f"α = {a:g}")
    ax.set_xscale("log")
    ax.set_xlabel("number of samples n")
    ax.set_ylabel(f"largest certifiable L2 radius, Gaussian (σ = {sigma:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_noise_grid(images: NDArray[np.float32], sigmas: Sequence[float], path: str | Path, *, seed: int = 0) -> Path:
    """Each image (rows) under Gaussian noise of each sigma (columns), paper App. K.

    ``images`` is ``(k, C, H, W)`` in ``[0, 1]``. The noisy images are clipped to ``[0, 1]`` for
    display only; the smoothed classifier itself never clips.
    """
    rng = np.random.default_rng(seed)
    k = len(images)
    fig, axes = new_figure(k, len(sigmas), figsize=(1.4 * len(sigmas), 1.4 * k), squeeze=False)
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
    return save_figure(fig, path)


def plot_p_lower_ecdf(logs: Sequence[CertifyLog], path: str | Path, *, title: str | None = None) -> Path:
    """Empirical CDF of the certified lower bounds ``p_lower`` of each log (beyond ACR, Sun et al. 2024).

    A solid step line over all examples, a dashed one in the same colour over the examples whose
    selected class is the true label; the dotted line at 1/2 is CERTIFY's abstention threshold.
    Logs without ``p_lower`` (the 2019 reference's) and decision-mode logs (whose bound stops once
    it decides) are refused, as are logs of different norms.
    """
    check_same_norm(logs)
    for log in logs:
        if log.p_lower is None or log.mode == "decision":
            why = (
                "has no p_lower column" if log.p_lower is None else "is decision-mode (its bound stops once it decides)"
            )
            raise ConfigError(f"{log.path} {why}: no p_lower distribution to plot")
        if log.examples == 0:
            raise ConfigError(f"{log.path} has no examples: nothing to plot")
    fig, ax = new_figure(figsize=(6.4, 4.2))
    for log in logs:
        assert log.p_lower is not None
        chosen = log.selected if log.selected is not None else log.predict
        name = f"{log.name} (eval-label)" if log.eval_label else log.name
        (line,) = ax.step(*_ecdf(log.p_lower), where="post", lw=1.8, label=f"{name}, all ({log.examples})")
        right = log.p_lower[chosen == log.label]
        if right.size:
            ax.step(
                *_ecdf(right),
                where="post",
                ls="--",
                color=line.get_color(),
                label=f"{name}, selected = label ({right.size})",
            )
    ax.axvline(0.5, ls=":", color="gray", lw=1)
    ax.set_xlabel("certified lower bound p_lower on p_A")
    ax.set_ylabel("fraction of examples with p_lower ≤ x")
    ax.set_xlim(0, 1)
    fig.text(0.01, 0.005, smoothing_caption([(log.name, log.smoothing) for log in logs]), fontsize=7, va="bottom")
    return _finish(fig, ax, path, title=title)


def _ecdf(values: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Step points of the empirical CDF: ``F(x) = #{v <= x} / m``, from 0 at x = 0 to 1 at x = 1."""
    v = np.sort(values)
    m = v.size
    return np.concatenate([[0.0], v, [1.0]]), np.concatenate([[0.0], np.arange(1, m + 1) / m, [1.0]])
