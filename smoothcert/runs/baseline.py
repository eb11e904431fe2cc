"""``smoothcert baseline``: a deterministic certified defence beside smoothing (paper App. H.1, Figure 13).

``--method lipschitz``: a 1-Lipschitz MLP (orthonormal dense layers and MaxMin,
:mod:`smoothcert.models.lipschitz`) trained with Lipschitz-margin training (Tsuzuku, Sato &
Sugiyama, NeurIPS 2018) at radius ``epsilon``, then certified with the sound Lipschitz-margin radius
``margin / (sqrt(2) L)`` (:mod:`smoothcert.baselines`), ``L`` a guaranteed upper bound on the network's
L2 Lipschitz constant. The log has the 2019 reference's certify columns
(``idx label predict radius correct time``), so ``smoothcert analyze`` draws it beside smoothing logs.

The trained network is kept as a model directory (``model.safetensors`` + ``model.json``, default
``OUT.model``) that :func:`smoothcert.io.checkpoints.load_model` reads (arch ``lipschitz_mlp``), so it
can be reloaded, attacked or compared; the log's identity holds its ``model_sha256``. A model directory
that already holds a baseline trained with the same settings (``model.json``'s ``baseline`` field) is
reused without training; one trained with other settings, or holding another kind of model, is refused;
``overwrite`` retrains and replaces a baseline model (never another kind of model).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothcert.baselines.run import certify_dataset
from smoothcert.core.checks import check_int
from smoothcert.core.errors import CheckpointError, ConfigError
from smoothcert.io.checkpoints import checkpoint_sha256, load_model, save_model, versions
from smoothcert.io.data import get_spec, load_dataset
from smoothcert.io.logs import BASELINE_COLUMNS, ResultWriter, sidecar_path
from smoothcert.runs.certify import select_indices

__all__ = ["METHODS", "TRAINING_IDENTITY", "BaselineConfig", "BaselineResult", "run_baseline"]

METHODS = ("lipschitz",)
ARCH = "lipschitz_mlp"
# the settings that determine the trained weights: a model directory is reused only when all match
TRAINING_IDENTITY = ("method", "dataset", "epsilon", "epochs", "hidden", "lr", "temperature", "train_limit", "seed")


@dataclass(frozen=True)
class BaselineConfig:
    """Settings of ``smoothcert baseline``."""

    out: str
    method: str = "lipschitz"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epsilon: float = 0.5
    epochs: int = 20
    hidden: str = "1024,1024,512"
    lr: float = 1e-3
    temperature: float = 4.0
    train_limit: int | None = None
    skip: int = 1
    max: int | None = None
    seed: int = 0
    model_dir: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.dataset not in ("fashion-mnist", "mnist"):
            raise ConfigError(f"the Lipschitz baseline is built for 28x28 gray images, got dataset {self.dataset!r}")
        if not (self.epsilon > 0 and self.lr > 0 and self.temperature > 0):
            raise ConfigError(
                f"epsilon, lr and temperature must be > 0, got {self.epsilon!r}, {self.lr!r}, {self.temperature!r}"
            )
        for name in ("epochs", "skip"):
            check_int(name, getattr(self, name))
        for name in ("train_limit", "max"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        try:
            widths = [int(h) for h in self.hidden.split(",")]
        except ValueError:
            raise ConfigError(f"hidden must be a comma list of widths, got {self.hidden!r}") from None
        if not widths or min(widths) < 2 or any(w % 2 for w in widths):
            raise ConfigError(f"hidden widths must be even and >= 2 (MaxMin pairs units), got {self.hidden!r}")

    def widths(self) -> list[int]:
        return [int(h) for h in self.hidden.split(",")]

    def model_path(self) -> Path:
        """The model directory: ``model_dir``, by default ``OUT.model`` beside the log."""
        out = Path(self.out)
        return Path(self.model_dir) if self.model_dir is not None else out.with_name(out.name + ".model")

    def training_identity(self) -> dict[str, Any]:
        """The settings that determine the trained weights (:data:`TRAINING_IDENTITY`)."""
        return {k: getattr(self, k) for k in TRAINING_IDENTITY}


@dataclass(frozen=True)
class BaselineResult:
    """``log`` written; ``model_dir`` holding the certified network (sha256 ``model_sha256``, in the log's
    identity); ``model`` that network (eval mode); ``trained``: False when an existing model was reused."""

    log: Path
    model_dir: Path
    model_sha256: str
    model: nn.Module
    trained: bool


def _reusable(config: BaselineConfig) -> bool:
    """Whether ``config``'s model directory holds a baseline to reuse (True) or one is to be trained (False).

    Raises (one line) for a directory holding another kind of model or other files, a baseline trained with
    other settings (unless ``overwrite``), or weights without ``model.json`` (an interrupted save; unless
    ``overwrite``).
    """
    d = config.model_path()
    meta_path, weights = d / "model.json", d / "model.safetensors"
    if d.exists() and not d.is_dir():
        raise ConfigError(f"model_dir {str(d)!r} exists and is not a directory")
    if d.is_dir() and not meta_path.exists() and not weights.exists() and any(d.iterdir()):
        raise ConfigError(f"model_dir {str(d)!r} holds other files but no model; use an empty or new --model-dir")
    if not meta_path.exists():
        if weights.exists() and not config.overwrite:
            raise CheckpointError(
                f"{str(d)!r} holds model.safetensors but no model.json (an interrupted save?); "
                "pass --overwrite to retrain it, or use another --model-dir"
            )
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt model.json in {str(d)!r}: {e}") from None
    stored = meta.get("baseline") if isinstance(meta, dict) else None
    if not isinstance(stored, dict):
        raise ConfigError(
            f"model_dir {str(d)!r} holds a model not written by 'smoothcert baseline'; it is never replaced: "
            "use another --model-dir"
        )
    if config.overwrite:
        return False
    now = config.training_identity()
    diff = {k: (stored.get(k), v) for k, v in now.items() if stored.get(k) != v}
    if diff:
        details = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise ConfigError(
            f"model_dir {str(d)!r} holds a baseline trained with other settings ({details}); "
            "use another --model-dir, or --overwrite to retrain it"
        )
    return True


def run_baseline(config: BaselineConfig) -> BaselineResult:
    """Train (or reuse) the certified baseline, save it, certify the selected test examples, write the log.

    Everything is checked before training: an existing log is replaced only with ``overwrite``, and an
    existing model directory is reused, refused or (``overwrite``) retrained as :func:`_reusable` says.
    """
    from smoothcert.baselines.bound import lipschitz_bound
    from smoothcert.baselines.train import train_lipschitz_margin
    from smoothcert.models.lipschitz import lipschitz_mlp

    out = Path(config.out)
    if (out.exists() or sidecar_path(out).exists()) and not config.overwrite:
        raise ConfigError(f"{str(out)!r} exists: a baseline log is written anew; pass --overwrite to replace it")
    model_dir = config.model_path()
    reuse = _reusable(config)
    spec = get_spec(config.dataset)
    test: Any = load_dataset(config.dataset, "test", config.data_dir)
    indices = select_indices(len(test), skip=config.skip, max_examples=config.max)
    if not indices:
        raise ConfigError(f"{config.dataset} test has no examples to certify")
    net: nn.Module
    if reuse:
        net, meta = load_model(model_dir)
        if meta.get("arch") != ARCH or list(meta.get("input_shape", [])) != list(spec.input_shape):
            raise CheckpointError(f"{str(model_dir)!r} is not a {ARCH} for {config.dataset} inputs")
        train_info = {k: meta.get(k) for k in ("train_seconds", "last_epoch")}
    else:
        train: Any = load_dataset(config.dataset, "train", config.data_dir)
        torch.manual_seed(config.seed)
        limit = min(config.train_limit or len(train), len(train))
        x = torch.stack([train[i][0] for i in range(limit)])
        y = torch.tensor([int(train[i][1]) for i in range(limit)])
        in_features = int(torch.tensor(spec.input_shape).prod())
        net = lipschitz_mlp(in_features=in_features, hidden=config.widths(), mean=spec.mean, std=spec.std)
        bound = lipschitz_bound(net, spec.input_shape)
        began = time.perf_counter()
        history = train_lipschitz_margin(
            net,
            x,
            y,
            lipschitz=bound.value,
            epsilon=config.epsilon,
            epochs=config.epochs,
            lr=config.lr,
            temperature=config.temperature,
            seed=config.seed,
        )
        train_info = {"train_seconds": time.perf_counter() - began, "last_epoch": str(history[-1])}
        meta = {
            "arch": ARCH,
            "arch_params": {"hidden": config.widths(), "in_features": in_features},
            "dataset": config.dataset,
            "num_classes": spec.num_classes,
            "input_shape": list(spec.input_shape),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "sigma": 0.0,  # trained without noise: smoothing it needs an explicit --sigma
            "noise": "gaussian",
            "method": "lipschitz-margin",
            "epochs": config.epochs,
            "baseline": config.training_identity(),
            "lipschitz_at_init": bound.value,
            "train_accuracy": history[-1].accuracy,
            **train_info,
            "versions": versions(),
        }
        # the old model.json is removed first, so that a crash between save_model's two renames leaves
        # weights without model.json (refused next time) rather than new weights beside the old settings
        (model_dir / "model.json").unlink(missing_ok=True)
        save_model(model_dir, net, meta)
    model_sha = checkpoint_sha256(model_dir)
    xt = torch.stack([test[i][0] for i in indices])
    yt = torch.tensor([int(test[i][1]) for i in indices])
    run = certify_dataset(net, xt, yt, indices=indices)
    identity = {"method": "lipschitz-margin", "norm": "l2", **asdict(config), "model_sha256": model_sha}
    for key in ("out", "overwrite", "data_dir", "model_dir"):
        identity.pop(key)
    sidecar: dict[str, Any] = {
        "identity": identity,
        "model": {"arch": ARCH, "hidden": config.hidden, "dataset": config.dataset, "path": str(model_dir)},
        "model_reused": reuse,
        "lipschitz": run.bound.value,
        "layers": [[ln.name, ln.kind, ln.norm] for ln in run.bound.layers],
        "bound_seconds": run.bound_seconds,
        **train_info,
        "versions": versions(),
    }
    with ResultWriter(out, BASELINE_COLUMNS, sidecar=sidecar, overwrite=True) as writer:
        writer.write([r.values() for r in run.rows])
    return BaselineResult(out, model_dir, model_sha, net.eval(), not reuse)
