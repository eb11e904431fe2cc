#!/usr/bin/env bash
# certify on one process against two torchrun ranks on this machine, whole processes, paired rounds
# (1-rank, 2-rank, 1-rank, 2-rank, ...). Each run starts from an empty log (--overwrite).
# Usage: bash benchmarks/torchrun_ranks.sh MODEL_DIR [ROUNDS] [OUT_DIR]
set -euo pipefail
model=${1:?model directory}
rounds=${2:-3}
out=${3:-runs/torchrun_ranks}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
args=(certify --model "$model" --n 10000 --skip 20 --max 40 --quiet --overwrite)
for r in $(seq "$rounds"); do
  /usr/bin/time -f "1 rank, round $r: %e s wall" "$py" -m smoothcert "${args[@]}" --out "$out/one.tsv"
  /usr/bin/time -f "2 ranks, round $r: %e s wall" "$py" -m torch.distributed.run --nproc_per_node 2 -m smoothcert -- \
    "${args[@]}" --out "$out/two.tsv"
done
cmp <(cut -f1-5 "$out/one.tsv") <(cut -f1-5 "$out/two.tsv") && echo "rows identical (idx label predict radius correct)"
