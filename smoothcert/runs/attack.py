"""``smoothcert attack``: the tightness experiment on certified examples, and DeepFool curves.

Tightness (paper Sec. 4): for each example a certify log reports correct at radius R, attack
the smoothed classifier with :func:`~smoothcert.evaluation.attacks.smoothed_pgd` at radii ``m * R`` (or at
absolute radii) and judge success with PREDICT at the perturbed point: the attack succeeds
when PREDICT returns a class other than the label (an abstention is not a success).

The attacked classifier is the one the log certified: every key of the log's sidecar identity
is one attack knows (an allow-list, :data:`REBUILT_KEYS` and :data:`PROCEDURE_KEYS`; any other
key is refused, naming it), and the classifier (model, denoiser or diffusion model, ensemble with
its combination and consensus, lift, sound mode and grid, noise, norm, sigma, data, amp) is rebuilt
by the certify run's own ``prepare`` and checked key by key against the log. The attack is L2 PGD
under Gaussian noise, so a log of any other norm or noise is refused rather than attacked with
the wrong threat model. A sound-mode log is attacked on the grid: the perturbed point is moved
onto the grid inside the ball before PREDICT judges it.

DeepFool (paper Fig. 6, dashed): the minimal L2 adversarial norm of each test example against
a base classifier, from which ``smoothcert analyze --empirical`` draws an empirical
robust-accuracy curve.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothcert.core.checks import check_alpha, check_int, check_sigma
from smoothcert.core.errors import ConfigError
from smoothcert.evaluation import analysis
from smoothcert.evaluation.attacks import deepfool, onto_grid, smoothed_pgd
from smoothcert.io.checkpoints import checkpoint_sha256, load_model, versions
from smoothcert.io.data import load_dataset
from smoothcert.io.logs import ATTACK_COLUMNS, DEEPFOOL_COLUMNS, ResultWriter, as_recorded, read_rows
from smoothcert.runs.certify import PreparedRun, example_generator, prepare, select_indices
from smoothcert.runs.config import SPLITS, RunConfig, as_config_error
from smoothcert.runs.resume import LEGACY
from smoothcert.runtime.devices import resolve_device
from smoothcert.smoothing.classifier import SmoothedClassifier

__all__ = [
    "ATTACKABLE",
    "PROCEDURE_KEYS",
    "REBUILT_KEYS",
    "AttackConfig",
    "AttackTarget",
    "attack_target",
    "run_deepfool",
    "run_tightness",
    "summarize_attack",
]

# (noise, norm) pairs whose attack is implemented: smoothed_pgd is L2 PGD under Gaussian noise
ATTACKABLE = {("gaussian", "l2")}


def _opt(help: str, **more: Any) -> dict[str, Any]:
    return {"help": help, **more}


@dataclass(frozen=True)
class AttackConfig:
    """Settings of ``smoothcert attack``; each field's metadata is its command-line option."""

    model: str = field(metadata=_opt("model directory of the certified classifier (its sha256 must be the log's)"))
    out: str = field(metadata=_opt("result TSV (resumed if it exists)"))
    certify_log: str | None = field(
        default=None, metadata=_opt("certify log whose certified-correct examples are attacked")
    )
    multiples: tuple[float, ...] | None = field(
        default=None, metadata=_opt("attack radii as multiples of each certified radius, e.g. 1.5,2")
    )
    radii: tuple[float, ...] | None = field(default=None, metadata=_opt("absolute attack radii"))
    steps: int = field(default=20, metadata=_opt("PGD steps (default: 20)", min=1))
    num_noise: int = field(default=32, metadata=_opt("noise draws per PGD step (default: 32)", min=1))
    step_factor: float = field(default=2.5, metadata=_opt("PGD step = factor * radius / steps (default: 2.5)"))
    n: int = field(default=1000, metadata=_opt("PREDICT samples judging success (default: 1000)", min=1))
    alpha: float = field(default=0.001, metadata=_opt("failure probability of the judging PREDICT (default: 0.001)"))
    batch: int = field(default=1000, metadata=_opt("forward-pass batch size (default: 1000)", min=1))
    max: int | None = field(default=None, metadata=_opt("at most this many examples", min=1))
    skip: int = field(default=1, metadata=_opt("DeepFool: every skip-th example", min=1))
    seed: int = field(default=0, metadata=_opt("seed of the attack's and the judge's noise"))
    device: str = field(default="auto", metadata=_opt("auto (CUDA if available), cpu, cuda or cuda:N (default: auto)"))
    data_dir: str | None = field(default=None, metadata=_opt("data directory (default: the data set's)"))
    dataset: str | None = field(default=None, metadata=_opt("data set (default: the certify log's, else the model's)"))
    split: str | None = field(
        default=None, metadata=_opt("split (default: the certify log's, else test)", choices=SPLITS)
    )
    sigma: float | None = field(
        default=None, metadata=_opt("smoothing sigma for a log without sidecar (default: the certify log's)")
    )
    denoiser: str | None = field(
        default=None, metadata=_opt("denoiser directory (default: the certify log's; its sha256 must be the log's)")
    )
    diffusion: str | None = field(
        default=None,
        metadata=_opt(
            "diffusers directory of a --diffusion certify log (default: the certify log's; its diffusion_sha256 "
            "must be the log's)"
        ),
    )
    ensemble: str | None = field(
        default=None,
        metadata=_opt("comma list of the ensemble's further members (default: the certify log's; sha256 checked)"),
    )
    sound: bool = field(
        default=True,
        metadata=_opt(
            "a certify log without sidecar was certified in float mode (default: sound mode, grid 255); a log "
            "with sidecar sets the mode itself",
            flag="--float-noise",
            negate=True,
        ),
    )
    deepfool_steps: int = field(default=50, metadata={"cli": False})
    overshoot: float = field(default=0.02, metadata={"cli": False})
    overwrite: bool = field(default=False, metadata=_opt("replace an existing result file instead of resuming it"))

    def __post_init__(self) -> None:
        with as_config_error():
            check_int("steps", self.steps, 0)
            check_int("num_noise", self.num_noise)
            check_int("n", self.n)
            check_int("batch", self.batch)
            check_int("skip", self.skip)
            check_int("seed", self.seed, 0)
            if self.max is not None:
                check_int("max", self.max)
            check_alpha(self.alpha)
            if self.sigma is not None:
                check_sigma(self.sigma)
        if self.split is not None and self.split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        for name in ("multiples", "radii"):
            vals = getattr(self, name)
            if vals is not None and (len(vals) == 0 or any(not v > 0 for v in vals)):
                raise ConfigError(f"{name} must be positive numbers, got {vals}")


# The identity keys of a certify log that attack knows (the allow-list): REBUILT keys define the
# certified smoothed classifier and are rebuilt, then checked equal to the log's; PROCEDURE keys say
# how the certificate was computed (samples, seed, stopping rule, ...), not which classifier, and
# leave the attack unchanged. A key in neither is refused, naming it, until attack learns it.
REBUILT_KEYS = frozenset(
    {
        *("model_sha256", "denoiser_sha256", "diffusion_sha256", "diffusion_t", "ensemble_sha256"),
        *("combine", "consensus"),
        *("lift", "lifted_sigma", "sound", "grid", "noise", "norm", "sigma", "dataset", "split", "amp"),
    }
)
PROCEDURE_KEYS = frozenset(
    {
        *("command", "n", "n0", "alpha", "seed", "device_type", "compile", "sampler", "batch", "sound_radii"),
        *("adaptive", "radius", "n_max", "beta", "radius_cap", "radius_tol", "radius_rtol", "eval_label"),
    }
)


_HINTS = {
    "ensemble_sha256": " (pass the members it certified with --ensemble)",
    "diffusion_sha256": " (pass the diffusion directory it certified with --diffusion)",
}


@dataclass(frozen=True)
class AttackTarget:
    """The smoothed classifier a certify log certified, rebuilt from its sidecar and checked.

    ``plan`` is the certify run that would have written the log (``plan.smoothed`` judges the
    attack with PREDICT, ``plan.dataset`` holds the inputs as certified, upsampled when lifted);
    ``identity`` holds the rebuilt classifier's keys (:data:`REBUILT_KEYS`) as the attack log records them.
    """

    plan: PreparedRun
    identity: dict[str, Any]

    @property
    def smoothed(self) -> SmoothedClassifier:
        return self.plan.smoothed

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.plan.sidecar["model"])

    @property
    def sigma(self) -> float:
        """The certified sigma (the model's scale; a lifted classifier smooths at ``lift`` times it)."""
        return self.plan.sigma


def _short(sha: str) -> str:
    return sha[:12]


def _logged(identity: dict[str, Any], key: str) -> Any:
    return identity.get(key, LEGACY.get(key))


def _member_paths(config: AttackConfig, identity: dict[str, Any], logged_config: dict[str, Any]) -> str | None:
    """The ensemble's further members: ``--ensemble``, else the certify log's; refused when the log disagrees."""
    paths = config.ensemble or logged_config.get("ensemble")
    if "ensemble_sha256" in identity and not paths:
        raise ConfigError(
            f"certify log {config.certify_log!r} certified an ensemble, but its members were not found "
            "(pass --ensemble DIR,DIR)"
        )
    if config.ensemble and identity and "ensemble_sha256" not in identity:
        raise ConfigError(
            f"certify log {config.certify_log!r} was certified without an ensemble, but --ensemble was given"
        )
    return str(paths) if paths else None


def _front_end_path(
    config: AttackConfig,
    identity: dict[str, Any],
    logged_config: dict[str, Any],
    *,
    checked: bool,
    name: str,
    what: str,
) -> str | None:
    """The denoiser (``name="denoiser"``) or diffusion (``"diffusion"``) directory: ``--NAME``, else the
    certify log's recorded one. With a sidecar (``checked``), refused when the log certified with one and
    none is found, or without one and ``--NAME`` is given; that it is the log's is checked after the rebuild
    (``NAME_sha256``)."""
    path = getattr(config, name) or logged_config.get(name)
    certified = identity.get(f"{name}_sha256") is not None
    if checked and certified != (path is not None):
        raise ConfigError(
            f"certify log {config.certify_log!r} was certified "
            + (
                f"with {what}, but none was found (pass --{name})"
                if certified
                else f"without {what}, but --{name} was given"
            )
        )
    return str(path) if path is not None else None


def attack_target(config: AttackConfig, log_sidecar: dict[str, Any] | None) -> AttackTarget:
    """Rebuild the certified smoothed classifier from a log's sidecar and check it is the log's.

    Every identity key of the log must be one attack knows (:data:`REBUILT_KEYS`,
    :data:`PROCEDURE_KEYS`); another is refused (:class:`ConfigError`), naming it. The classifier
    is rebuilt by the certify run's own :func:`~smoothcert.runs.certify.prepare` from the log's
    settings (model, denoiser or diffusion model, ensemble with its combination and consensus, lift,
    sound mode and grid, noise, norm, sigma, data, amp), and each rebuilt key must equal the log's: a
    ``--model``, ``--denoiser``, ``--diffusion`` directory or ``--ensemble`` member whose sha256 is not
    the log's, a diffusion timestep other than the log's (``diffusion_t``), or a ``--sigma``,
    ``--dataset`` or ``--split`` that contradicts it, is refused, and so is a (noise, norm) pair
    outside :data:`ATTACKABLE`. A log without sidecar (e.g. the 2019 reference's) is taken as
    Gaussian L2 with the user's or the model's settings, in sound mode unless ``--float-noise``,
    and a warning says nothing was checked.
    """
    identity: dict[str, Any] = dict((log_sidecar or {}).get("identity", {}))
    logged_config: dict[str, Any] = dict((log_sidecar or {}).get("config", {}))
    if log_sidecar is None:
        warnings.warn(
            f"certify log {config.certify_log!r} has no sidecar: the model, noise and norm it certified cannot "
            "be checked; attacking --model under Gaussian L2 smoothing"
            + (" in sound mode (grid 255)" if config.sound else " in float mode"),
            UserWarning,
            stacklevel=3,
        )
    unknown = sorted(set(identity) - REBUILT_KEYS - PROCEDURE_KEYS)
    if unknown:
        raise ConfigError(
            f"certify log {config.certify_log!r} has identity key {unknown[0]!r}"
            + (f" (and {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else "")
            + ", which attack cannot rebuild yet: refusing rather than attacking another classifier than the "
            "one the log certified"
        )
    noise = str(identity.get("noise", "gaussian"))
    norm = str(identity.get("norm", "l2"))
    if (noise, norm) not in ATTACKABLE:
        raise ConfigError(
            f"certify log {config.certify_log!r} certifies {norm} radii under {noise} noise; the attack is L2 PGD "
            "under Gaussian noise only, so it would not attack the classifier the log certified"
        )
    model_sha = checkpoint_sha256(config.model)
    if "model_sha256" in identity and identity["model_sha256"] != model_sha:
        raise ConfigError(
            f"--model {config.model!r} (sha256 {_short(model_sha)}) is not the model certify log "
            f"{config.certify_log!r} certified (sha256 {_short(str(identity['model_sha256']))})"
        )
    for name in ("sigma", "dataset", "split"):
        given, logged = getattr(config, name), identity.get(name)
        if given is not None and logged is not None and given != logged:
            raise ConfigError(f"--{name} {given!r} contradicts the certify log's {name} {logged!r}")
    checked = log_sidecar is not None
    denoiser_path = _front_end_path(
        config, identity, logged_config, checked=checked, name="denoiser", what="a denoiser"
    )
    diffusion_path = _front_end_path(
        config, identity, logged_config, checked=checked, name="diffusion", what="a diffusion model"
    )
    sound = bool(_logged(identity, "sound")) if log_sidecar is not None else config.sound
    if log_sidecar is not None and sound and not config.sound:
        raise ConfigError(
            f"certify log {config.certify_log!r} was certified in sound mode: --float-noise would attack "
            "another classifier than the one it certified"
        )
    run_config = RunConfig(
        command="certify",
        model=config.model,
        out=config.out,  # prepare opens no file
        denoiser=denoiser_path,
        diffusion=diffusion_path,
        ensemble=_member_paths(config, identity, logged_config),
        combine=str(identity.get("combine", "softmax")),
        consensus=identity.get("consensus"),
        lift=identity.get("lift"),
        dataset=identity.get("dataset") or config.dataset,
        data_dir=config.data_dir,
        split=str(identity.get("split") or config.split or "test"),
        sigma=identity.get("sigma") or config.sigma,
        n=config.n,
        alpha=config.alpha,
        batch=config.batch,
        device=config.device,
        amp=identity.get("amp"),
        channels_last=bool(logged_config.get("channels_last", False)),
        noise=noise,
        norm=norm,
        sound=sound,
        grid=identity.get("grid") if sound else None,
        progress=False,
    )
    plan = prepare(run_config)
    rebuilt = {k: plan.identity.get(k, LEGACY.get(k)) for k in sorted(REBUILT_KEYS)}
    if log_sidecar is not None:
        logged = as_recorded({k: _logged(identity, k) for k in sorted(REBUILT_KEYS)})
        mine = as_recorded(rebuilt)
        for key in sorted(REBUILT_KEYS):
            if logged.get(key) != mine.get(key):
                raise ConfigError(
                    f"the classifier rebuilt from certify log {config.certify_log!r} differs from the one it "
                    f"certified in {key}: {logged.get(key)!r} there, {mine.get(key)!r} rebuilt" + _HINTS.get(key, "")
                )
    return AttackTarget(plan=plan, identity={k: v for k, v in rebuilt.items() if v is not None})


def run_tightness(config: AttackConfig) -> dict[str, Any]:
    """Attack every certified-correct example of ``config.certify_log``; returns the success summary.

    Everything is checked (:func:`attack_target`) before the attack log is opened. The attack
    runs PGD on the rebuilt smoothed classifier's base classifier at its sigma (the lifted one's
    under lift); in sound mode the perturbed point is moved onto the grid within the ball
    (:func:`~smoothcert.evaluation.attacks.onto_grid`), as the certificate covers grid inputs.
    """
    if config.certify_log is None:
        raise ConfigError("the tightness attack needs --certify-log (a certify log of this model)")
    if (config.multiples is None) == (config.radii is None):
        raise ConfigError("give exactly one of --multiples and --radii")
    with as_config_error():
        log = analysis.read_certify_log(config.certify_log)
        target = attack_target(config, log.sidecar)
    plan, smoothed = target.plan, target.smoothed
    device, dataset = plan.device, plan.dataset
    targets = [(int(i), float(r)) for i, r, ok in zip(log.idx, log.radius, log.correct, strict=True) if ok and r > 0]
    if config.max is not None:
        targets = targets[: config.max]
    sidecar = {
        "identity": {
            "command": "attack",
            **target.identity,
            "certify_log": str(Path(config.certify_log).resolve()),
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
        "model": target.meta,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    base = smoothed.base_classifier
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
                base,
                xs,
                torch.full((k,), int(y)),
                sigma=smoothed.sigma,
                epsilon=eps_t,
                steps=config.steps,
                step_size=config.step_factor * eps_t / max(config.steps, 1),
                num_noise=config.num_noise,
                generator=example_generator(config.seed, idx, device),
            )
            if smoothed.grid is not None:
                adv = onto_grid(xs, adv, grid=smoothed.grid, epsilon=eps_t)
            judge = [example_generator(config.seed + 1, idx * 1000 + j, device) for j in range(k)]
            preds = smoothed.predict_batch(
                adv, n=config.n, alpha=config.alpha, batch_size=config.batch, generator=judge
            )
            norms = (adv.double() - xs.double()).flatten(1).norm(dim=1).tolist()
            writer.write(
                {
                    "idx": idx,
                    "label": int(y),
                    "radius": repr(radius),
                    "attack_radius": repr(eps[j]),
                    "delta_norm": repr(norms[j]),
                    "predict": preds[j].label,
                    "success": int(preds[j].label not in (int(y), -1)),
                    "multiple": f"{eps[j] / radius:.6g}",
                }
                for j in range(k)
            )
    summary = summarize_attack(Path(config.out), by="multiple" if config.multiples else "attack_radius")
    Path(str(config.out) + ".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def summarize_attack(path: str | Path, *, by: str) -> dict[str, Any]:
    """Success rate of an attack log per attack setting: ``by="multiple"`` groups rows by the
    multiple of the certified radius asked for (``--multiples``), ``by="attack_radius"`` by the
    absolute radius asked for (``--radii``)."""
    if by not in ("multiple", "attack_radius"):
        raise ConfigError(f"by must be 'multiple' or 'attack_radius', got {by!r}")
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
    with as_config_error():
        device = resolve_device(config.device)
        model, meta = load_model(config.model, device=device)
        dataset: Any = load_dataset(config.dataset or meta["dataset"], config.split or "test", config.data_dir)
    indices = select_indices(len(dataset), skip=config.skip, max_examples=config.max)
    sidecar = {
        "identity": {
            "command": "deepfool",
            "model_sha256": checkpoint_sha256(config.model),
            "dataset": config.dataset or meta["dataset"],
            "split": config.split or "test",
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
                {
                    "idx": i,
                    "label": int(ys[j]),
                    "predict": int(pred[j]),
                    "correct": int(pred[j] == ys[j]),
                    "deepfool_norm": repr(float(norms[j])),
                    "success": int(ok[j]),
                }
                for j, i in enumerate(chunk)
            )
    rows = read_rows(config.out, DEEPFOOL_COLUMNS)
    col = {name: k for k, name in enumerate(DEEPFOOL_COLUMNS)}
    norms_all = np.array([float(r[col["deepfool_norm"]]) for r in rows])
    return {
        "examples": len(rows),
        "clean_accuracy": float(np.mean([r[col["correct"]] == "1" for r in rows])),
        "median_norm_correct": float(np.median(norms_all[norms_all > 0])) if np.any(norms_all > 0) else 0.0,
    }
