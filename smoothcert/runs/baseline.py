"""``smoothcert baseline``: a deterministic certified defence beside smoothing (paper App. H.1, Figure 13).

``--method lipschitz``: a 1-Lipschitz MLP (orthonormal dense layers and MaxMin,
:mod:`smoothcert.models.lipschitz`) trained with Lipschitz-margin training (Tsuzuku, Sato &
Sugiyama, NeurIPS 2018) at radius ``epsilon``, then certified with the sound Lipschitz-margin radius
``margin / (sqrt(2) L)`` (:mod:`smoothcert.baselines`), ``L`` a guaranteed upper bound on the network's
L2 Lipschitz constant. The log has the 2019 reference's certify columns
(``idx label predict radius correct time``), so ``smoothcert analyze`` draws it beside smoothing logs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from smoothcert.baselines.run import certify_dataset
from smoothcert.core.checks import check_int
from smoothcert.core.errors import ConfigError
from smoothcert.io.checkpoints import versions
from smoothcert.io.data import get_spec, load_dataset
from smoothcert.io.logs import BASELINE_COLUMNS, ResultWriter, sidecar_path
from smoothcert.runs.certify import select_indices

__all__ = ["METHODS", "BaselineConfig", "run_baseline"]

METHODS = ("lipschitz",)


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


def run_baseline(config: BaselineConfig) -> Path:
    """Train the certified baseline, certify the selected test examples, write the log; return its path.

    Everything is checked before training: an existing log is replaced only with ``overwrite``.
    """
    from smoothcert.baselines.bound import lipschitz_bound
    from smoothcert.baselines.train import train_lipschitz_margin
    from smoothcert.models.lipschitz import lipschitz_mlp

    out = Path(config.out)
    if (out.exists() or sidecar_path(out).exists()) and not config.overwrite:
        raise ConfigError(f"{str(out)!r} exists: a baseline is trained anew each run; pass --overwrite to replace it")
    spec = get_spec(config.dataset)
    train: Any = load_dataset(config.dataset, "train", config.data_dir)
    test: Any = load_dataset(config.dataset, "test", config.data_dir)
    indices = select_indices(len(test), skip=config.skip, max_examples=config.max)
    if not indices:
        raise ConfigError(f"{config.dataset} test has no examples to certify")
    torch.manual_seed(config.seed)
    limit = min(config.train_limit or len(train), len(train))
    x = torch.stack([train[i][0] for i in range(limit)])
    y = torch.tensor([int(train[i][1]) for i in range(limit)])
    net = lipschitz_mlp(hidden=config.widths(), mean=spec.mean, std=spec.std)
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
    train_seconds = time.perf_counter() - began
    xt = torch.stack([test[i][0] for i in indices])
    yt = torch.tensor([int(test[i][1]) for i in indices])
    run = certify_dataset(net, xt, yt, indices=indices)
    identity = {"method": "lipschitz-margin", "norm": "l2", **asdict(config)}
    for key in ("out", "overwrite", "data_dir"):
        identity.pop(key)
    sidecar: dict[str, Any] = {
        "identity": identity,
        "model": {"arch": "lipschitz_mlp", "hidden": config.hidden, "dataset": config.dataset},
        "lipschitz": run.bound.value,
        "layers": [[ln.name, ln.kind, ln.norm] for ln in run.bound.layers],
        "bound_seconds": run.bound_seconds,
        "train_seconds": train_seconds,
        "last_epoch": str(history[-1]),
        "versions": versions(),
    }
    with ResultWriter(out, BASELINE_COLUMNS, sidecar=sidecar, overwrite=True) as writer:
        writer.write([r.values() for r in run.rows])
    return out
