#!/usr/bin/env bash
# Issue 18 §3: sequential max-radius certification in L-infinity (where the absolute tolerance failed) with the relative tolerance
# (the default: 1.5% of the radius reachable at n_max), against fixed n = n_max = 100,000 on the same
# 10 Fashion-MNIST test examples (every 333rd), alpha = 0.001, seed 0. Gaussian: the demo's sigma = 0.5
# model; uniform: a sigma = 0.5 uniform-noise model (trained here, 4 epochs, unless it exists).
# Usage: bash benchmarks/maxradius_norms.sh [RUNS_DIR]   (default runs/demo; logs in RUNS_DIR/maxradius)
set -euo pipefail
runs=${1:-runs/demo}
out=$runs/maxradius
sc=${SMOOTHCERT:-.venv/bin/smoothcert}
mkdir -p "$out"
uni=$runs/noises/model_uniform_0.5
if [ ! -e "$uni/model.safetensors" ]; then
  $sc train --dataset fashion-mnist --arch small_cnn --sigma 0.5 --noise uniform --epochs 4 --lr-step 3 --out "$uni" --quiet
fi
common=(--n0 100 --alpha 0.001 --skip 333 --max 10 --quiet)
for pair in "gaussian:linf:$runs/model_sigma_0.5" "uniform:linf:$uni"; do
  IFS=: read -r noise norm model <<< "$pair"
  $sc certify --model "$model" --norm "$norm" --n 100000 "${common[@]}" --out "$out/fixed_${noise}_${norm}.tsv"
  $sc certify --model "$model" --norm "$norm" --adaptive --n-max 100000 "${common[@]}" --out "$out/adaptive_${noise}_${norm}.tsv"
done
for pair in gaussian:linf uniform:linf; do
  IFS=: read -r noise norm <<< "$pair"
  echo "## $noise noise, $norm"
  $sc analyze "$out/adaptive_${noise}_${norm}.tsv" --compare "$out/fixed_${noise}_${norm}.tsv"
done
