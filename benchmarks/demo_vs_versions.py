"""``make demo``'s whole job (``smoothcert demo``) of smoothcert 0.1, 0.2 and this checkout, paired.

Each version runs ``python -m smoothcert demo --out DIR`` from its own ``git worktree`` (the
commits of :mod:`speed_vs_versions`, reused when present) with this interpreter: the same job in
every version (``small_cnn`` trained 4 epochs at sigma = 0.25, 0.5 and 1 on Fashion-MNIST, then
CERTIFY of every 20th test example with n0 = 100, n = 1,000, alpha = 0.001), in each version's
default mode (0.1 and 0.2: float mode; this checkout: sound mode; ``--float-noise`` adds this
checkout's float mode). Rounds rotate the order; the report gives each one's median whole-process
time (training included: each version draws its own training noise) and the median of per-round
ratios.

    python benchmarks/demo_vs_versions.py --rounds 1 --float --json J   # about 12 minutes on a quiet 2-core CPU
    python benchmarks/demo_vs_versions.py --rounds 2 --float --json J --more   # two rounds more
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_vs_versions import _run, _worktree

__all__ = ["main"]

CONFIGS = {"0.1": [], "0.2": [], "this": []}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--float", action="store_true", help="also time this checkout's demo --float-noise")
    p.add_argument("--workdir", default="/tmp/smoothcert-versions")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--more", action="store_true", help="add --rounds rounds to those already in --json")
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    configs = {**CONFIGS, **({"this --float-noise": ["--float-noise"]} if args.float else {})}
    trees = {name: _worktree(workdir, name.split()[0]) for name in configs}
    wall: dict[str, list[float]] = {name: [] for name in configs}
    if args.more and args.json and Path(args.json).exists():
        wall.update(json.loads(Path(args.json).read_text())["wall"])
    done = min(len(v) for v in wall.values())
    names = list(configs)
    for r in range(done, done + args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            out = workdir / f"demo-{name.replace(' ', '')}"
            shutil.rmtree(out, ignore_errors=True)  # the demo resumes an existing directory: start afresh
            cli = ["demo", "--out", str(out), *configs[name]]
            wall[name].append(_run(trees[name], cli, workdir))
            print(f"round {r}: {name}: {wall[name][-1]:.1f} s", flush=True)
    print(f"\n{done + args.rounds} round(s), smoothcert demo (3 models, 4 epochs each; 500 test examples each)")
    for name, times in wall.items():
        print(f"{name:20s} {statistics.median(times):8.1f} s (median)")
    ratios = {
        f"{base} / {name}": statistics.median(b / a for a, b in zip(wall[name], wall[base], strict=True))
        for name in configs
        if name.startswith("this")
        for base in ("0.1", "0.2")
    }
    for k, v in ratios.items():
        print(f"time {k}: {v:.3f}x (this checkout is that many times as fast)")
    if args.json:
        Path(args.json).write_text(json.dumps({"wall": wall, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
