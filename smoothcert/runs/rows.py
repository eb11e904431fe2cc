"""The log rows of one chunk of examples: fixed-n, sequential or curve CERTIFY, or PREDICT.

Each example's noise comes from its own generator (:func:`example_generator`), seeded from
``(seed, idx)`` only, so a row does not depend on which examples share its chunk, on a resume,
or on torchrun's sharding. Examples of a chunk share forward passes; their ``time`` column is
the chunk's time split by each one's share of the passes (:func:`shared_times`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from smoothcert.runs.config import RunConfig
from smoothcert.smoothing.classifier import SmoothedClassifier

__all__ = ["DECISION_CODES", "certify_rows", "example_generator", "shared_times"]

DECISION_CODES = {"certified": "c", "not_certified": "n", "undecided": "u"}
"""Curve logs' ``decisions`` column: one letter per grid radius, in the grid's order."""


def example_generator(seed: int, idx: int, device: torch.device) -> torch.Generator:
    """The generator for example ``idx``: seeded from ``(seed, idx)`` by numpy's SeedSequence."""
    state = np.random.SeedSequence([seed, idx]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def shared_times(elapsed: float, passes: list[int]) -> list[str]:
    """The ``time`` column of examples certified together: ``elapsed`` split by each one's share of the passes.

    Examples whose draws fit in one batch share forward passes, so no example's own time can be
    read off a clock; the time of a pass is nearly proportional to the noisy inputs it classifies,
    so each example is attributed ``elapsed * passes_i / sum(passes)`` (the rows' times add up to
    the chunk's). Fixed-n examples draw alike, so they get equal shares; a sequential or curve
    example that stopped early gets a smaller share than one that ran to ``n_max``.
    """
    total = sum(passes)
    if total <= 0:
        return [f"{elapsed / max(len(passes), 1):.6f}"] * len(passes)
    return [f"{elapsed * p / total:.6f}" for p in passes]


def certify_rows(
    config: RunConfig, smoothed: SmoothedClassifier, dataset: Any, chunk: Sequence[int], *, device: torch.device
) -> list[dict[str, Any]]:
    """The log rows (column name -> value) of the examples ``chunk`` of ``dataset``, certified or predicted together."""
    items = [dataset[i] for i in chunk]
    xs = torch.stack([x for x, _ in items])
    labels = [int(y) for _, y in items]
    gens = [example_generator(config.seed, i, device) for i in chunk]
    began = time.perf_counter()
    rows: list[dict[str, Any]] = []
    # what sequential and curve mode share: the budget, the selection, the futility level and the tolerances
    sequential: dict[str, Any] = {
        **{"alpha": config.alpha, "n_max": config.draws_limit, "batch_size": config.batch, "n0": config.n0},
        **{"beta": config.beta, "radius_cap": config.radius_cap, "radius_tol": config.radius_tol},
        **{"labels": labels if config.eval_label else None, "generator": gens},
    }
    if config.curve:
        curves = smoothed.certify_curve_batch(xs, **sequential)
        times = shared_times(time.perf_counter() - began, [c.n_used for c in curves])
        for i, y, cc, elapsed in zip(chunk, labels, curves, times, strict=True):
            rows.append(
                {
                    **{"idx": i, "label": y, "predict": cc.label, "radius": repr(cc.radius)},
                    **{"correct": int(cc.label == y), "time": elapsed, "n_used": cc.n_used, "reason": cc.reason},
                    **{"decisions": "".join(DECISION_CODES[d] for d in cc.decisions), "p_upper": repr(cc.p_upper)},
                    **{"count": cc.count, "n": cc.n, "n0": cc.n0, "p_lower": repr(cc.p_lower), "selected": cc.selected},
                }
            )
    elif config.adaptive:
        acerts = smoothed.certify_adaptive_batch(xs, radius=config.radius, **sequential)
        times = shared_times(time.perf_counter() - began, [a.n_used for a in acerts])
        for i, y, a, elapsed in zip(chunk, labels, acerts, times, strict=True):
            rows.append(
                {
                    **{"idx": i, "label": y, "predict": a.label, "radius": repr(a.radius)},
                    **{"correct": int(a.label == y), "time": elapsed, "n_used": a.n_used, "decision": a.decision},
                    **{"stage": a.stage, "p_upper": repr(a.p_upper), "count": a.count, "n": a.n, "n0": a.n0},
                    **{"p_lower": repr(a.p_lower), "selected": a.selected},
                }
            )
    elif config.command == "certify":
        certs = smoothed.certify_batch(
            xs, n0=config.n0, n=config.n, alpha=config.alpha, batch_size=config.batch, generator=gens
        )
        times = shared_times(time.perf_counter() - began, [c.n0 + c.n for c in certs])
        for i, y, c, elapsed in zip(chunk, labels, certs, times, strict=True):
            rows.append(
                {
                    **{"idx": i, "label": y, "predict": c.label, "radius": repr(c.radius)},
                    **{"correct": int(c.label == y), "time": elapsed, "count": c.count, "n": c.n, "n0": c.n0},
                    **{"p_lower": repr(c.p_lower), "selected": c.selected},
                }
            )
    else:
        preds = smoothed.predict_batch(xs, n=config.n, alpha=config.alpha, batch_size=config.batch, generator=gens)
        times = shared_times(time.perf_counter() - began, [p.n for p in preds])
        for i, y, p, elapsed in zip(chunk, labels, preds, times, strict=True):
            rows.append(
                {
                    **{"idx": i, "label": y, "predict": p.label, "correct": int(p.label == y), "time": elapsed},
                    **{"count": p.count, "runner_up_count": p.runner_up_count, "n": p.n, "pvalue": repr(p.pvalue)},
                }
            )
    return rows
