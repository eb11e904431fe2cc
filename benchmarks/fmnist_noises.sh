#!/usr/bin/env bash
# Issue 10's results: L1 certified accuracy on Fashion-MNIST with Gaussian, Laplace and uniform
# noise at one matched sigma (0.5, the per-coordinate standard deviation), and L-infinity
# certified accuracy from the demo's Gaussian models. Needs the demo's models (make demo).
# Usage: bash benchmarks/fmnist_noises.sh [RUNS_DIR]   (default runs/demo; logs go to RUNS_DIR/noises)
set -euo pipefail
runs=${1:-runs/demo}
out=$runs/noises
sc=${SMOOTHCERT:-.venv/bin/smoothcert}
mkdir -p "$out"
for noise in laplace uniform; do
  $sc train --dataset fashion-mnist --arch small_cnn --sigma 0.5 --noise $noise --epochs 4 --lr-step 3 \
      --out "$out/model_${noise}_0.5" --quiet
done
common=(--n0 100 --n 1000 --alpha 0.001 --skip 20 --quiet)
$sc certify --model "$runs/model_sigma_0.5" --norm l1 "${common[@]}" --out "$out/l1_gaussian_0.5.tsv"
for noise in laplace uniform; do
  $sc certify --model "$out/model_${noise}_0.5" --norm l1 "${common[@]}" --out "$out/l1_${noise}_0.5.tsv"
done
for s in 0.25 0.5 1; do
  $sc certify --model "$runs/model_sigma_$s" --norm linf "${common[@]}" --out "$out/linf_gaussian_$s.tsv"
done
$sc analyze "$out"/l1_{gaussian,laplace,uniform}_0.5.tsv --label gaussian --label laplace --label uniform \
    --radii 0,0.25,0.5,0.75,1.0
$sc analyze "$out"/l1_{gaussian,laplace,uniform}_0.5.tsv --label gaussian --label laplace --label uniform \
    --radii 0:1.25:0.01 --plot "$out/l1.png" > /dev/null
$sc analyze "$out"/linf_gaussian_{0.25,0.5,1}.tsv --label "σ = 0.25" --label "σ = 0.5" --label "σ = 1" \
    --radii 0,0.00392156862745098,0.00784313725490196,0.01568627450980392
