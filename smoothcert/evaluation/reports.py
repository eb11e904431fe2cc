"""Summaries, comparisons and PREDICT-quality tables as Markdown, LaTeX, CSV and JSON; no torch import.

Every format names what a reader needs to interpret a row: the threat norm of the radii, the
mode of a sequential log, which noise ran (sound mode and its grid, float mode: a
``smoothing`` note, field or column), and an eval-label log as such (``(eval-label)`` after its name, a
``label_mode`` field or column), with the caveat that a comparison of an eval-label log against
one that selected its class favours the eval-label side. JSON is strict: a non-finite number is
written as ``null``, never as ``NaN`` or ``Infinity`` (:func:`json_text`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from smoothcert.core.errors import ConfigError
from smoothcert.evaluation.compare import Comparison, PairedDifference
from smoothcert.evaluation.logs import check_same_norm, norm_label
from smoothcert.evaluation.metrics import PREDICT_QUALITY_KEYS, Summary, smoothing_caption

__all__ = [
    "ACR_CAVEAT",
    "EVAL_LABEL_NOTE",
    "FORMATS",
    "NA",
    "format_comparison",
    "format_csv",
    "format_json",
    "format_latex",
    "format_markdown",
    "format_predict_quality",
    "json_safe",
    "json_text",
    "shown_name",
]

FORMATS = ("markdown", "latex", "csv", "json")
NA = "n/a"
ACR_CAVEAT = (
    "ACR depends on the sampling budget (the largest radius n samples can certify grows with n) and can be "
    'inflated by examples whose p_A is close to 1 (Sun et al., 2024, "ACR is a Poor Metric for Randomized '
    'Smoothing"): read it beside the certified-accuracy curve and, where a log records them, the p_lower quantiles'
)
EVAL_LABEL_NOTE = (
    "(eval-label): the log certified each example's true label without selecting a class (--eval-label; "
    "for evaluation only, not a deployable procedure): no selection error and no n0 selection draws, so its "
    "abstain rate counts examples not certified for their true label and its passes exclude selection"
)
_LATEX_NORMS = {"l1": "$\\ell_1$", "l2": "$\\ell_2$", "linf": "$\\ell_\\infty$"}


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (nan, inf) replaced by ``None``, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(doc: Any) -> str:
    """Strict JSON (``null`` for non-finite numbers), indented, with a final newline."""
    return json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n"


def shown_name(name: str, eval_label: bool) -> str:
    """A log's name as tables show it: ``(eval-label)`` appended for an eval-label log."""
    return f"{name} (eval-label)" if eval_label else name


def _best(summaries: Sequence[Summary]) -> list[set[int]]:
    """For each radius, the logs with the highest certified accuracy (rounded to 2 decimals)."""
    best = []
    for j in range(len(summaries[0].radii)):
        vals = {i: round(v, 2) for i, s in enumerate(summaries) if (v := s.certified_accuracy[j]) is not None}
        top = max(vals.values(), default=None)
        best.append({i for i, v in vals.items() if v == top} if len(vals) > 1 else set())
    return best


def _cell(s: Summary, j: int) -> str:
    v = s.certified_accuracy[j]
    if v is None:
        return NA
    text = f"{v:.2f}"
    if "certified_accuracy_lower" in s.extra:
        text += f" (≥{s.extra['certified_accuracy_lower'][j]:.2f})"
    return text


def _acr(s: Summary) -> str:
    return NA if s.acr is None else f"{s.acr:.3f}"


def _num(v: float | None, spec: str = ",.0f") -> str:
    return NA if v is None else format(v, spec)


def _csv_value(v: Any) -> Any:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def _mode_text(s: Summary) -> str:
    if s.mode == "decision":
        text = f"decision r = {s.decision_radius:g}"
    elif s.mode == "curve":
        text = f"curve, cap {s.radius_cap:g}"
    elif s.mode == "max-radius":
        text = "max-radius" + (f", cap {s.radius_cap:g}" if s.radius_cap is not None else "")
    else:
        text = "fixed n"
    return text + (", eval-label" if s.eval_label else "")


def _decisions_text(s: Summary) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(s.decisions.items())) if s.decisions else ""


def _notes(summaries: Sequence[Summary]) -> list[str]:
    notes = [smoothing_caption([(shown_name(s.name, s.eval_label), s.smoothing) for s in summaries])]
    fronts = [(shown_name(s.name, s.eval_label), s.front_end) for s in summaries if s.front_end is not None]
    if fronts:  # named even when --label replaced the default names, which carry it
        notes.append("in front of the classifier: " + "; ".join(f"{name}: {front}" for name, front in fronts))
    if any(s.mode == "decision" for s in summaries):
        notes.append(
            "n/a: a decision-mode log tests one radius, so its certified accuracy is given at that radius only"
        )
    if any(s.radius_cap is not None for s in summaries):
        notes.append("a capped max-radius or curve log is n/a above its cap, and its ACR is of min(radius, cap)")
    if any(s.eval_label for s in summaries):
        notes.append(EVAL_LABEL_NOTE)
    notes.append(ACR_CAVEAT)
    if any(s.p_lower_quantiles is not None for s in summaries):
        notes.append(
            "p_lower quantiles: numpy's 'linear' method over all examples and over those whose selected class is "
            "the true label, certified or not (n/a for decision-mode logs, whose bound stops once it decides; a "
            "capped log's bounds stop rising at the cap)"
        )
    return notes


def _quantile_rows(summaries: Sequence[Summary]) -> tuple[list[str], list[list[str]]]:
    """Head and rows of the p_lower quantile table; ``[]`` rows when no log has quantiles."""
    levels = next((s.p_lower_quantiles.levels for s in summaries if s.p_lower_quantiles is not None), ())
    head = ["log", "p_lower over", "examples", *(f"q{q:g}" for q in levels)]
    rows = []
    for s in summaries:
        q = s.p_lower_quantiles
        name = shown_name(s.name, s.eval_label)
        if q is None:
            rows.append([name, "all", str(s.examples), *([NA] * len(levels))])
            continue
        rows.append([name, "all", str(q.examples), *(f"{v:.4f}" for v in q.all)])
        right = [NA] * len(levels) if q.correct is None else [f"{v:.4f}" for v in q.correct]
        rows.append([name, "selected = label", str(q.correct_examples), *right])
    return head, rows if levels else []


def _spec(head: list[str], left: int, last: str = "r") -> str:
    """Column alignment: ``left`` columns of text (``l``), numbers (``r``), then ``last`` for the last one."""
    return "l" * left + "r" * (len(head) - left - 1) + last


def _markdown_table(head: list[str], rows: list[list[str]], spec: str) -> list[str]:
    align = "|" + "|".join("---" if c == "l" else "---:" for c in spec) + "|"
    return ["| " + " | ".join(head) + " |", align] + ["| " + " | ".join(r) + " |" for r in rows]


def format_markdown(summaries: Sequence[Summary]) -> str:
    """A Markdown table, one row per log, the best log per radius in bold (as in the paper).

    Radii are labelled with the logs' norm; notes follow (the ACR caveat always); a second table
    gives forward passes per example (and sequential decisions) when any log records them, a
    third the p_lower quantiles when any log records ``p_lower``.
    """
    if not summaries:
        return ""
    norm = norm_label(check_same_norm(summaries))
    radii = summaries[0].radii
    best = _best(summaries)
    with_passes = any(s.passes is not None for s in summaries)
    head = ["log", "n", *(f"{norm} r = {r:g}" for r in radii), "ACR", "abstain", *(["passes (mean)"] * with_passes)]
    rows = []
    for i, s in enumerate(summaries):
        cells = [f"**{_cell(s, j)}**" if i in best[j] else _cell(s, j) for j in range(len(radii))]
        passes = [_num(s.passes.mean if s.passes else None)] if with_passes else []
        rows.append(
            [shown_name(s.name, s.eval_label), str(s.examples), *cells, _acr(s), f"{s.abstain_rate:.2f}", *passes]
        )
    lines = _markdown_table(head, rows, _spec(head, 1))
    lines += [f"\n{note}." for note in _notes(summaries)]
    if with_passes:
        head = ["log", "mode", "passes mean", "median", "p99", "max", "time/example (s)", "decisions or stops"]
        rows = []
        for s in summaries:
            p = s.passes
            vals = [p.mean, p.median, p.p99, p.max] if p else [None] * 4
            name = shown_name(s.name, s.eval_label)
            rows.append([name, _mode_text(s), *map(_num, vals), _num(s.time_mean, ".3f"), _decisions_text(s)])
        lines += ["", *_markdown_table(head, rows, _spec(head, 2, "l"))]
    q_head, q_rows = _quantile_rows(summaries)
    if q_rows:
        lines += ["", *_markdown_table(q_head, q_rows, _spec(q_head, 2))]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return (
        text.replace("_", "\\_")
        .replace("%", "\\%")
        .replace("σ", "$\\sigma$")
        .replace("≥", "$\\geq$")
        .replace("∞", "$\\infty$")
        .replace("×", "$\\times$")
        .replace("−", "$-$")
    )


def _latex_table(head: list[str], rows: list[list[str]], spec: str) -> list[str]:
    return [
        "\\begin{tabular}{" + spec + "}",
        "\\toprule",
        " & ".join(head) + " \\\\",
        "\\midrule",
        *(" & ".join(r) + " \\\\" for r in rows),
        "\\bottomrule",
        "\\end{tabular}",
    ]


def format_latex(summaries: Sequence[Summary]) -> str:
    """Booktabs LaTeX tables as :func:`format_markdown`'s, the notes as ``%`` comments."""
    if not summaries:
        return ""
    norm = _LATEX_NORMS[check_same_norm(summaries)]
    radii = summaries[0].radii
    best = _best(summaries)
    with_passes = any(s.passes is not None for s in summaries)
    head = ["Log", *(f"{norm} $r = {r:g}$" for r in radii), "ACR", "Abstain", *(["Passes (mean)"] * with_passes)]
    rows = []
    for i, s in enumerate(summaries):
        cells = [f"\\textbf{{{_cell(s, j)}}}" if i in best[j] else _cell(s, j) for j in range(len(radii))]
        passes = [_num(s.passes.mean if s.passes else None, ".0f")] if with_passes else []
        rows.append([_tex(shown_name(s.name, s.eval_label)), *cells, _acr(s), f"{s.abstain_rate:.2f}", *passes])
    lines = _latex_table(head, rows, _spec(head, 1))
    lines += [f"% {note}." for note in _notes(summaries)]
    if with_passes:
        head = ["Log", "Mode", "Passes mean", "Median", "p99", "Max", "Time/example (s)"]
        rows = []
        for s in summaries:
            p = s.passes
            vals = [p.mean, p.median, p.p99, p.max] if p else [None] * 4
            name = _tex(shown_name(s.name, s.eval_label))
            rows.append([name, _mode_text(s), *(_num(v, ".0f") for v in vals), _num(s.time_mean, ".3f")])
        lines += ["", *_latex_table(head, rows, _spec(head, 2))]
    q_head, q_rows = _quantile_rows(summaries)
    if q_rows:
        q_tex = [[_tex(c) for c in r] for r in q_rows]
        lines += ["", *_latex_table([_tex(h) for h in q_head], q_tex, _spec(q_head, 2))]
    return "\n".join(lines).replace("≥", "$\\geq$") + "\n"


def format_csv(summaries: Sequence[Summary]) -> str:
    """Long-format CSV: one row per (log, radius); empty cells where a value is n/a.

    The per-log values (ACR, passes, ``label_mode``, the p_lower quantiles as ``p_lower_all_qL``
    and ``p_lower_correct_qL`` columns when any log has them) repeat on each of its rows.
    """
    check_same_norm(summaries)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    lower = any("certified_accuracy_lower" in s.extra for s in summaries)
    levels = next((s.p_lower_quantiles.levels for s in summaries if s.p_lower_quantiles is not None), ())
    q_cols = [f"p_lower_{who}_q{q:g}" for who in ("all", "correct") for q in levels]
    w.writerow(
        ["name", "path", "examples", "radius", "certified_accuracy"]
        + (["certified_accuracy_lower"] if lower else [])
        + ["acr", "abstain_rate", "norm", "mode", "label_mode", "smoothing", "front_end"]
        + ["passes_mean", "passes_median", "passes_p99", "passes_max", "time_mean", *q_cols]
    )
    for s in summaries:
        p, q = s.passes, s.p_lower_quantiles
        pass_cells = [p.mean, p.median, p.p99, p.max] if p else [None] * 4
        q_cells: list[Any] = [None] * len(q_cols)
        if q is not None:
            q_cells = [*q.all, *(q.correct if q.correct is not None else [None] * len(levels))]
        tail = [s.abstain_rate, s.norm, s.mode, s.label_mode, s.smoothing, s.front_end or "", *pass_cells]
        tail += [s.time_mean, *q_cells]
        for j, r in enumerate(s.radii):
            extra = [s.extra["certified_accuracy_lower"][j]] if lower else []
            w.writerow(map(_csv_value, [s.name, s.path, s.examples, r, s.certified_accuracy[j], *extra, s.acr, *tail]))
    return buf.getvalue()


def format_json(summaries: Sequence[Summary]) -> str:
    """The summaries as a strict JSON list (see :func:`json_text`)."""
    check_same_norm(summaries)
    return json_text([s.to_json() for s in summaries])


def _diff_cells(d: PairedDifference) -> list[str]:
    return [
        *(f"{d.a:.3f}", f"{d.b:.3f}", f"{d.difference:+.3f}", f"{d.se:.3f}"),
        *(f"[{d.ci_low:+.3f}, {d.ci_high:+.3f}]", str(d.a_only), str(d.b_only), f"{d.mcnemar_p:.3g}"),
    ]


def _comparison_csv(comparisons: Sequence[Comparison]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head_cols = ["a", "b", "label_mode_a", "label_mode_b", "smoothing_a", "smoothing_b", "norm", "examples"]
    head_cols += ["passes_a_mean", "passes_b_mean", "passes_ratio", "time_ratio"]
    diff_cols = ["acc_a", "acc_b", "difference", "se", "ci95_low", "ci95_high", "a_only", "b_only", "mcnemar_p"]
    w.writerow([*head_cols, "radius", *diff_cols, "note"])
    for c in comparisons:
        modes = ["eval-label" if e else "selected" for e in (c.eval_label_a, c.eval_label_b)]
        means = [c.passes_a.mean if c.passes_a else None, c.passes_b.mean if c.passes_b else None]
        head = [c.name_a, c.name_b, *modes, c.smoothing_a, c.smoothing_b, c.norm, c.examples, *means]
        head += [c.passes_ratio, c.time_ratio]
        rows: list[tuple[Any, PairedDifference]] = [(r, d) for r, d in zip(c.radii, c.accuracy, strict=True) if d]
        rows += [("acr", c.acr)] if c.acr is not None else []
        for r, d in rows:
            counts = [d.a_only, d.b_only, d.mcnemar_p] if r != "acr" else [None] * 3
            cells = [*head, r, d.a, d.b, d.difference, d.se, d.ci_low, d.ci_high, *counts, c.note]
            w.writerow(map(_csv_value, cells))
    return buf.getvalue()


def _sides(c: Comparison) -> list[tuple[str, bool, str]]:
    return [(c.name_a, c.eval_label_a, c.smoothing_a), (c.name_b, c.eval_label_b, c.smoothing_b)]


def format_comparison(comparisons: Sequence[Comparison], fmt: str) -> str:
    """The paired comparisons as ``markdown``, ``latex``, ``csv`` or ``json``.

    One row per pair (examples in common, mean passes, B/A ratios, paired ACR difference), then
    one row per (pair, radius) where both logs are meaningful: accuracies, A − B, its standard
    error, normal 95% interval, discordant counts and exact McNemar p. Eval-label logs are named
    as such, and a pair that mixes an eval-label log with a selecting one carries the note that
    the comparison favours the eval-label side.
    """
    if fmt == "json":
        return json_text([c.to_json() for c in comparisons])
    if fmt not in FORMATS:
        raise ConfigError(f"format must be markdown, latex, csv or json, got {fmt!r}")
    if not comparisons:
        return ""
    norms = {c.norm for c in comparisons}
    if len(norms) > 1:
        raise ConfigError(f"comparisons of different threat norms cannot share a table: {', '.join(sorted(norms))}")
    if fmt == "csv":
        return _comparison_csv(comparisons)
    norm = norms.pop()
    pair_head = ["A", "B", "common", "passes A (mean)", "passes B (mean)", "B/A passes", "B/A time", "ACR A − B (SE)"]
    diff_head = ["A", "B", f"{norm_label(norm)} r", "acc A", "acc B", "A − B", "SE", "95% CI (normal)"]
    diff_head += ["A only", "B only", "McNemar p (exact)"]
    pair_rows, diff_rows = [], []
    for c in comparisons:
        names = [shown_name(c.name_a, c.eval_label_a), shown_name(c.name_b, c.eval_label_b)]
        acr = NA if c.acr is None else f"{c.acr.difference:+.4f} ({c.acr.se:.4f})"
        means = [_num(c.passes_a.mean if c.passes_a else None), _num(c.passes_b.mean if c.passes_b else None)]
        ratios = [_num(v, ".1f") + ("×" if v else "") for v in (c.passes_ratio, c.time_ratio)]
        pair_rows.append([*names, str(c.examples), *means, *ratios, acr])
        for r, d in zip(c.radii, c.accuracy, strict=True):
            if d is not None:
                diff_rows.append([*names, f"{r:g}", *_diff_cells(d)])
    pairs = [(shown_name(n, e), m) for c in comparisons for n, e, m in _sides(c)]
    notes = [
        smoothing_caption(list(dict.fromkeys(pairs))) + ".",
        "Paired over the examples both logs hold; SE and interval: normal approximation to the mean "
        "of per-example differences; McNemar: exact binomial test on the discordant examples.",
        *(f"Note: {c.note}." for c in comparisons if c.note),
    ]
    if any(c.acr is not None for c in comparisons):
        notes.append(f"{ACR_CAVEAT}.")
    if fmt == "markdown":
        tables = [*_markdown_table(pair_head, pair_rows, _spec(pair_head, 2))]
        tables += ["", *_markdown_table(diff_head, diff_rows, _spec(diff_head, 2))]
        return "\n".join([*tables, "", "\n\n".join(notes)]) + "\n"
    esc: Callable[[list[str]], list[str]] = lambda cells: [_tex(x) for x in cells]  # noqa: E731
    tables = _latex_table(esc(pair_head), [esc(r) for r in pair_rows], _spec(pair_head, 2))
    tables += ["", *_latex_table(esc(diff_head), [esc(r) for r in diff_rows], _spec(diff_head, 2))]
    return "\n".join([*tables, *(f"% {n}" for n in notes)]) + "\n"


def format_predict_quality(rows: Sequence[dict[str, Any]], fmt: str) -> str:
    """The PREDICT quality table (paper Table 4) as CSV (quoted by the csv module), LaTeX, Markdown or JSON."""
    keys = PREDICT_QUALITY_KEYS
    if fmt == "json":
        return json_text(list(rows))
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["name", "n", "examples", "smoothing", *keys])
        for r in rows:
            w.writerow([r["name"], r["n"], r["examples"], r.get("smoothing", ""), *(f"{r[k]:.4f}" for k in keys)])
        return buf.getvalue()
    caption = smoothing_caption([(str(r["name"]), str(r.get("smoothing", "float"))) for r in rows])
    head = ["PREDICT", *(k.replace("_", ", ") for k in keys)]
    cells = [[r["name"], *(f"{r[k]:.2f}" for k in keys)] for r in rows]
    if fmt == "latex":
        table = _latex_table(head, [[_tex(r[0]), *r[1:]] for r in cells], _spec(head, 1))
        return "\n".join([*table, f"% {_tex(caption)}."]) + "\n"
    if fmt != "markdown":
        raise ConfigError(f"format must be markdown, latex, csv or json, got {fmt!r}")
    return "\n".join([*_markdown_table(head, cells, _spec(head, 1)), "", f"{caption}."]) + "\n"
