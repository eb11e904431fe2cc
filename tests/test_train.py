"""Training: per-rank random streams under DDP, and checkpoints that survive a crash at any step."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from synthdata import write_idx_dataset
from torch.utils.data import SequentialSampler

import smoothcert.training.loop as T
from smoothcert.runtime.distributed import DistContext


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    return write_idx_dataset(tmp_path_factory.mktemp("fmnist"), n_train=48, n_test=16)


def _config(data: Path, out: Path, **kw: Any) -> T.TrainConfig:
    base: dict[str, Any] = dict(
        dataset="fashion-mnist",
        arch="small_cnn",
        sigma=0.5,
        out=str(out),
        epochs=2,
        batch=16,
        train_limit=32,
        data_dir=str(data),
        device="cpu",
        progress=False,
    )
    return T.TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------- item 7: per-rank streams


def test_epoch_seeds_are_per_rank_per_epoch_and_reproducible():
    s = {
        (seed, epoch, rank): T.epoch_seeds(seed, epoch, rank)
        for seed in (0, 1)
        for epoch in (1, 2)
        for rank in (0, 1, 2)
    }
    assert T.epoch_seeds(1, 2, 1) == s[(1, 2, 1)]  # a pure function of (seed, epoch, rank)
    own = [v for e in s.values() for v in (e.augment, e.noise)]
    assert len(set(own)) == len(own)  # every rank, epoch, seed and purpose has its own stream
    for seed in (0, 1):
        for epoch in (1, 2):
            assert len({s[(seed, epoch, r)].shuffle for r in (0, 1, 2)}) == 1  # one permutation, sharded
    assert len({e.shuffle for e in s.values()}) == 4
    assert all(0 <= v < 2**63 for e in s.values() for v in (e.shuffle, e.augment, e.noise))
    with pytest.raises(ValueError, match="rank"):
        T.epoch_seeds(0, 1, -1)


class _Stop(Exception):
    pass


class _FakeRank(DistContext):
    """Rank ``rank`` of 2 without a process group: no DDP, and every rank reads the same examples,
    so what the model sees differs between ranks only by the augmentation and noise drawn."""

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def sampler(self, dataset: Any, *, seed: int) -> Any:
        return SequentialSampler(dataset)


def _model_inputs(monkeypatch, config: T.TrainConfig, rank: int, *, augment: bool) -> torch.Tensor:
    """The first two training batches the model of ``rank`` is fed (noisy, augmented)."""
    seen: list[torch.Tensor] = []
    build = T.build_model
    load = T.load_dataset

    def hooked(*a: Any, **kw: Any) -> torch.nn.Module:
        model = build(*a, **kw)

        def record(_m: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen.append(args[0].detach().clone())
            if len(seen) == 2:
                raise _Stop

        model.register_forward_pre_hook(record)
        return model

    monkeypatch.setattr(T, "build_model", hooked)
    monkeypatch.setattr(
        T, "load_dataset", lambda *a, **kw: load(*a, **{**kw, "augment": augment and kw.get("augment", False)})
    )
    with pytest.raises(_Stop):
        T.train(config, _FakeRank(rank=rank, world_size=2))
    return torch.cat(seen)


@pytest.mark.parametrize(
    ("source", "workers"),
    [("noise", 0), ("augmentation", 0), ("augmentation", 1)],
)
def test_each_rank_draws_its_own_noise_and_augmentation(monkeypatch, tmp_path, fmnist, source, workers):
    """Two ranks fed the same examples see different inputs; the same rank twice sees identical ones.

    ``noise``: augmentation off, sigma = 0.5, so only the Gaussian noise can differ.
    ``augmentation``: sigma = 0, so only the crops and flips can differ (in the main process,
    and in a DataLoader worker, which is seeded from the loader's generator).
    """
    sigma = 0.5 if source == "noise" else 0.0
    config = _config(fmnist, tmp_path / "out", sigma=sigma, workers=workers)
    r0 = _model_inputs(monkeypatch, config, 0, augment=source == "augmentation")
    r1 = _model_inputs(monkeypatch, config, 1, augment=source == "augmentation")
    r1_again = _model_inputs(monkeypatch, config, 1, augment=source == "augmentation")
    assert r0.shape == r1.shape == (32, 1, 28, 28)
    assert torch.equal(r1, r1_again)  # reproducible from (seed, epoch, rank)
    differ = (r0 != r1).flatten(1).any(1)
    # with one shared stream (the bug) no example differs; with independent streams, each of the
    # 32 examples differs unless crop and flip happen to coincide (p <= 1/50 each for padding 2 + flip)
    assert int(differ.sum()) >= 16, f"only {int(differ.sum())}/32 inputs differ between ranks"


# ---------------------------------------------------------------- item 8: crash-consistent checkpoints


class _Crash(Exception):
    pass


class _Faults:
    """Counts the steps of saving (safetensors writes, fsyncs, renames) and raises at step ``at``."""

    def __init__(self, monkeypatch, at: int | None) -> None:
        self.at, self.count = at, 0
        for mod, name in ((safetensors.torch, "save_file"), (os, "replace"), (os, "fsync")):
            monkeypatch.setattr(mod, name, self._wrap(getattr(mod, name)))

    def _wrap(self, fn: Any) -> Any:
        def step(*a: Any, **kw: Any) -> Any:
            self.count += 1
            if self.count == self.at:
                raise _Crash(f"crash at step {self.count} ({fn.__name__})")
            return fn(*a, **kw)

        return step


def _log_epochs(out: Path) -> list[int]:
    lines = (out / "train_log.tsv").read_text().splitlines()
    assert lines[0].split("\t") == [
        "epoch",
        "lr",
        "train_loss",
        "train_acc",
        "test_clean_acc",
        "test_noisy_acc",
        "time",
    ]
    return [int(ln.split("\t")[0]) for ln in lines[1:]]


def _checkpoint_epoch(out: Path) -> int | None:
    """The epoch in the checkpoint's metadata (None for a checkpoint without it)."""
    with safetensors.safe_open(str(out / "checkpoint.safetensors"), framework="pt") as fh:
        stored = (fh.metadata() or {}).get("smoothcert_checkpoint")
    return None if stored is None else int(json.loads(stored)["epoch"])


@pytest.mark.slow
def test_a_crash_at_any_step_resumes_with_each_epoch_logged_once(monkeypatch, tmp_path, fmnist):
    """Crash at the k-th save step for every k (as a kill would: nothing after it runs), resume.

    After resuming, the log holds each epoch exactly once, the checkpoint and model.json the final
    epoch count. Positive control: the crashes do land between the checkpoint's rename and the
    log's, where a log written separately from the checkpoint would lag behind (or, appended
    before it, run ahead of) the checkpoint.
    """
    windows = set()
    k = 0
    while True:
        k += 1
        out = tmp_path / f"k{k}"
        config = _config(fmnist, out)
        with monkeypatch.context() as m:
            faults = _Faults(m, at=k)
            try:
                T.train(config)
            except _Crash:
                crashed = True
            else:
                crashed = False
        if not crashed:
            break
        if (out / "checkpoint.safetensors").exists() and (out / "train_log.tsv").exists():
            windows.add((_checkpoint_epoch(out), tuple(_log_epochs(out))))
        meta = T.train(config)  # resume, no faults
        assert _log_epochs(out) == [1, 2], f"crash at step {k}"
        assert _checkpoint_epoch(out) == 2 and meta["epochs"] == 2
        assert json.loads((out / "model.json").read_text())["epochs"] == 2
        assert not list(out.glob("*.tmp")), f"crash at step {k}: temporary files left"
    assert faults.count == k - 1 >= 2 * 7, faults.count  # every step of both epochs' saves was hit
    assert (1, ()) in windows and (2, (1,)) in windows  # checkpoint renamed, its log row not yet written


def test_resume_from_a_legacy_two_file_checkpoint_drops_duplicate_rows(tmp_path, fmnist):
    """Runs checkpointed by the two-file format (weights + checkpoint.json) still resume."""
    out = tmp_path / "legacy"
    T.train(_config(fmnist, out, epochs=1))
    tensors = safetensors.torch.load_file(str(out / "checkpoint.safetensors"))
    safetensors.torch.save_file(tensors, str(out / "checkpoint.safetensors"))  # no metadata
    config = _config(fmnist, out, epochs=1)
    (out / "checkpoint.json").write_text(
        json.dumps({"epoch": 1, "config": {k: getattr(config, k) for k in T._IDENTITY}})
    )
    log = out / "train_log.tsv"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([*lines, lines[1], "2\t0.1\t9\t9\t9\t9\t9"]) + "\n")  # epoch 1 twice, unfinished 2
    T.train(_config(fmnist, out, epochs=2))
    assert _log_epochs(out) == [1, 2]
    assert _checkpoint_epoch(out) == 2
    assert not (out / "checkpoint.json").exists()  # the stale legacy metadata is gone


def test_resume_refuses_fewer_epochs_than_trained(tmp_path, fmnist):
    out = tmp_path / "m"
    T.train(_config(fmnist, out, epochs=2))
    with pytest.raises(ValueError, match="already holds 2 trained epochs, more than epochs=1"):
        T.train(_config(fmnist, out, epochs=1))


# ---------------------------------------------------------------- the shared checkpoint helper


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_one_checkpoint_helper_restores_model_and_optimizer_exactly(tmp_path, opt):
    """training.checkpoint serves both loops: SGD (classifier) and Adam (denoiser) state come back bit-equal,
    and a changed identity field is refused naming it with both values (control: the same identity resumes)."""
    from smoothcert.core.errors import CheckpointError
    from smoothcert.training import checkpoint as C

    fmt = C.CheckpointFormat(key="k", identity_field="identity", log_header="epoch\tx", what="test run")

    def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        if opt == "sgd":
            return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        return model, torch.optim.Adam(model.parameters(), lr=1e-3)

    model, optim = make()
    for _ in range(3):
        optim.zero_grad()
        model(torch.randn(4, 3)).square().sum().backward()
        optim.step()
    C.save_checkpoint(
        tmp_path, fmt, model=model, optimizer=optim, epoch=3, identity={"a": 1}, log=["1\t0", "2\t0", "3\t0"]
    )
    fresh, fresh_optim = make()
    epoch, log = C.resume(tmp_path, fmt, model=fresh, optimizer=fresh_optim, identity={"a": 1}, epochs=5)
    assert epoch == 3 and log == ["1\t0", "2\t0", "3\t0"]
    assert (tmp_path / "train_log.tsv").read_text().splitlines() == ["epoch\tx", "1\t0", "2\t0", "3\t0"]
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    saved, restored = optim.state_dict()["state"], fresh_optim.state_dict()["state"]
    assert saved.keys() == restored.keys() and saved
    for i in saved:
        for key, value in saved[i].items():
            assert torch.equal(torch.as_tensor(restored[i][key]), torch.as_tensor(value)), (i, key)
    with pytest.raises(CheckpointError, match=r"different configuration \(a: 1 there, 2 now\)"):
        C.resume(tmp_path, fmt, model=fresh, optimizer=fresh_optim, identity={"a": 2}, epochs=5)
    with pytest.raises(CheckpointError, match=r"b: 'x' there, None now"):  # a field the run no longer has
        C.save_checkpoint(tmp_path, fmt, model=model, optimizer=optim, epoch=3, identity={"a": 1, "b": "x"}, log=[])
        C.resume(tmp_path, fmt, model=fresh, optimizer=fresh_optim, identity={"a": 1}, epochs=5)
    with pytest.raises(CheckpointError, match="already holds 3 trained epochs, more than epochs=2"):
        C.resume(tmp_path, fmt, model=fresh, optimizer=fresh_optim, identity={"a": 1, "b": "x"}, epochs=2)
    other = C.CheckpointFormat(key="other", identity_field="identity", log_header="epoch", what="denoiser run")
    with pytest.raises(CheckpointError, match="is not a smoothcert denoiser run checkpoint"):
        C.resume(tmp_path, other, model=fresh, optimizer=fresh_optim, identity={"a": 1}, epochs=5)


# ---------------------------------------------------------------- gradient clipping (MACER's stabilizer)


def _initial_and_trained(data: Path, out: Path, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    from smoothcert.io.checkpoints import load_model
    from smoothcert.io.data import get_spec
    from smoothcert.models.architectures import build_model

    config = _config(data, out, epochs=1, train_limit=16, momentum=0.0, weight_decay=0.0, **kw)
    spec = get_spec("fashion-mnist")
    torch.manual_seed(config.seed)  # train() builds its model right after this seed
    init = build_model("small_cnn", num_classes=10, in_channels=1, mean=spec.mean, std=spec.std)
    T.train(config)
    trained, _ = load_model(out)
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    return flat(init), flat(trained)


def test_clip_grad_bounds_each_step_by_lr_times_the_norm(tmp_path, fmnist):
    # one plain SGD step (no momentum, no weight decay): the update is -lr * clipped gradient, so its
    # L2 norm is at most lr * clip_grad (float32 rounding: 1e-4 relative)
    lr, clip = 0.1, 1e-3
    init, clipped = _initial_and_trained(fmnist, tmp_path / "clip", lr=lr, clip_grad=clip)
    assert float((clipped - init).norm()) <= lr * clip * (1 + 1e-4)
    assert float((clipped - init).norm()) > 0.5 * lr * clip  # it did take the step
    # control: the same step unclipped is far longer, so the bound above can fail
    init2, free = _initial_and_trained(fmnist, tmp_path / "free", lr=lr)
    assert torch.equal(init, init2)
    assert float((free - init).norm()) > 10 * lr * clip


def test_clip_grad_is_part_of_the_run_identity_and_validated(tmp_path, fmnist):
    out = tmp_path / "m"
    T.train(_config(fmnist, out, epochs=1, clip_grad=2.0))
    with pytest.raises(ValueError, match=r"clip_grad: 2\.0 there, None now"):
        T.train(_config(fmnist, out, epochs=2))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="clip_grad"):
            _config(fmnist, tmp_path / "x", clip_grad=bad)


def test_a_checkpoint_from_before_clip_grad_resumes_as_unclipped(tmp_path, fmnist):
    out = tmp_path / "m"
    T.train(_config(fmnist, out, epochs=1))
    path = out / "checkpoint.safetensors"
    with safetensors.safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(metadata[T.CHECKPOINT.key])
    del meta["config"]["clip_grad"]  # as written before the field existed
    safetensors.torch.save_file(tensors, str(path), metadata={T.CHECKPOINT.key: json.dumps(meta)})
    # control: a clipped run is another configuration, so the old checkpoint is refused for it
    with pytest.raises(ValueError, match=r"clip_grad: None there, 2\.0 now"):
        T.train(_config(fmnist, out, epochs=2, clip_grad=2.0))
    T.train(_config(fmnist, out, epochs=2))
    assert _checkpoint_epoch(out) == 2
