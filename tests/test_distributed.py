"""torchrun: certification sharded over 2 CPU processes (gloo) equals a single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthdata import write_idx_dataset

from smoothcert.cli.main import main

REPO = Path(__file__).resolve().parents[1]


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "smoothcert",
        "--",  # keeps torchrun's parser from taking --n for its --nnodes
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    data = write_idx_dataset(root / "data", n_train=64, n_test=25)
    assert (
        main(
            [
                "train",
                "--dataset",
                "fashion-mnist",
                "--data-dir",
                str(data),
                "--arch",
                "small_cnn",
                "--sigma",
                "0.5",
                "--out",
                str(root / "m"),
                "--epochs",
                "1",
                "--batch",
                "16",
                "--quiet",
            ]
        )
        == 0
    )
    return root, data


def _strip_time(path: Path) -> list[list[str]]:
    rows = [ln.split("\t") for ln in path.read_text().splitlines()]
    t = rows[0].index("time")
    return [r[:t] + r[t + 1 :] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize(("command", "mode"), [("certify", ()), ("predict", ()), ("certify", ("--float-noise",))])
def test_torchrun_two_processes_equals_single_process(setup, command, mode):
    """Sound mode (the default) and float mode alike: the shards merge into the single process's rows."""
    root, data = setup
    common = [
        command,
        *mode,
        "--model",
        str(root / "m"),
        "--data-dir",
        str(data),
        "--n",
        "120",
        "--batch",
        "50",
        "--alpha",
        "0.05",
        "--seed",
        "3",
        "--skip",
        "2",
        "--device",
        "cpu",
        "--quiet",
    ]
    if command == "certify":
        common += ["--n0", "20"]
    tag = command + "".join(mode)
    single, multi = root / f"{tag}_single.tsv", root / f"{tag}_multi.tsv"
    assert main([*common, "--out", str(single)]) == 0
    _torchrun([*common, "--out", str(multi)], root)
    assert _strip_time(multi) == _strip_time(single)
    assert len(_strip_time(multi)) == 1 + 13
    assert not list(root.glob(f"{multi.name}.part*")), "part files are merged and removed"
    assert (
        json.loads(Path(str(multi) + ".json").read_text())["identity"]
        == json.loads(Path(str(single) + ".json").read_text())["identity"]
    )
    assert json.loads(Path(str(multi) + ".json").read_text())["identity"]["sound"] is not bool(mode)
    _torchrun([*common, "--out", str(multi)], root)  # re-running resumes: nothing to add, nothing lost
    assert _strip_time(multi) == _strip_time(single)
    # --overwrite with other settings: new rows under a new sidecar (the old identity is gone)
    _torchrun([*common, "--out", str(multi), "--alpha", "0.1", "--overwrite"], root)
    assert json.loads(Path(str(multi) + ".json").read_text())["identity"]["alpha"] == 0.1
    assert len(_strip_time(multi)) == 1 + 13
    _torchrun([*common, "--out", str(multi), "--alpha", "0.1"], root)  # and it resumes under the new one


@pytest.mark.slow
def test_torchrun_trains_with_ddp(setup):
    root, data = setup
    out = root / "ddp"
    _torchrun(
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(data),
            "--arch",
            "small_cnn",
            "--sigma",
            "0.25",
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch",
            "16",
            "--device",
            "cpu",
            "--quiet",
        ],
        root,
    )
    meta = json.loads((out / "model.json").read_text())
    assert meta["epochs"] == 2 and (out / "model.safetensors").exists()
    assert [r.split("\t")[0] for r in (out / "train_log.tsv").read_text().splitlines()[1:]] == ["1", "2"]


def test_two_ranks_in_sound_mode_merge_into_the_single_process_rows(setup, tmp_path):
    """The ranks of a sharded sound-mode run (played one after the other in this process: rank 1
    writes its part, rank 0 its part and the merge) give the rows of one process, time aside.

    Control: the same shards in float mode give other rows (the noise is drawn another way)."""
    from smoothcert.runs.certify import RunConfig, run
    from smoothcert.runtime.distributed import DistContext

    root, data = setup
    common = dict(command="certify", model=str(root / "m"), data_dir=str(data), n0=10, n=60, alpha=0.05, seed=3)
    common.update(batch=100, max=6, device="cpu", progress=False)

    def sharded(out, **more):
        for rank in (1, 0):
            run(RunConfig(out=str(out), **common, **more), DistContext(rank=rank, world_size=2))
        return out

    single = run(RunConfig(out=str(tmp_path / "single.tsv"), **common))
    multi = sharded(tmp_path / "multi.tsv")
    assert _strip_time(multi) == _strip_time(single) and len(_strip_time(multi)) == 1 + 6
    identity = json.loads(Path(str(multi) + ".json").read_text())["identity"]
    assert identity == json.loads(Path(str(single) + ".json").read_text())["identity"]
    assert identity["sound"] is True and identity["grid"] == 255
    assert not list(tmp_path.glob("multi.tsv.part*"))
    floats = sharded(tmp_path / "float.tsv", sound=False)
    assert _strip_time(floats) != _strip_time(single)


def test_overwrite_under_torchrun_replaces_the_sidecar(setup, tmp_path):
    """Rank 0 of a 2-process --overwrite run (the other rank's part simply missing): the merged
    log must carry the new identity, not the sidecar of the log it replaced."""
    from smoothcert.runs.certify import RunConfig, run
    from smoothcert.runtime.distributed import DistContext

    root, data = setup
    out = tmp_path / "c.tsv"
    common = dict(command="certify", model=str(root / "m"), out=str(out), data_dir=str(data), n0=5, max=4)
    common.update(batch=100, device="cpu", progress=False)
    run(RunConfig(n=20, **common))
    assert json.loads(Path(str(out) + ".json").read_text())["identity"]["n"] == 20
    run(RunConfig(n=30, overwrite=True, **common), DistContext(rank=0, world_size=2))
    assert json.loads(Path(str(out) + ".json").read_text())["identity"]["n"] == 30
    rows = [ln.split("\t") for ln in out.read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["0", "2"] and {r[7] for r in rows} == {"30"}  # rank 0's share, at n = 30


@pytest.mark.parametrize(
    ("local_rank", "local_world", "gpus", "expected"),
    [
        (0, 2, 2, (0, "nccl")),  # a GPU each
        (1, 2, 2, (1, "nccl")),
        (1, 2, 4, (1, "nccl")),
        (0, 2, 1, (0, "gloo")),  # two ranks on one GPU: shared, and NCCL would refuse it
        (1, 2, 1, (0, "gloo")),
        (3, 4, 2, (1, "gloo")),
    ],
)
def test_cuda_placement_shares_gpus_when_ranks_outnumber_them(local_rank, local_world, gpus, expected):
    from smoothcert.runtime.distributed import cuda_placement

    assert cuda_placement(local_rank, local_world, gpus) == expected


def test_cuda_placement_needs_a_gpu():
    from smoothcert.runtime.distributed import cuda_placement

    with pytest.raises(ValueError, match="device_count must be >= 1, got 0"):
        cuda_placement(0, 1, 0)


def test_each_rank_of_a_torchrun_gets_its_share_of_the_cores():
    """What a rank's CLI start-up sets (perf.set_threads), in a child with torchrun's environment:
    2 local ranks without OMP_NUM_THREADS take cores // 2 each; with it set, its value."""
    code = "from smoothcert.runtime.perf import set_threads, available_cores; print(set_threads(), available_cores())"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(LOCAL_WORLD_SIZE="2", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    threads, cores = map(int, out.stdout.split())
    assert threads == max(1, cores // 2)
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split()[0] == "1"
