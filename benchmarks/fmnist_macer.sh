#!/usr/bin/env bash
# Issue 21 §4: when does MACER (Zhai et al., ICLR 2020) train stably on Fashion-MNIST at sigma = 0.5?
# small_cnn (no normalization layers), 4 epochs (x 0.1 after epoch 3), k = 4 noisy copies, lr 0.01
# (MACER's paper), the other hyperparameters the paper's CIFAR-10 values (beta 16, gamma 8,
# lambda 12), against Gaussian augmentation trained as in benchmarks/fmnist_methods.sh (lr 0.1):
#   gaussian        the baseline
#   macer-paper     lambda 12: diverged in fmnist_methods.sh
#   macer-clip      lambda 12 with the gradient's L2 norm clipped at 2 (--clip-grad 2)
#   macer-lbd4      lambda 4 (hinge weight lambda*sigma/2 = 1)
#   macer-clip-seed1  macer-clip again with another seed
# each certified on the same 500 test examples (every 20th), n0 = 100, n = 1,000, alpha = 0.001.
# Usage: bash benchmarks/fmnist_macer.sh [OUT]   (default runs/macer); writes OUT/MACER.md
set -euo pipefail
R=${1:-runs/macer}
sc=${SMOOTHCERT:-.venv/bin/smoothcert}
mkdir -p "$R"
train() {  # skipped when the run directory already holds a trained model; --out DIR must come last
  local out=${*: -1}
  [ -e "$out/model.json" ] || $sc train --dataset fashion-mnist --arch small_cnn --sigma 0.5 --epochs 4 --lr-step 3 --quiet "$@"
}
cert() { $sc certify --n0 100 --n 1000 --alpha 0.001 --skip 20 --quiet "$@"; }
macer=(--method macer --num-noise 4 --lr 0.01)
train --out "$R/gaussian"
train "${macer[@]}" --out "$R/macer-paper"
train "${macer[@]}" --clip-grad 2 --out "$R/macer-clip"
train "${macer[@]}" --lbd 4 --out "$R/macer-lbd4"
train "${macer[@]}" --clip-grad 2 --seed 1 --out "$R/macer-clip-seed1"  # is the clipped run's stability luck?
runs=(gaussian macer-paper macer-clip macer-lbd4 macer-clip-seed1)
for m in "${runs[@]}"; do cert --model "$R/$m" --out "$R/$m.tsv"; done  # resumes an interrupted log; a finished one is kept
logs=() labels=()
for m in "${runs[@]}"; do logs+=("$R/$m.tsv"); labels+=(--label "$m"); done
{
  echo "Training: test accuracy (clean / one noisy draw at sigma 0.5) after each epoch, and the median s/epoch"
  echo
  echo "| run | epoch 1 | epoch 2 | epoch 3 | epoch 4 | s/epoch |"
  echo "|---|---|---|---|---|---|"
  for m in "${runs[@]}"; do
    med=$(tail -n +2 "$R/$m/train_log.tsv" | cut -f7 | sort -g | awk '{v[NR]=$1} END {print (v[int((NR+1)/2)]+v[int(NR/2)+1])/2}')
    awk -F'\t' -v m="$m" -v med="$med" 'NR>1 {c[NR-1]=sprintf("%.3f / %.3f", $5, $6)}
      END {printf "| %s | %s | %s | %s | %s | %.1f |\n", m, c[1], c[2], c[3], c[4], med}' "$R/$m/train_log.tsv"
  done
  echo
  echo "Certified (500 examples, n = 1,000):"
  echo
  $sc analyze "${logs[@]}" "${labels[@]}" --radii 0,0.25,0.5,0.75,1.0
} > "$R/MACER.md"
$sc analyze "${logs[@]}" "${labels[@]}" --radii 0:1.5:0.01 --plot "$R/macer.png" > /dev/null
cat "$R/MACER.md"
