"""The ``smoothcert`` command line: train, train-denoiser, certify, predict, analyze, attack, import, visualize, demo.

Errors in what the user asked for (a missing data directory, an unknown architecture, a bad
checkpoint, a conflicting resume, an out-of-range argument) print one line and exit with
status 2; result files are never truncated unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got {text!r}") from None


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")


def _add_run_args(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--model", required=True, help="model directory written by 'smoothcert train'")
    p.add_argument(
        "--denoiser", help="denoiser directory ('smoothcert train-denoiser'): smooth MODEL(DENOISER(x + noise))"
    )
    p.add_argument("--dataset", help="data set (default: the model's)")
    p.add_argument("--data-dir", help="data directory (default: the data set's; or $SMOOTHCERT_DATA)")
    p.add_argument("--split", default="test", choices=["train", "test", "val"], help="split (default: test)")
    p.add_argument("--sigma", type=float, help="noise level (default: the model's training sigma)")
    if command == "certify":
        p.add_argument("--n0", type=_positive_int, default=100, help="selection samples (default: 100)")
    p.add_argument("--n", type=_positive_int, default=100_000, help="samples (default: 100000)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability (default: 0.001)")
    p.add_argument("--batch", type=_positive_int, default=1000, help="forward-pass batch size (default: 1000)")
    p.add_argument("--skip", type=_positive_int, default=1, help="use every skip-th example (default: 1)")
    p.add_argument("--max", type=_positive_int, help="at most this many examples (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed; each example's noise depends on (seed, idx) only")
    _add_device(p)
    p.add_argument(
        "--amp", choices=["bf16", "fp16"], help="run the base model in mixed precision (bf16: CUDA or a bf16 CPU)"
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels-last memory format for the base model (default: on; changes speed only)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the base model")
    p.add_argument(
        "--pass-size", type=_positive_int, help="forward-pass size (default: measured, at most --batch; speed only)"
    )
    p.add_argument("--noise", choices=["gaussian", "laplace", "uniform"], help="noise (default: the model's)")
    p.add_argument("--norm", choices=["l2", "l1", "linf"], default="l2", help="threat norm of the radius (default: l2)")
    if command == "certify":
        s = p.add_argument_group("sequential certification (valid under early stopping)")
        s.add_argument("--adaptive", action="store_true", help="sequential CERTIFY: max-radius mode unless --radius")
        s.add_argument("--radius", type=float, help="decision mode: certify robustness at this radius")
        s.add_argument("--n-max", type=_positive_int, help="largest estimation sample (default: --n)")
        s.add_argument("--beta", type=float, help="futility level: affects power only (default: alpha)")
        s.add_argument("--radius-cap", type=float, help="max-radius mode: stop once this radius is certified")
        s.add_argument("--radius-tol", type=float, help="max-radius: stop when more samples gain less (0.05 sigma)")
        s.add_argument("--eval-label", action="store_true", help="bound the true label's probability (no selection)")
    p.add_argument("--out", required=True, help="result TSV (resumed if it exists; FILE.json holds the configuration)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing result file instead of resuming it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoothcert", description="Certified robustness (L2, L1, Linf) by randomized smoothing."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a base classifier under noise (Gaussian augmentation or another --method)")
    t.add_argument("--dataset", required=True)
    t.add_argument(
        "--arch", required=True, help="small_cnn, cifar_resnet20, cifar_resnet110, resnet50 or a torchvision model"
    )
    t.add_argument("--sigma", type=float, required=True, help="training noise level")
    t.add_argument("--out", required=True, help="run directory (resumed from its last epoch if it exists)")
    t.add_argument("--epochs", type=_positive_int, default=90)
    t.add_argument("--batch", type=_positive_int, default=256)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument(
        "--lr-step", type=_positive_int, default=30, help="multiply the lr by --gamma every this many epochs"
    )
    t.add_argument("--gamma", type=float, default=0.1)
    _add_device(t)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    t.add_argument("--train-limit", type=_positive_int, help="use only the first N training examples")
    t.add_argument("--data-dir")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--noise", choices=["gaussian", "laplace", "uniform"], default="gaussian", help="training noise")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="(default: on)")
    t.add_argument("--amp", choices=["bf16"], help="bf16 autocast for the forward pass (CUDA or a bf16 CPU)")
    _add_method_args(t)
    t.set_defaults(func=_cmd_train)
    _add_denoiser_parser(sub)

    for name, helptext in (
        ("certify", "CERTIFY every selected example of a split"),
        ("predict", "PREDICT every selected example of a split"),
    ):
        p = sub.add_parser(name, help=helptext)
        _add_run_args(p, name)
        p.set_defaults(func=_cmd_run)

    a = sub.add_parser(
        "analyze",
        help="certified-accuracy tables and plots from certify logs",
        description="Certified accuracy (labelled with the logs' threat norm; logs of different norms are refused), "
        "ACR and forward passes per example of certify logs, fixed-n or sequential (--adaptive): a decision-mode "
        "log is reported at its decision radius only (n/a elsewhere), a capped max-radius log up to its cap. "
        "Beside ACR (which depends on the sampling budget), quantiles of the certified p_A lower bounds; "
        "--eval-label logs are marked as such. JSON is strict (null for n/a).",
    )
    a.add_argument("logs", nargs="*", metavar="LOG", help="certify logs (fixed-n, sequential or the 2019 reference's)")
    a.add_argument(
        "--compare",
        metavar="LOG",
        help="baseline log (e.g. fixed-n): compare each LOG with it on their common examples: ratio of forward "
        "passes, paired certified-accuracy difference with its standard error, 95%% normal interval, exact McNemar p",
    )
    a.add_argument("--radii", default="0:1.5:0.25", help="'start:stop:step' or a comma list (default: 0:1.5:0.25)")
    a.add_argument("--format", choices=["markdown", "latex", "csv", "json"], default="markdown")
    a.add_argument("--label", action="append", help="label of each log, in order (default: from the sidecar)")
    a.add_argument("--plot", help="draw certified accuracy against radius to FILE.png or FILE.pdf")
    a.add_argument("--envelope", action="store_true", help="add the best over logs at each radius to the plot")
    a.add_argument("--high-prob", type=float, metavar="GAMMA", help="add the lower bound holding w.p. >= 1 - GAMMA")
    a.add_argument("--bound", choices=["cohen", "lecuyer", "li"], default="cohen", help="guarantee used for the radii")
    a.add_argument("--sigma", type=float, help="sigma for logs without a sidecar (--bound)")
    a.add_argument("--project-n", type=_positive_int, help="accuracy CERTIFY would report with this n")
    a.add_argument("--project-alpha", type=float, help="accuracy CERTIFY would report at this alpha")
    a.add_argument("--bounds-plot", help="draw radius against pA for the three guarantees to this file")
    a.add_argument("--max-radius-plot", help="draw the largest certifiable radius against n to this file")
    a.add_argument(
        "--pa-plot",
        metavar="FILE",
        help="draw the empirical CDF of each log's certified p_A lower bounds (p_lower) to this file",
    )
    a.add_argument("--predict-logs", nargs="+", help="predict logs for the PREDICT quality table (paper Table 4)")
    a.add_argument("--predict-reference", help="large-n predict log that stands for g(x)")
    a.add_argument(
        "--empirical", action="append", default=[], help="DeepFool log ('smoothcert attack --deepfool') drawn dashed"
    )
    a.add_argument("--out", help="write the table here instead of standard output")
    a.set_defaults(func=_cmd_analyze)

    v = sub.add_parser("visualize", help="a PNG grid of examples under several noise levels")
    v.add_argument("--dataset", required=True)
    v.add_argument("--data-dir")
    v.add_argument("--split", default="test", choices=["train", "test", "val"])
    v.add_argument("--sigmas", type=_floats, default=[0.0, 0.25, 0.5, 1.0])
    v.add_argument("--count", type=_positive_int, default=6, help="number of examples (rows)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", required=True, help="PNG (or PDF) file")
    v.set_defaults(func=_cmd_visualize)

    d = sub.add_parser("demo", help="train, certify and tabulate on Fashion-MNIST (the README's main job)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--full", action="store_true", help="the paper's settings: N = 100000, the whole test set")
    d.add_argument("--sigmas", type=_floats, default=[0.25, 0.5, 1.0])
    d.add_argument("--data-dir")
    _add_device(d)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_cmd_demo)

    k = sub.add_parser("attack", help="PGD on the smoothed classifier (tightness) or DeepFool on the base model")
    k.add_argument("--model", required=True)
    k.add_argument("--out", required=True, help="result TSV (resumed if it exists)")
    k.add_argument("--certify-log", help="certify log whose certified-correct examples are attacked")
    k.add_argument("--multiples", type=_floats, help="attack radii as multiples of each certified radius, e.g. 1.5,2")
    k.add_argument("--radii", type=_floats, help="absolute attack radii")
    k.add_argument("--deepfool", action="store_true", help="instead: DeepFool's minimal L2 norm against the base model")
    k.add_argument("--steps", type=_positive_int, default=20, help="PGD steps (default: 20)")
    k.add_argument("--num-noise", type=_positive_int, default=32, help="noise draws per PGD step (default: 32)")
    k.add_argument("--step-factor", type=float, default=2.5, help="PGD step = factor * radius / steps (default: 2.5)")
    k.add_argument("--n", type=_positive_int, default=1000, help="PREDICT samples judging success (default: 1000)")
    k.add_argument("--alpha", type=float, default=0.001)
    k.add_argument("--batch", type=_positive_int, default=1000)
    k.add_argument("--max", type=_positive_int, help="at most this many examples")
    k.add_argument("--skip", type=_positive_int, default=1, help="DeepFool: every skip-th example")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--data-dir")
    k.add_argument("--dataset")
    k.add_argument("--split", default="test", choices=["train", "test", "val"])
    k.add_argument("--sigma", type=float, help="smoothing sigma (default: the certify log's)")
    k.add_argument("--overwrite", action="store_true")
    _add_device(k)
    k.set_defaults(func=_cmd_attack)
    _add_import_parser(sub)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from smoothcert.runtime.distributed import DistContext
    from smoothcert.training.loop import TrainConfig, train

    config = TrainConfig(
        dataset=args.dataset,
        arch=args.arch,
        sigma=args.sigma,
        out=args.out,
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        lr_step=args.lr_step,
        gamma=args.gamma,
        device=args.device,
        seed=args.seed,
        workers=args.workers,
        train_limit=args.train_limit,
        data_dir=args.data_dir,
        progress=not args.quiet,
        noise=args.noise,
        channels_last=args.channels_last,
        amp=args.amp,
        method=args.method,
        method_params=_method_params(args),
    )
    dist = DistContext.from_env(args.device)
    try:
        meta = train(config, dist)
    finally:
        dist.close()
    if dist.is_main:
        print(
            f"trained {meta['arch']} on {meta['dataset']} at sigma={meta['sigma']:g}: "
            f"clean accuracy {meta['clean_accuracy']:.4f}, noisy accuracy {meta['noisy_accuracy']:.4f} -> {args.out}"
        )
    return 0


# training-method flags: (flag dest, help); each maps to one hyperparameter of the methods it applies to
_METHOD_FLAGS: dict[str, dict[str, str]] = {
    "num_noise": {"consistency": "m", "smoothadv": "m", "macer": "k"},
    "lbd": {"consistency": "lbd", "macer": "lbd"},
    "eta": {"consistency": "eta"},
    "epsilon": {"smoothadv": "epsilon"},
    "attack_steps": {"smoothadv": "steps"},
    "warmup": {"smoothadv": "warmup"},
    "beta": {"macer": "beta"},
    "margin": {"macer": "gamma"},
}


def _add_method_args(t: argparse.ArgumentParser) -> None:
    g = t.add_argument_group("training method (defaults: the method's paper, per sigma)")
    g.add_argument(
        "--method",
        default="gaussian",
        help="gaussian (augmentation, the default), consistency (Jeong & Shin 2020), "
        "smoothadv (Salman et al. 2019) or macer (Zhai et al. 2020)",
    )
    g.add_argument(
        "--num-noise", type=_positive_int, help="noisy copies per example: m (consistency, smoothadv), k (macer)"
    )
    g.add_argument("--lbd", type=float, help="weight of the regularizer: consistency's lambda, macer's lambda")
    g.add_argument("--eta", type=float, help="consistency: weight of the entropy term")
    g.add_argument("--epsilon", type=float, help="smoothadv: L2 radius of the attack")
    g.add_argument("--attack-steps", type=_positive_int, help="smoothadv: PGD steps")
    g.add_argument("--warmup", type=int, help="smoothadv: epochs over which the radius grows from 0 to --epsilon")
    g.add_argument("--beta", type=float, help="macer: inverse temperature of the soft smoothed classifier")
    g.add_argument("--margin", type=float, help="macer: hinge margin gamma on the radius surrogate")


def _method_params(args: argparse.Namespace) -> dict[str, Any]:
    """The method hyperparameters given on the command line; a flag the method does not take is an error."""
    params: dict[str, Any] = {}
    for dest, per_method in _METHOD_FLAGS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if args.method not in per_method:
            flag = "--" + dest.replace("_", "-")
            takers = ", ".join(per_method)
            raise ValueError(f"{flag} does not apply to method {args.method!r} (it applies to: {takers})")
        params[per_method[args.method]] = value
    return params


def _add_denoiser_parser(sub: Any) -> None:
    d = sub.add_parser(
        "train-denoiser", help="train a DnCNN denoiser in front of a frozen classifier (denoised smoothing)"
    )
    d.add_argument("--classifier", required=True, help="model directory of the frozen classifier")
    d.add_argument("--sigma", type=float, required=True, help="noise level the denoiser removes")
    d.add_argument("--objective", default="mse", help="mse (to the clean image) or stability (classifier's CE)")
    d.add_argument("--out", required=True, help="run directory (resumed from its last epoch if it exists)")
    d.add_argument("--epochs", type=_positive_int, default=90)
    d.add_argument("--batch", type=_positive_int, default=128)
    d.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 0.001)")
    d.add_argument(
        "--lr-step", type=_positive_int, default=30, help="multiply the lr by --gamma every this many epochs"
    )
    d.add_argument("--gamma", type=float, default=0.1)
    d.add_argument("--depth", type=_positive_int, default=17, help="DnCNN convolutions (default: 17)")
    d.add_argument("--width", type=_positive_int, default=64, help="DnCNN channels (default: 64)")
    d.add_argument("--init", help="start from this denoiser (e.g. an MSE one, to fine-tune with stability)")
    _add_device(d)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--workers", type=int, default=0)
    d.add_argument("--train-limit", type=_positive_int, help="use only the first N training examples")
    d.add_argument("--data-dir")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_cmd_train_denoiser)


def _cmd_train_denoiser(args: argparse.Namespace) -> int:
    from smoothcert.training.denoiser import DenoiserConfig, train_denoiser

    config = DenoiserConfig(
        classifier=args.classifier,
        sigma=args.sigma,
        out=args.out,
        objective=args.objective,
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        lr_step=args.lr_step,
        gamma=args.gamma,
        depth=args.depth,
        width=args.width,
        init=args.init,
        device=args.device,
        seed=args.seed,
        workers=args.workers,
        train_limit=args.train_limit,
        data_dir=args.data_dir,
        progress=not args.quiet,
    )
    meta = train_denoiser(config)
    print(
        f"trained a {meta['objective']} denoiser at sigma={meta['sigma']:g}: test mse {meta['test_mse']:.5f}, "
        f"classifier accuracy on denoised noisy images {meta['test_noisy_accuracy']:.4f} -> {args.out}"
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from smoothcert.runs.certify import RunConfig, run
    from smoothcert.runtime.distributed import DistContext

    config = RunConfig(
        command=args.command,
        model=args.model,
        out=args.out,
        dataset=args.dataset,
        data_dir=args.data_dir,
        split=args.split,
        sigma=args.sigma,
        n0=getattr(args, "n0", 100),
        n=args.n,
        alpha=args.alpha,
        batch=args.batch,
        skip=args.skip,
        max=args.max,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        overwrite=args.overwrite,
        progress=not args.quiet,
        pass_size=args.pass_size,
        noise=args.noise,
        norm=args.norm,
        adaptive=getattr(args, "adaptive", False),
        radius=getattr(args, "radius", None),
        n_max=getattr(args, "n_max", None),
        beta=getattr(args, "beta", None),
        radius_cap=getattr(args, "radius_cap", None),
        radius_tol=getattr(args, "radius_tol", None),
        eval_label=getattr(args, "eval_label", False),
        denoiser=args.denoiser,
    )
    dist = DistContext.from_env(args.device)
    try:
        out = run(config, dist)
    finally:
        dist.close()
    if dist.is_main and not args.quiet:
        print(f"{args.command}: results in {out}")
    return 0


def _check_outputs_are_not_inputs(args: argparse.Namespace) -> None:
    """``analyze`` only reads its logs: refuse any output path that is one of them (or its sidecar)."""
    from smoothcert.io.logs import sidecar_path

    inputs = [*args.logs, *(args.predict_logs or []), *args.empirical, *([args.compare] if args.compare else [])]
    if args.predict_reference:
        inputs.append(args.predict_reference)
    protected = {Path(p).resolve() for p in inputs} | {sidecar_path(p).resolve() for p in inputs}
    for option in ("out", "plot", "bounds_plot", "max_radius_plot", "pa_plot"):
        target = getattr(args, option)
        if target and Path(target).resolve() in protected:
            flag = "--" + option.replace("_", "-")
            raise ValueError(f"{flag} {target!r} is one of the input logs; analyze never writes to them")


def _cmd_analyze(args: argparse.Namespace) -> int:
    from smoothcert.evaluation import analysis, reports

    _check_outputs_are_not_inputs(args)
    outputs: list[str] = []
    documents: dict[str, Any] = {}  # --format json: everything goes into one JSON document
    if args.logs:
        labels = args.label or []
        if labels and len(labels) != len(args.logs):
            raise ValueError(f"--label was given {len(labels)} times for {len(args.logs)} logs")
        logs = [analysis.read_certify_log(p, name=labels[i] if labels else None) for i, p in enumerate(args.logs)]
        baseline = analysis.read_certify_log(args.compare) if args.compare else None
        radii = analysis.parse_radii(args.radii)
        if args.high_prob is not None and not 0 < args.high_prob < 1:
            raise ValueError(f"--high-prob must be in (0, 1), got {args.high_prob}")
        listed = {Path(p).resolve() for p in args.logs}
        table_logs = logs + ([baseline] if baseline is not None and Path(args.compare).resolve() not in listed else [])
        summaries = analysis.summarize(table_logs, radii, high_prob=args.high_prob, bound=args.bound, sigma=args.sigma)
        if args.project_n is not None or args.project_alpha is not None:
            for log, s in zip(table_logs, summaries, strict=True):
                proj = analysis.project_certified_accuracy(
                    log, radii, n=args.project_n, alpha=args.project_alpha, sigma=args.sigma
                )
                s.extra["projected_certified_accuracy"] = [float(v) for v in proj]
                s.extra["projection"] = {"n": args.project_n, "alpha": args.project_alpha}
        if args.format == "json":
            documents["certify"] = [s.to_json() for s in summaries]
        else:
            formatter = {
                "markdown": analysis.format_markdown,
                "latex": analysis.format_latex,
                "csv": analysis.format_csv,
            }[args.format]
            outputs.append(formatter(summaries))
        if args.format == "markdown" and (args.project_n or args.project_alpha):
            for s in summaries:
                values = ", ".join(f"{v:.2f}" for v in s.extra["projected_certified_accuracy"])
                outputs.append(f"projected ({s.extra['projection']}) {s.name}: {values}\n")
        if baseline is not None:
            base = Path(baseline.path).resolve()
            comparisons = [
                analysis.compare_logs(log, baseline, radii) for log in logs if Path(log.path).resolve() != base
            ]
            if args.format == "json":
                documents["compare"] = [c.to_json() for c in comparisons]
            else:
                outputs.append("\n" + analysis.format_comparison(comparisons, args.format))
        if args.plot:
            from smoothcert.evaluation.plotting import plot_certified_accuracy

            empirical = [analysis.empirical_curve(p) for p in args.empirical]
            plot_certified_accuracy(summaries, args.plot, envelope=args.envelope, empirical=empirical)
        if args.pa_plot:
            from smoothcert.evaluation.plotting import plot_p_lower_ecdf

            plot_p_lower_ecdf(table_logs, args.pa_plot)
    elif args.compare or args.pa_plot:
        raise ValueError(f"{'--compare' if args.compare else '--pa-plot'} needs certify logs")
    if args.predict_logs:
        if not args.predict_reference:
            raise ValueError("--predict-logs needs --predict-reference (a large-n predict log)")
        ref = analysis.read_predict_log(args.predict_reference)
        rows = analysis.predict_quality([analysis.read_predict_log(p) for p in args.predict_logs], ref)
        if args.format == "json":
            documents["predict"] = rows
        else:
            outputs.append(reports.format_predict_quality(rows, args.format))
    if args.bounds_plot:
        from smoothcert.evaluation.plotting import plot_bounds

        plot_bounds(args.bounds_plot, sigma=args.sigma or 1.0)
    if args.max_radius_plot:
        from smoothcert.evaluation.plotting import plot_max_radius

        plot_max_radius(args.max_radius_plot, sigma=args.sigma or 1.0)
    if not (args.logs or args.predict_logs or args.bounds_plot or args.max_radius_plot):
        raise ValueError("nothing to analyze: give certify logs, --predict-logs, --bounds-plot or --max-radius-plot")
    if documents:
        # one table alone keeps its bare list; certify and predict tables together make one object
        doc = next(iter(documents.values())) if len(documents) == 1 else documents
        outputs.append(reports.json_text(doc))
    text = "".join(outputs)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_attack(args: argparse.Namespace) -> int:
    from smoothcert.runs.attack import AttackConfig, run_deepfool, run_tightness

    config = AttackConfig(
        model=args.model,
        out=args.out,
        certify_log=args.certify_log,
        multiples=tuple(args.multiples) if args.multiples else None,
        radii=tuple(args.radii) if args.radii else None,
        steps=args.steps,
        num_noise=args.num_noise,
        step_factor=args.step_factor,
        n=args.n,
        alpha=args.alpha,
        batch=args.batch,
        max=args.max,
        skip=args.skip,
        seed=args.seed,
        device=args.device,
        data_dir=args.data_dir,
        dataset=args.dataset,
        split=args.split,
        sigma=args.sigma,
        overwrite=args.overwrite,
    )
    summary = run_deepfool(config) if args.deepfool else run_tightness(config)
    import json

    print(json.dumps(summary, indent=2))
    return 0


def _cmd_visualize(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from smoothcert.evaluation.plotting import plot_noise_grid
    from smoothcert.io.data import load_dataset

    dataset: Any = load_dataset(args.dataset, args.split, args.data_dir)
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(dataset), size=min(args.count, len(dataset)), replace=False)
    images = torch.stack([dataset[int(i)][0] for i in picks]).numpy()
    out = plot_noise_grid(images, args.sigmas, args.out, seed=args.seed)
    print(f"wrote {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from smoothcert.runs.demo import run_demo

    run_demo(
        out=args.out,
        full=args.full,
        sigmas=args.sigmas,
        data_dir=args.data_dir,
        device=args.device,
        progress=not args.quiet,
    )
    return 0


def _add_import_parser(sub: Any) -> None:
    i = sub.add_parser("import", help="convert a published checkpoint (2019 reference, torchvision) to a model dir")
    i.add_argument("src", nargs="?", metavar="SRC", help="torch.save checkpoint, state_dict or .safetensors file")
    i.add_argument("--out", required=True, help="model directory to write (model.safetensors + model.json)")
    i.add_argument("--arch", help="architecture (default: the checkpoint's 'arch')")
    i.add_argument("--dataset", help="data set, for its normalization and classes (default: the checkpoint's)")
    i.add_argument("--sigma", type=float, help="training noise level, certify's default (default: the checkpoint's)")
    i.add_argument("--weights", help="torchvision pretrained weights from torch's cache, e.g. IMAGENET1K_V2")
    i.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    i.set_defaults(func=_cmd_import)


def _cmd_import(args: argparse.Namespace) -> int:
    from smoothcert.io.importing import import_checkpoint

    meta = import_checkpoint(
        args.src,
        args.out,
        arch=args.arch,
        dataset=args.dataset,
        sigma=args.sigma,
        weights=args.weights,
        overwrite=args.overwrite,
    )
    src = meta["source"]
    print(
        f"imported {meta['arch']} ({src['format']}, sha256 {src['sha256'][:12]}) for {meta['dataset']} "
        f"at sigma={meta['sigma']:g} -> {args.out}"
    )
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError):
        text = f"missing key {text}"
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smoothcert`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in {"train", "train-denoiser", "certify", "predict", "attack", "demo", "import"}:
        from smoothcert.runtime.perf import set_threads, tune_malloc

        tuned = tune_malloc()
        threads = set_threads()
        if sys.stderr.isatty() and not getattr(args, "quiet", False):  # errors stay one line in scripts and logs
            alloc = "malloc tuned for reuse" if tuned else "default allocator"
            print(f"smoothcert {args.command}: {threads} torch threads, {alloc}", file=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"smoothcert {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smoothcert {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
