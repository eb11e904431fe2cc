"""CLI ``certify`` of smoothcert 0.1, 0.2 and this checkout, paired, as whole processes; raw forward.

Each version runs from its own ``git worktree`` (made under ``--workdir`` from the commits
below, reused when present) with this interpreter, ``PYTHONPATH`` set to the worktree, on the
same model directory (``small_cnn`` trained for one epoch on 256 Fashion-MNIST images by 0.1's
CLI, so that every version can read it; throughput does not depend on the weights) and the same
test examples, with the CLI's defaults (batch 1000, n0 = 100, channels-last, measured pass size)
except ``--n`` and ``--max``. Configurations:

* ``0.1 float``, ``0.2 float``, ``0.2 sound``, ``this float`` (``--float-noise``: float32 Gaussian
  draws), ``this float64`` (``--float-noise --float-draws float64``: 0.2's stream), ``this sound``
  (the default); 0.1 has no sound mode.

Rounds are interleaved and their order rotates, so a burst of load elsewhere on the machine hits
every configuration alike; the report gives, per configuration, the median whole-process time
and the median sampling rate from the log's per-example ``time`` column (``(n0 + n) * examples /
sum(time)`` over every example but the first, which also pays one-time set-up such as sound
mode's thresholds: start-up, data loading and the pass-size probe excluded), and the medians of the
per-round ratios. A last line measures the base model's best raw forward throughput (fastest of
NCHW and channels-last at batch 64 .. 1000, in one process, this checkout's environment) for
reference.

    python benchmarks/speed_vs_versions.py                   # 3 rounds, n = 20,000, 3 examples
    python benchmarks/speed_vs_versions.py --rounds 1 --n 2000 --max 2   # smoke run

0.1 is commit c5f5847 (the last before the 0.2 layout redesign, ``version = "0.1.0"``); 0.2 is
9cc7782 (``version = "0.2.0"``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
COMMITS = {"0.1": "c5f5847", "0.2": "9cc7782"}
CONFIGS = [
    ("0.1", "float"),
    ("0.2", "float"),
    ("0.2", "sound"),
    ("this", "float"),
    ("this", "float64"),
    ("this", "sound"),
]
# the flags of each mode; this checkout is sound by default (--sound is a no-op there)
FLAGS = {
    ("0.1", "float"): [],
    ("0.2", "float"): [],
    ("0.2", "sound"): ["--sound"],
    ("this", "float"): ["--float-noise"],
    ("this", "float64"): ["--float-noise", "--float-draws", "float64"],
    ("this", "sound"): [],
}


def _worktree(workdir: Path, version: str) -> Path:
    if version == "this":
        return ROOT
    path = workdir / f"smoothcert-{version}"
    if not (path / "smoothcert").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), COMMITS[version]], check=True)
    return path


def _run(tree: Path, args: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "smoothcert", *args], cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: smoothcert {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return elapsed


def _sampling_rate(log: Path, n0: int, n: int) -> float:
    with log.open() as f:
        times = [float(row["time"]) for row in csv.DictReader(f, delimiter="\t")]
    times = times[1:] or times  # the first example also pays one-time set-up (thresholds, warm-up)
    return (n0 + n) * len(times) / sum(times)


def raw_forward_best(model_dir: Path) -> dict[str, float]:
    """Best forward throughput (samples/s) of the model over NCHW / channels-last and batch sizes."""
    code = f"""
import json, time, torch
from smoothcert.io.checkpoints import load_model
model = load_model({str(model_dir)!r}, device="cpu")[0].eval()
best = {{}}
with torch.inference_mode():
    for cl in (False, True):
        m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        for b in (64, 128, 256, 512, 1000):
            x = torch.rand(b, 1, 28, 28)
            x = x.contiguous(memory_format=torch.channels_last) if cl else x
            m(x)
            reps = max(2, 4000 // b)
            rates = []
            for _ in range(3):
                t = time.perf_counter()
                for _ in range(reps):
                    m(x)
                rates.append(reps * b / (time.perf_counter() - t))
            best[f"{{'cl' if cl else 'nchw'}}@{{b}}"] = max(rates)
print(json.dumps(best))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--max", type=int, default=3, help="examples per run (the first is not timed)")
    p.add_argument("--workdir", default="/tmp/smoothcert-versions")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    trees = {v: _worktree(workdir, v) for v in ("0.1", "0.2", "this")}
    model = workdir / "model"
    if not (model / "model.json").exists():
        _run(
            trees["0.1"],
            [
                "train",
                "--arch",
                "small_cnn",
                "--dataset",
                "fashion-mnist",
                "--sigma",
                "0.25",
                "--epochs",
                "1",
                "--train-limit",
                "256",
                "--out",
                str(model),
                "--quiet",
            ],
            workdir,
        )
    wall: dict[str, list[float]] = {}
    rate: dict[str, list[float]] = {}
    for r in range(args.rounds):
        order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
        for version, mode in order:
            name = f"{version} {mode}"
            log = workdir / f"{version}-{mode}.tsv"
            cli = [
                "certify",
                "--model",
                str(model),
                "--n",
                str(args.n),
                "--max",
                str(args.max),
                "--out",
                str(log),
                "--overwrite",
                "--quiet",
                *FLAGS[version, mode],
            ]
            wall.setdefault(name, []).append(_run(trees[version], cli, workdir))
            rate.setdefault(name, []).append(_sampling_rate(log, 100, args.n))
            print(f"round {r}: {name}: {wall[name][-1]:.1f} s, {rate[name][-1]:,.0f} samples/s", flush=True)
    print(f"\n{args.rounds} rounds, n = {args.n}, {args.max} examples, small_cnn on Fashion-MNIST, CLI defaults")
    print(f"{'configuration':14s} {'wall s (median)':>16s} {'sampling samples/s (median)':>28s}")
    for name in wall:
        print(f"{name:14s} {statistics.median(wall[name]):16.1f} {statistics.median(rate[name]):28,.0f}")
    for a, b in (("this sound", "0.1 float"), ("this float", "0.1 float"), ("this sound", "0.2 float")):
        w = statistics.median(y / x for x, y in zip(wall[a], wall[b], strict=True))
        print(f"whole process {a} vs {b}: {w:.3f}x as fast (median of per-round time ratios {b} / {a})")

    def ratio(a: str, b: str) -> float:  # median of per-round rate ratios a / b
        return statistics.median(x / y for x, y in zip(rate[a], rate[b], strict=True))

    pairs = [
        ("this float", "0.1 float"),
        ("this float", "0.2 float"),
        ("this float", "this float64"),
        ("this sound", "0.1 float"),
        ("this sound", "0.2 float"),
        ("this sound", "0.2 sound"),
        ("this sound", "this float"),
    ]
    ratios = {f"{a} / {b}": ratio(a, b) for a, b in pairs}
    for k, v in ratios.items():
        print(f"sampling rate {k}: {v:.3f}x (median of per-round ratios)")
    fwd = raw_forward_best(model)
    best = max(fwd, key=fwd.__getitem__)
    print(
        f"raw forward best: {fwd[best]:,.0f} samples/s ({best}); "
        f"this sound / raw forward: {statistics.median(rate['this sound']) / fwd[best]:.3f} (separate processes)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"wall": wall, "rate": rate, "ratios": ratios, "forward": fwd}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
