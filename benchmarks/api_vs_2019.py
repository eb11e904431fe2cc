"""PREDICT and CERTIFY through the Python API, against the 2019 per-example loop (issue 19, item 9).

A user of the library writes ``SmoothedClassifier(model, num_classes, sigma)`` and calls
``predict_batch`` / ``certify_batch``; the command line, by contrast, tunes the allocator, feeds the
model channels-last batches and measures the forward-pass size. This script measures what the
Python API gives, on a ``small_cnn`` with random weights (the speed does not depend on the
weights), in three configurations:

- ``api defaults``: ``SmoothedClassifier(model, 10, sigma)``, every argument at its default;
- ``api fast``: a channels-last copy of the model, ``channels_last=True`` and ``pass_size="auto"``
  (the pass size is probed once before timing, by :func:`smoothcert.runtime.perf.probe_pass_size`;
  its cost and outcome are reported apart);
- ``2019 loop``: the reference procedure of Cohen, Rosenfeld & Kolter (ICML 2019, Sec. 3.2,
  PREDICT and CERTIFY), re-implemented here: for each input separately, in chunks of at most
  ``batch`` samples, repeat the input, add Gaussian noise, run the model, move the predicted
  labels to the host and tally them one at a time.

Tasks: PREDICT of 300 inputs at n = 100 (alpha = 0.001, batch 1000) and CERTIFY of 3 inputs at
n0 = 100, n = 10,000 (batch 1000). Each round runs every configuration once, interleaved in
rotated order after one warm-up each; times are medians over rounds and speed-ups are medians of
the per-round ratios (2019 loop time / configuration time).

The allocator (``tune_malloc``) is process-wide and cannot be undone, so the rows are measured
twice: in this process with glibc's default ``malloc``, then in a child process that tunes it first.
Torch's thread count is left at its default in both.

    python benchmarks/api_vs_2019.py            # writes benchmarks/results/api_vs_2019.{json,md}
    python benchmarks/api_vs_2019.py --quick    # a smoke run (< 1 minute); writes to the temp directory
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothcert import SmoothedClassifier
from smoothcert.core import stats
from smoothcert.models.architectures import build_model
from smoothcert.runtime.perf import probe_pass_size, tune_malloc

SHAPE = (1, 28, 28)
K = 10
SIGMA = 0.25
ALPHA = 0.001
RESULTS = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- the 2019 procedure


def votes_2019(model: torch.nn.Module, x: torch.Tensor, num: int, batch: int) -> np.ndarray:
    """Class votes of ``num`` noisy copies of one input ``x`` (shape ``(1, C, H, W)``), tallied on the host."""
    tally = np.zeros(K, dtype=np.int64)
    left = num
    with torch.no_grad():
        while left > 0:
            size = min(batch, left)
            left -= size
            copies = x.repeat(size, 1, 1, 1)
            labels = model(copies + SIGMA * torch.randn_like(copies)).argmax(dim=1).cpu().numpy()
            for label in labels:  # one vote at a time, as the reference counted
                tally[label] += 1
    return tally


def predict_2019(model: torch.nn.Module, x: torch.Tensor, n: int, batch: int) -> int:
    votes = votes_2019(model, x, n, batch)
    first, second = np.argsort(votes)[::-1][:2]
    return int(first) if stats.predict_pvalue(int(votes[first]), int(votes[second])) <= ALPHA else -1


def certify_2019(model: torch.nn.Module, x: torch.Tensor, n0: int, n: int, batch: int) -> tuple[int, float]:
    guess = int(votes_2019(model, x, n0, batch).argmax())
    hits = int(votes_2019(model, x, n, batch)[guess])
    p_lower = float(stats.clopper_pearson_lower(hits, n, ALPHA))
    return (guess, SIGMA * float(stats.cohen_radius(p_lower))) if p_lower > 0.5 else (-1, 0.0)


# ----------------------------------------------------------------------------- timing


def rounds(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each function in each round (one warm-up each first; rotated order per round)."""
    names = list(fns)
    for name in names:
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for j in range(len(names)):
            name = names[(j + r) % len(names)]
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return times


def summarize(task: str, times: dict[str, list[float]], samples: int, malloc: str) -> list[dict[str, Any]]:
    ref = np.asarray(times["2019 loop"])
    rows = []
    for name, ts in times.items():
        t = np.asarray(ts)
        rows.append(
            {
                "task": task,
                "config": name,
                "malloc": malloc,
                "seconds_median": float(np.median(t)),
                "seconds_per_round": [float(v) for v in t],
                "samples_per_s": samples / float(np.median(t)),
                "speedup_vs_2019": float(np.median(ref / t)),
            }
        )
    return rows


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every row in this process (its allocator as it is)."""
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=K, in_channels=1, mean=[0.5], std=[0.5]).eval()
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cpu = torch.device("cpu")
    probe = probe_pass_size(fast, SHAPE, device=cpu, max_size=args.batch, channels_last=True)
    default = SmoothedClassifier(model, K, SIGMA, sound=False)
    tuned = SmoothedClassifier(fast, K, SIGMA, channels_last=True, pass_size="auto", sound=False)
    gen = torch.Generator().manual_seed(0)
    xs_p = torch.rand((args.predict_inputs, *SHAPE))
    xs_c = torch.rand((args.certify_inputs, *SHAPE))
    b, n_p, n0, n_c = args.batch, args.predict_n, args.n0, args.certify_n

    predict = rounds(
        {
            "api defaults": lambda: default.predict_batch(xs_p, n=n_p, alpha=ALPHA, batch_size=b, generator=gen),
            "api fast": lambda: tuned.predict_batch(xs_p, n=n_p, alpha=ALPHA, batch_size=b, generator=gen),
            "2019 loop": lambda: [predict_2019(model, xs_p[i : i + 1], n_p, b) for i in range(len(xs_p))],
        },
        args.repeats,
    )
    certify = rounds(
        {
            "api defaults": lambda: default.certify_batch(xs_c, n0=n0, n=n_c, alpha=ALPHA, batch_size=b, generator=gen),
            "api fast": lambda: tuned.certify_batch(xs_c, n0=n0, n=n_c, alpha=ALPHA, batch_size=b, generator=gen),
            "2019 loop": lambda: [certify_2019(model, xs_c[i : i + 1], n0, n_c, b) for i in range(len(xs_c))],
        },
        args.repeats,
    )
    malloc = "tuned" if args.tune_malloc else "default"
    return {
        "malloc": malloc,
        "malloc_record": tune_malloc().as_dict() if args.tune_malloc else None,
        "threads": torch.get_num_threads(),
        "probe": probe.as_dict(),
        "rows": summarize("PREDICT", predict, len(xs_p) * n_p, malloc)
        + summarize("CERTIFY", certify, len(xs_c) * (n0 + n_c), malloc),
    }


# ----------------------------------------------------------------------------- report


def api_defaults() -> dict[str, str]:
    """The keyword defaults of ``SmoothedClassifier`` that matter for speed, as measured."""
    params = inspect.signature(SmoothedClassifier).parameters
    return {k: repr(params[k].default) for k in ("channels_last", "pass_size", "autocast_dtype") if k in params}


def machine() -> str:
    name = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            models = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        name = f"{models[0]} ({len(models)} logical cores visible)" if models else name
    except OSError:
        pass
    return f"{name}; torch {torch.__version__}"


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# The Python API against the 2019 loop",
        "",
        f"Machine: {result['machine']}. Model: small_cnn (random weights), sigma = {SIGMA}, alpha = {ALPHA}, "
        f"batch {s['batch']}. PREDICT: {s['predict_inputs']} inputs at n = {s['predict_n']}; CERTIFY: "
        f"{s['certify_inputs']} inputs at n0 = {s['n0']}, n = {s['certify_n']}. {s['repeats']} rounds; "
        f"medians. `SmoothedClassifier` defaults measured: {result['api_defaults']}.",
        "",
        "| task | malloc | threads | config | median s | samples/s | speed-up vs 2019 loop |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for run in result["runs"]:
        for r in run["rows"]:
            lines.append(
                f"| {r['task']} | {r['malloc']} | {run['threads']} | {r['config']} | {r['seconds_median']:.3f} | "
                f"{r['samples_per_s']:,.0f} | {r['speedup_vs_2019']:.2f}x |"
            )
    lines.append("")
    for run in result["runs"]:
        p = run["probe"]
        lines.append(
            f"- pass-size probe ({run['malloc']} malloc): chose {p['size']} in {p['seconds']:.2f} s "
            f"({p['passes']} passes, budget {p['budget_s']} s, budget spent: {p['budget_spent']}); "
            "paid before timing, not in the rows."
        )
    lines.append("")
    lines.append(f"Command: `python benchmarks/api_vs_2019.py {' '.join(result['argv'])}`".rstrip() + "")
    return "\n".join(lines) + "\n"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predict-inputs", type=int, default=300)
    p.add_argument("--predict-n", type=int, default=100)
    p.add_argument("--certify-inputs", type=int, default=3)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--certify-n", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-child", action="store_true", help="skip the tuned-malloc child process")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 PREDICT inputs, 1 CERTIFY at n = 1,000, 1 round")
    p.add_argument(
        "--out", default=None, help="output prefix (default benchmarks/results/api_vs_2019; --quick: temp dir)"
    )
    p.add_argument("--tune-malloc", action="store_true", help=argparse.SUPPRESS)  # internal: the child
    args = p.parse_args(argv)
    if args.quick:
        args.predict_inputs, args.certify_inputs, args.certify_n, args.repeats = 20, 1, 1_000, 1
    if args.out is None:
        args.out = (
            str(Path(tempfile.gettempdir()) / "api_vs_2019_quick") if args.quick else str(RESULTS / "api_vs_2019")
        )
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.tune_malloc:  # the child: tune first, measure, print JSON
        tune_malloc()
        print(json.dumps(measure(args)))
        return
    runs = [measure(args)]
    if not args.no_child:
        child = subprocess.run(
            [sys.executable, __file__, *argv, "--tune-malloc"], capture_output=True, text=True, check=False
        )
        if child.returncode != 0:
            raise RuntimeError(f"tuned-malloc child failed:\n{child.stderr[-3000:]}")
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
    settings = {k: getattr(args, k) for k in ("predict_inputs", "predict_n", "certify_inputs", "n0", "certify_n")}
    settings.update(batch=args.batch, repeats=args.repeats, quick=args.quick)
    result = {
        "machine": machine(),
        "api_defaults": api_defaults(),
        "settings": settings,
        "argv": argv,
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
