"""``smoothcert attack``: the tightness experiment on certified examples, and DeepFool curves.

Tightness (paper Sec. 4): for each example a certify log reports correct at radius R, attack
the smoothed classifier with :func:`~smoothcert.evaluation.attacks.smoothed_pgd` at radii ``m * R`` (or at
absolute radii) and judge success with PREDICT at the perturbed point: the attack succeeds
when PREDICT returns a class other than the label (an abstention is not a success).

DeepFool (paper Fig. 6, dashed): the minimal L2 adversarial norm of each test example against
a base classifier, from which ``smoothcert analyze --empirical`` draws an empirical
robust-accuracy curve.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothcert.core.checks import check_alpha, check_int
from smoothcert.evaluation import analysis
from smoothcert.evaluation.attacks import deepfool, smoothed_pgd
from smoothcert.io.checkpoints import checkpoint_sha256, load_model, versions
from smoothcert.io.data import load_dataset
from smoothcert.io.logs import ATTACK_COLUMNS, DEEPFOOL_COLUMNS, ResultWriter, read_rows
from smoothcert.runs.certify import example_generator, select_indices
from smoothcert.runtime.devices import resolve_device
from smoothcert.smoothing.classifier import SmoothedClassifier

__all__ = ["AttackConfig", "run_deepfool", "run_tightness", "summarize_attack"]


@dataclass(frozen=True)
class AttackConfig:
    model: str
    out: str
    certify_log: str | None = None
    multiples: tuple[float, ...] | None = None
    radii: tuple[float, ...] | None = None
    steps: int = 20
    num_noise: int = 32
    step_factor: float = 2.5
    n: int = 1000
    alpha: float = 0.001
    batch: int = 1000
    max: int | None = None
    skip: int = 1
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    dataset: str | None = None
    split: str = "test"
    sigma: float | None = None
    deepfool_steps: int = 50
    overshoot: float = 0.02
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 0)
        check_int("num_noise", self.num_noise)
        check_int("n", self.n)
        check_int("batch", self.batch)
        check_alpha(self.alpha)
        for name in ("multiples", "radii"):
            vals = getattr(self, name)
            if vals is not None and (len(vals) == 0 or any(not v > 0 for v in vals)):
                raise ValueError(f"{name} must be positive numbers, got {vals}")


def run_tightness(config: AttackConfig) -> dict[str, Any]:
    """Attack every certified-correct example of ``config.certify_log``; returns the success summary."""
    if config.certify_log is None:
        raise ValueError("the tightness attack needs --certify-log (a certify log of this model)")
    if (config.multiples is None) == (config.radii is None):
        raise ValueError("give exactly one of --multiples and --radii")
    device = resolve_device(config.device)
    model, meta = load_model(config.model, device=device)
    log = analysis.read_certify_log(config.certify_log)
    side = log.sidecar or {}
    identity = side.get("identity", {})
    sigma = config.sigma or identity.get("sigma") or meta["sigma"]
    dataset = load_dataset(
        config.dataset or identity.get("dataset") or meta["dataset"],
        identity.get("split", config.split),
        config.data_dir,
    )
    targets = [(int(i), float(r)) for i, r, ok in zip(log.idx, log.radius, log.correct, strict=True) if ok and r > 0]
    if config.max is not None:
        targets = targets[: config.max]
    smoothed = SmoothedClassifier(model, int(meta["num_classes"]), float(sigma), device=device)
    sidecar = {
        "identity": {
            "command": "attack",
            "model_sha256": checkpoint_sha256(config.model),
            "certify_log": str(Path(config.certify_log).resolve()),
            "sigma": float(sigma),
            "multiples": config.multiples,
            "radii": config.radii,
            "steps": config.steps,
            "num_noise": config.num_noise,
            "step_factor": config.step_factor,
            "n": config.n,
            "alpha": config.alpha,
            "seed": config.seed,
            "device_type": device.type,
        },
        "config": asdict(config),
        "model": meta,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with ResultWriter(config.out, ATTACK_COLUMNS, sidecar=sidecar, overwrite=config.overwrite) as writer:
        for idx, radius in targets:
            if idx in writer.done:
                continue
            x, y = dataset[idx]
            eps = [m * radius for m in config.multiples] if config.multiples else list(config.radii or ())
            k = len(eps)
            xs = x.unsqueeze(0).repeat(k, *[1] * x.ndim).to(device)
            eps_t = torch.tensor(eps, dtype=xs.dtype, device=device)
            adv = smoothed_pgd(
                model,
                xs,
                torch.full((k,), int(y)),
                sigma=float(sigma),
                epsilon=eps_t,
                steps=config.steps,
                step_size=config.step_factor * eps_t / max(config.steps, 1),
                num_noise=config.num_noise,
                generator=example_generator(config.seed, idx, device),
            )
            judge = [example_generator(config.seed + 1, idx * 1000 + j, device) for j in range(k)]
            preds = smoothed.predict_batch(
                adv, n=config.n, alpha=config.alpha, batch_size=config.batch, generator=judge
            )
            norms = (adv - xs).flatten(1).norm(dim=1).tolist()
            rows = []
            for j in range(k):
                success = int(preds[j].label not in (int(y), -1))
                multiple = eps[j] / radius
                rows.append(
                    [
                        idx,
                        int(y),
                        repr(radius),
                        repr(eps[j]),
                        repr(norms[j]),
                        preds[j].label,
                        success,
                        f"{multiple:.6g}",
                    ]
                )
            writer.write(rows)
    summary = summarize_attack(Path(config.out), by="multiple" if config.multiples else "attack_radius")
    Path(str(config.out) + ".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def summarize_attack(path: str | Path, *, by: str) -> dict[str, Any]:
    """Success rate of an attack log per attack setting: ``by="multiple"`` groups rows by the
    multiple of the certified radius asked for (``--multiples``), ``by="attack_radius"`` by the
    absolute radius asked for (``--radii``)."""
    if by not in ("multiple", "attack_radius"):
        raise ValueError(f"by must be 'multiple' or 'attack_radius', got {by!r}")
    rows = read_rows(path, ATTACK_COLUMNS)
    j = ATTACK_COLUMNS.index(by)
    groups: dict[float, list[int]] = {}
    for r in rows:
        groups.setdefault(float(r[j]), []).append(int(r[ATTACK_COLUMNS.index("success")]))
    keys = sorted(groups)
    return {
        "examples": len({r[0] for r in rows}),
        "grouped_by": by,
        "success_rate": {f"{k:.6g}": float(np.mean(groups[k])) for k in keys},
        "attacks": {f"{k:.6g}": len(groups[k]) for k in keys},
    }


def run_deepfool(config: AttackConfig) -> dict[str, Any]:
    """DeepFool's minimal L2 norm for every selected example of a split, against the base classifier."""
    device = resolve_device(config.device)
    model, meta = load_model(config.model, device=device)
    dataset: Any = load_dataset(config.dataset or meta["dataset"], config.split, config.data_dir)
    indices = select_indices(len(dataset), skip=config.skip, max_examples=config.max)
    sidecar = {
        "identity": {
            "command": "deepfool",
            "model_sha256": checkpoint_sha256(config.model),
            "dataset": config.dataset or meta["dataset"],
            "split": config.split,
            "steps": config.deepfool_steps,
            "overshoot": config.overshoot,
        },
        "config": asdict(config),
        "model": meta,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with ResultWriter(config.out, DEEPFOOL_COLUMNS, sidecar=sidecar, overwrite=config.overwrite) as writer:
        todo = [i for i in indices if i not in writer.done]
        for start in range(0, len(todo), 128):
            chunk = todo[start : start + 128]
            xs = torch.stack([dataset[i][0] for i in chunk]).to(device)
            ys = torch.tensor([int(dataset[i][1]) for i in chunk], device=device)
            with torch.no_grad():
                pred = model(xs).argmax(1)
            _, norms, ok = deepfool(model, xs, ys, steps=config.deepfool_steps, overshoot=config.overshoot)
            writer.write(
                [
                    [i, int(ys[j]), int(pred[j]), int(pred[j] == ys[j]), repr(float(norms[j])), int(ok[j])]
                    for j, i in enumerate(chunk)
                ]
            )
    rows = read_rows(config.out, DEEPFOOL_COLUMNS)
    norms_all = np.array([float(r[4]) for r in rows])
    return {
        "examples": len(rows),
        "clean_accuracy": float(np.mean([r[3] == "1" for r in rows])),
        "median_norm_correct": float(np.median(norms_all[norms_all > 0])) if np.any(norms_all > 0) else 0.0,
    }
