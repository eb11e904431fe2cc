"""Certified segmentation and localization on Fashion-MNIST scenes at sigma in {0.25, 0.5}.

Trains a SmallFCN segmenter and a box regressor under noise at each sigma, certifies test
scenes (segmentation at several tau from one sampling run; localization at several radii from
one sampling run), and prints the README's tables (also written to tables.md in the output folder):

* segmentation: per tau, the radius, certified pixel accuracy, abstain rate, mIoU (abstentions
  count as errors) and mIoU over certified pixels; and the envelope over tau at each radius;
* localization: per radius, the fraction of scenes whose worst-case IoU with the ground truth
  (and with the clean smoothed prediction) is >= 0.5, and the mean interval width.

The default settings are the README's; ``--quick`` is a small run for a shared CPU:

    python benchmarks/fmnist_scenes.py --out runs/scenes            # README scale
    python benchmarks/fmnist_scenes.py --out runs/scenes-quick --quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from smoothcert.evaluation.tasks import (
    localization_curve,
    markdown_table,
    plot_localization,
    plot_segmentation,
    read_localization,
    read_segmentation,
    segmentation_curve,
    segmentation_summary,
)
from smoothcert.runs.tasks import TaskRunConfig, run_task
from smoothcert.training.tasks import TaskTrainConfig, train_task

QUICK = {"epochs": 2, "train_size": 2000, "seg_max": 20, "loc_max": 50, "n": 500, "n_loc": 1000, "n0": 50}
FULL = {"epochs": 10, "train_size": 20000, "seg_max": 200, "loc_max": 500, "n": 1000, "n_loc": 1000, "n0": 100}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="small settings: " + json.dumps(QUICK))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=N", help="override one setting, e.g. epochs=4")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--taus", type=float, nargs="+", default=[0.6, 0.75, 0.9, 0.95])
    ap.add_argument("--radii", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5])
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)
    s = dict(QUICK if args.quick else FULL)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in s:
            raise SystemExit(f"--set {item!r}: unknown setting; choose from {', '.join(s)}")
        s[key] = int(value)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    seg_runs: dict[str, list] = {}
    loc_runs: dict[str, list] = {}
    report = [f"settings: {json.dumps(s)}, alpha {args.alpha}, torch threads {torch.get_num_threads()}\n"]
    for sigma in args.sigmas:
        for task in ("segmentation", "localization"):
            model = out / f"{task}_sigma{sigma:g}"
            began = time.perf_counter()
            if not (model / "model.safetensors").exists():
                train_task(
                    TaskTrainConfig(
                        task=task,
                        sigma=sigma,
                        out=str(model),
                        epochs=s["epochs"],
                        train_size=s["train_size"],
                        data_dir=args.data_dir,
                        progress=True,
                    )
                )
            trained = time.perf_counter() - began
            began = time.perf_counter()
            if task == "segmentation":
                paths = run_task(
                    TaskRunConfig(
                        task=task,
                        model=str(model),
                        out=str(out / f"seg_sigma{sigma:g}.tsv"),
                        n=s["n"],
                        n0=s["n0"],
                        alpha=args.alpha,
                        taus=tuple(args.taus),
                        max=s["seg_max"],
                        batch=1000,
                        data_dir=args.data_dir,
                    )
                )
                logs = [read_segmentation(p) for p in paths.values()]
                seg_runs[f"sigma {sigma:g}"] = logs
                rows = [segmentation_summary(g) for g in logs]
                cols = ["tau", "radius", "certified_accuracy", "abstain", "miou", "miou_certified", "smoothed_accuracy"]
                env = segmentation_curve(logs, [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
                report += [
                    f"\n### Segmentation, sigma = {sigma:g} ({len(logs[0].time)} scenes, n = {s['n']}, n0 = {s['n0']};"
                    f" train {trained:.0f} s; certification {logs[0].time.mean():.2f} s per scene for all tau)\n",
                    markdown_table(rows, cols),
                    "\nEnvelope over tau (best tau whose radius reaches r):\n",
                    markdown_table(env, ["radius", "tau", "certified_accuracy", "abstain", "miou"]),
                ]
            else:
                paths = run_task(
                    TaskRunConfig(
                        task=task,
                        model=str(model),
                        out=str(out / f"loc_sigma{sigma:g}.tsv"),
                        n=s["n_loc"],
                        alpha=args.alpha,
                        radii=tuple(args.radii),
                        max=s["loc_max"],
                        batch=1000,
                        data_dir=args.data_dir,
                    )
                )
                glogs = [read_localization(p) for p in paths.values()]
                loc_runs[f"sigma {sigma:g}"] = glogs
                rows = localization_curve(glogs, thresholds=(0.5,))
                cols = [
                    "radius",
                    "certified_iou_truth>=0.5",
                    "certified_iou_clean>=0.5",
                    "iou_truth>=0.5",
                    "mean_width",
                ]
                report += [
                    f"\n### Localization, sigma = {sigma:g} ({len(glogs[0].time)} scenes, n = {s['n_loc']};"
                    f" train {trained:.0f} s; certification {glogs[0].time.mean():.2f} s per scene for all radii)\n",
                    markdown_table(rows, cols),
                ]
            print("\n".join(report[-4:] if task == "segmentation" else report[-2:]), flush=True)
    (out / "tables.md").write_text("\n".join(report) + "\n")
    plot_segmentation(seg_runs, out / "segmentation.png")
    plot_localization(loc_runs, out / "localization.png")


if __name__ == "__main__":
    main()
