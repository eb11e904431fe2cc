#!/usr/bin/env bash
# One GPU, under 8 minutes: what the project needs measured on a CUDA device, in one results file.
#
#   1. the CUDA-only tests (those that skip without CUDA: pytest -k "cuda or gpu");
#   2. CERTIFY and PREDICT throughput at N = 100,000 against the raw forward pass and the 2019
#      loop, for cifar_resnet110 and resnet50, in fp32, bf16 and fp16 autocast, channels-last
#      (benchmarks/certify_throughput.py; cifar_resnet110 also with the old defaults);
#   3. a 2-process torchrun certify on synthetic data against a single-process run.
#
# Writes benchmarks/results/gpu.json and gpu.md (or $GPU_RESULTS.json/.md). Each step has its own
# time limit (90 + 130 + 170 + 80 s), so the whole stays under 8 minutes; a step that fails or
# runs out of time is recorded as such and the others still run. Without a GPU it stops at once,
# with exit status 2.
#
#   bash benchmarks/gpu.sh                 # PYTHON=... to choose the interpreter
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
PREFIX=${GPU_RESULTS:-benchmarks/results/gpu}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" - <<'EOF'
import sys

try:
    import torch
except ImportError:
    sys.exit("gpu.sh: torch cannot be imported by this Python (set PYTHON=...)")
if not torch.cuda.is_available():
    sys.exit(
        "gpu.sh: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
        "this script measures a GPU and runs nothing without one"
    )
print(f"gpu.sh: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", file=sys.stderr)
EOF
then
    exit 2
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
began=$(date +%s)

step() {  # step NAME LIMIT_S COMMAND...: run, keep its output, exit status and seconds
    local name=$1 limit=$2
    shift 2
    local t0
    t0=$(date +%s)
    echo "gpu.sh: $name (at most ${limit} s)" >&2
    timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
    echo $? >"$WORK/$name.rc"
    echo $(($(date +%s) - t0)) >"$WORK/$name.seconds"
    tail -n 3 "$WORK/$name.log" >&2
}

step tests 90 "$PY" -m pytest -q -p no:cacheprovider -rs -k "cuda or gpu" tests
step throughput_cifar_resnet110 130 "$PY" benchmarks/certify_throughput.py --device cuda \
    --models cifar_resnet110 --fp16 --repeats 2 --old-repeats 1 --warmup-n 2000 \
    --predict-inputs 300 --predict-repeats 2 --peak-repeats 3 --no-memory --json "$WORK/cifar_resnet110.json"
step throughput_resnet50 170 "$PY" benchmarks/certify_throughput.py --device cuda \
    --models resnet50 --fp16 --no-old --repeats 1 --warmup-n 2000 \
    --predict-inputs 100 --predict-repeats 1 --peak-repeats 3 --no-memory --json "$WORK/resnet50.json"
step torchrun 80 "$PY" - "$WORK" <<'EOF'
# certify on synthetic Fashion-MNIST-format data: one process, then torchrun with 2 processes on
# the same GPU(s) (ranks share a GPU over gloo when they outnumber the GPUs); same rows expected
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, "tests")
from synthdata import write_idx_dataset

work = Path(sys.argv[1])
data = str(write_idx_dataset(work / "data", n_train=256, n_test=64))
model = str(work / "model")


def run(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "4"})
    return time.perf_counter() - t0


cli = [sys.executable, "-m", "smoothcert"]
run([*cli, "train", "--dataset", "fashion-mnist", "--data-dir", data, "--arch", "small_cnn", "--sigma", "0.25",
     "--out", model, "--epochs", "1", "--batch", "64", "--device", "cuda", "--quiet"])
n, examples = 10_000, 16
common = ["certify", "--model", model, "--data-dir", data, "--n", str(n), "--n0", "100", "--batch", "1000",
          "--alpha", "0.001", "--seed", "3", "--max", str(examples), "--device", "cuda", "--quiet"]
single, multi = work / "single.tsv", work / "multi.tsv"
single_s = run([*cli, *common, "--out", str(single)])
torchrun_s = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  "-m", "smoothcert", "--", *common, "--out", str(multi)])


def rows(path):
    table = [line.split("\t") for line in path.read_text().splitlines()]
    t = table[0].index("time")
    return [r[:t] + r[t + 1:] for r in table]


a, b = rows(single), rows(multi)
out = {"rows_equal": a == b, "single_s": single_s, "torchrun_s": torchrun_s, "examples": examples, "n": n,
       "first_differences": [[x, y] for x, y in zip(a, b) if x != y][:3]}
(work / "torchrun.json").write_text(json.dumps(out, indent=2))
print(json.dumps(out))
sys.exit(0 if a == b else 1)
EOF

"$PY" - "$WORK" "$PREFIX" "$began" <<'EOF'
import json
import sys
import time
from pathlib import Path

import torch

work, prefix, began = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
steps = {}
for name in ("tests", "throughput_cifar_resnet110", "throughput_resnet50", "torchrun"):
    rc = int((work / f"{name}.rc").read_text())
    log = (work / f"{name}.log").read_text()
    steps[name] = {
        "exit_status": rc,
        "timed_out": rc in (124, 137),
        "seconds": int((work / f"{name}.seconds").read_text()),
        "log_tail": log[-4000:],
    }
for name, file in (
    ("throughput_cifar_resnet110", "cifar_resnet110.json"),
    ("throughput_resnet50", "resnet50.json"),
    ("torchrun", "torchrun.json"),
):
    if (work / file).exists():
        steps[name]["result"] = json.loads((work / file).read_text())
result = {
    "gpu": torch.cuda.get_device_name(0),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "total_seconds": int(time.time()) - began,
    "steps": steps,
}
prefix.parent.mkdir(parents=True, exist_ok=True)
prefix.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")

md = [f"# GPU run: {result['gpu']}", "", f"torch {result['torch']}, CUDA {result['cuda']}, {result['date']}, "
      f"{result['total_seconds']} s in all.", "", "| step | exit | seconds |", "|---|---:|---:|"]
md += [f"| {k} | {v['exit_status']}{' (timed out)' if v['timed_out'] else ''} | {v['seconds']} |" for k, v in steps.items()]
for name in ("throughput_cifar_resnet110", "throughput_resnet50"):
    res = steps[name].get("result")
    if not res:
        continue
    md += ["", f"## {name[len('throughput_'):]}", "",
           "| config | pass | n | raw forward /s | CERTIFY /s | CERTIFY / raw | 2019 loop /s | vs 2019 | s/example at 100k |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    for r in res["certify"]:
        md.append(
            f"| {r['config']} | {r['pass_size']} | {r['n']:,} | {fmt(r['raw_forward_samples_per_s'], ',.0f')} | "
            f"{r['smoothcert_samples_per_s']:,.0f} | {fmt(r['b_over_a'], '.3f')} | "
            f"{fmt(r['reference_samples_per_s'], ',.0f')} | {fmt(r['b_over_c'], '.2f')} | "
            f"{r['seconds_per_example_at_100k']:.2f} |"
        )
    for p in res["predict"]:
        md.append(f"\nPREDICT, {p['inputs']} inputs at n = {p['n']}: smoothcert {p['smoothcert_s']:.2f} s, "
                  f"2019 loop {p['reference_s']:.2f} s, speed-up {p['speedup']:.2f}x")
tr = steps["torchrun"].get("result")
if tr:
    md += ["", "## torchrun, 2 processes", "", f"rows equal to one process (time column aside): {tr['rows_equal']}; "
           f"one process {tr['single_s']:.1f} s, two {tr['torchrun_s']:.1f} s ({tr['examples']} examples, n = {tr['n']})."]
md += ["", "## tests", "", "```", steps["tests"]["log_tail"][-1500:].strip(), "```", ""]
prefix.with_suffix(".md").write_text("\n".join(md))
print("\n".join(md))
print(f"wrote {prefix.with_suffix('.json')} and {prefix.with_suffix('.md')}")
bad = [k for k, v in steps.items() if v["exit_status"] != 0]
sys.exit(1 if bad else 0)
EOF
