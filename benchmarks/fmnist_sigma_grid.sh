#!/usr/bin/env bash
# App. H.3 (Figure 15): how much noise to train with. small_cnn on Fashion-MNIST trained with Gaussian
# augmentation at sigma_train in {0.12, 0.25, 0.5, 1.0} (the demo's 4 epochs, lr 0.1, x0.1 after epoch 3),
# each certified at sigma in {0.25, 0.5, 1.0} on the same 500 test examples (every 20th) with n0 = 100,
# n = 1,000, alpha = 0.001. Writes the grid of certified accuracy (radius 0, 0.5, 1.0) and ACR as
# GRID.md, and one curve per (sigma_train, sigma) as GRID.png (one panel per certification sigma).
# Usage: bash benchmarks/fmnist_sigma_grid.sh [OUT] [--quick]   (default OUT runs/sigma_grid)
#   --quick: sigma_train in {0.25, 1.0} x sigma in {0.25, 1.0}, 500 training examples, 1 epoch, 5 test
#   examples, n = 100 (a smoke test of the pipeline and the table: about 2 minutes on an idle 2-core CPU).
# Full run (2-core CPU): 4 trainings of ~4 epochs plus 12 certifications of 500 x 1,100 forward passes.
set -euo pipefail
R=runs/sigma_grid
QUICK=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    *) R=$a ;;
  esac
done
sc=${SMOOTHCERT:-.venv/bin/smoothcert}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$R"
TRAIN_SIGMAS=(0.12 0.25 0.5 1.0)
CERT_SIGMAS=(0.25 0.5 1.0)
if [ "$QUICK" = 1 ]; then
  TRAIN=(--epochs 1 --train-limit 500); CERT=(--n0 20 --n 100 --skip 2000 --max 5 --pass-size 120)
  TRAIN_SIGMAS=(0.25 1.0); CERT_SIGMAS=(0.25 1.0)
else
  TRAIN=(--epochs 4 --lr-step 3); CERT=(--n0 100 --n 1000 --skip 20)
fi
for st in "${TRAIN_SIGMAS[@]}"; do
  $sc train --dataset fashion-mnist --arch small_cnn --sigma "$st" --quiet "${TRAIN[@]}" --out "$R/train-$st"
  for sc_sigma in "${CERT_SIGMAS[@]}"; do
    $sc certify --model "$R/train-$st" --sigma "$sc_sigma" --alpha 0.001 --quiet "${CERT[@]}" \
        --out "$R/train-$st-cert-$sc_sigma.tsv"
  done
done
"$py" - "$R" "${TRAIN_SIGMAS[*]}" "${CERT_SIGMAS[*]}" <<'PY'
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from smoothcert.evaluation.analysis import average_certified_radius, certified_accuracy, read_certify_log

root, train_sigmas, cert_sigmas = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
radii = np.round(np.arange(0, 3.0001, 0.01), 2)
lines = ["| σ_train \\ σ | " + " | ".join(f"σ={s}: acc@0 / @0.5 / @1.0 / ACR" for s in cert_sigmas) + " |",
         "|---|" + "---|" * len(cert_sigmas)]
fig = Figure(figsize=(4.0 * len(cert_sigmas), 3.4))
axes = fig.subplots(1, len(cert_sigmas), sharey=True)
for st in train_sigmas:
    cells = []
    for ax, s in zip(axes, cert_sigmas):
        log = read_certify_log(root / f"train-{st}-cert-{s}.tsv")
        acc = certified_accuracy(log, [0.0, 0.5, 1.0])
        cells.append(" / ".join(f"{a:.3f}" for a in acc) + f" / {average_certified_radius(log):.3f}")
        ax.plot(radii, certified_accuracy(log, radii), label=f"σ_train={st}")
        ax.set_title(f"certified at σ={s}")
        ax.set_xlabel("L2 radius")
    lines.append(f"| {st} | " + " | ".join(cells) + " |")
axes[0].set_ylabel("certified accuracy")
axes[-1].legend(fontsize=8)
fig.tight_layout()
fig.savefig(root / "GRID.png", dpi=120)
table = "\n".join(lines) + "\n"
(root / "GRID.md").write_text(table)
print(table)
PY
