"""``smoothcert analyze``: certified-accuracy tables, comparisons, PREDICT-quality tables and plots from logs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from smoothcert.cli.options import positive_int
from smoothcert.core.errors import ConfigError

__all__ = ["cmd_analyze", "register"]


def register(sub: Any) -> None:
    """Add the ``analyze`` sub-command."""
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
    a.add_argument("--project-n", type=positive_int, help="accuracy CERTIFY would report with this n")
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
    a.set_defaults(func=cmd_analyze)


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
            raise ConfigError(f"{flag} {target!r} is one of the input logs; analyze never writes to them")


def _task_of(path: str) -> str:
    """``segmentation``, ``localization`` or ``classification``, from a log's header."""
    from smoothcert.io.logs import SCHEMAS, read_table

    header = tuple(read_table(path)[0])
    for task in ("segmentation", "localization"):
        if header == SCHEMAS[task]:
            return task
    return "classification"


def _analyze_tasks(args: argparse.Namespace, task: str) -> str:
    """Tables (Markdown) and plots of dense-task logs: one row per log (one tau, or one radius)."""
    from smoothcert.evaluation import tasks as T

    if task == "segmentation":
        seg = [T.read_segmentation(p) for p in args.logs]
        rows = sorted((T.segmentation_summary(g) for g in seg), key=lambda r: (r["radius"], r["tau"]))
        columns = ["tau", "radius", "certified_accuracy", "abstain", "miou", "miou_certified", "images", "time"]
        if args.plot:
            T.plot_segmentation({"logs": seg}, args.plot)
    else:
        loc = [T.read_localization(p) for p in args.logs]
        rows = T.localization_curve(loc, thresholds=(0.5, 0.75))
        columns = ["radius", "certified_iou_truth>=0.5", "certified_iou_clean>=0.5", "certified_iou_truth>=0.75"]
        columns += ["mean_width", "images", "time"]
        if args.plot:
            T.plot_localization({"logs": loc}, args.plot)
    if args.format == "json":
        from smoothcert.evaluation.reports import json_text

        return json_text(rows)
    if args.format != "markdown":
        raise ConfigError(f"{task} logs are reported in markdown or json, not {args.format}")
    return T.markdown_table(rows, columns) + "\n"


def cmd_analyze(args: argparse.Namespace) -> int:
    from smoothcert.evaluation import analysis, reports

    _check_outputs_are_not_inputs(args)
    kinds = {_task_of(p) for p in args.logs}
    if kinds - {"classification"}:
        if len(kinds) > 1:
            raise ConfigError(f"analyze reads logs of one task at a time, got {', '.join(sorted(kinds))}")
        text = _analyze_tasks(args, kinds.pop())
        if args.out:
            Path(args.out).write_text(text)
        else:
            sys.stdout.write(text)
        return 0
    outputs: list[str] = []
    documents: dict[str, Any] = {}  # --format json: everything goes into one JSON document
    if args.logs:
        labels = args.label or []
        if labels and len(labels) != len(args.logs):
            raise ConfigError(f"--label was given {len(labels)} times for {len(args.logs)} logs")
        logs = [analysis.read_certify_log(p, name=labels[i] if labels else None) for i, p in enumerate(args.logs)]
        baseline = analysis.read_certify_log(args.compare) if args.compare else None
        radii = analysis.parse_radii(args.radii)
        if args.high_prob is not None and not 0 < args.high_prob < 1:
            raise ConfigError(f"--high-prob must be in (0, 1), got {args.high_prob}")
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
        raise ConfigError(f"{'--compare' if args.compare else '--pa-plot'} needs certify logs")
    if args.predict_logs:
        if not args.predict_reference:
            raise ConfigError("--predict-logs needs --predict-reference (a large-n predict log)")
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
        raise ConfigError("nothing to analyze: give certify logs, --predict-logs, --bounds-plot or --max-radius-plot")
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
