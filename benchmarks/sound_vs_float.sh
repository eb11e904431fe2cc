#!/usr/bin/env bash
# Certificates in sound mode against float mode on the demo's Fashion-MNIST models
# (8-bit images, so on the grid 1/255): the same 500 test examples (every 20th), n0 = 100,
# n = 1,000, alpha = 0.001, seed 0, both modes run now on this code. Paired comparison: sound vs float.
# Since 0.3 sound mode is the default; float mode is --float-noise.
# Usage: bash benchmarks/sound_vs_float.sh [RUNS_DIR]   (default runs/demo; logs in RUNS_DIR/sound)
set -euo pipefail
runs=${1:-runs/demo}
out=$runs/sound
sc=${SMOOTHCERT:-.venv/bin/smoothcert}
mkdir -p "$out"
common=(--n0 100 --n 1000 --alpha 0.001 --skip 20 --quiet)
for s in 0.25 0.5 1; do
  /usr/bin/time -f "float sigma=$s: %e s" $sc certify --model "$runs/model_sigma_$s" --float-noise "${common[@]}" --out "$out/float_$s.tsv"
  /usr/bin/time -f "sound sigma=$s: %e s" $sc certify --model "$runs/model_sigma_$s" "${common[@]}" --out "$out/sound_$s.tsv"
done
for s in 0.25 0.5 1; do
  echo "## sigma = $s"
  $sc analyze "$out/sound_$s.tsv" --compare "$out/float_$s.tsv" --label "sound σ=$s" --radii 0,0.25,0.5,0.75,1,1.25,1.5
done
