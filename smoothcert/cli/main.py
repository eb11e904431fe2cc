"""The ``smoothcert`` command line: the parser of every sub-command, and :func:`main`.

Each command lives in its own module (``smoothcert.cli.train``, ``.denoiser``, ``.certify``
(certify and predict), ``.analyze``, ``.visualize``, ``.demo``, ``.attack``, ``.importing``),
whose ``register`` adds its sub-parser; options of configured commands are derived from their
config dataclasses (:mod:`smoothcert.cli.options`).

Errors in what the user asked for (:class:`~smoothcert.core.errors.SmoothcertError`: a bad
setting, a corrupt data or checkpoint file, a conflicting resume; and ``OSError``: a missing
file or data directory) print one line ``smoothcert: error: ...`` and exit with status 2;
``--debug`` adds the traceback. Anything else is a bug and surfaces as a traceback. Warnings
print as one line ``smoothcert: warning: ...``. Result files are never truncated unless
``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

from smoothcert.cli.analyze import register as _analyze
from smoothcert.cli.attack import register as _attack
from smoothcert.cli.baseline import register as _baseline
from smoothcert.cli.certify import register as _certify
from smoothcert.cli.demo import register as _demo
from smoothcert.cli.denoiser import register as _denoiser
from smoothcert.cli.diffusion import register as _diffusion
from smoothcert.cli.importing import register as _import
from smoothcert.cli.tasks import register as _tasks
from smoothcert.cli.tasks import route
from smoothcert.cli.train import register as _train
from smoothcert.cli.visualize import register as _visualize
from smoothcert.core.errors import SmoothcertError

__all__ = ["build_parser", "main"]

_HEAVY = {"train", "train-denoiser", "train-diffusion", "certify", "predict", "attack", "demo", "import", "baseline"}
_HEAVY |= {"train-task", "certify-task"}


# command -> (the module's register, its one-line help): only the invoked command's module is
# registered in full, so e.g. ``analyze`` never imports torch through another command's config
_COMMANDS: dict[str, tuple[Any, str | None]] = {
    "train": (_train, "train a base classifier under noise (--method, or --task segmentation|localization)"),
    "train-denoiser": (_denoiser, "train a denoiser for denoised smoothing (Salman et al. 2020)"),
    "train-diffusion": (_diffusion, "train a small DDPM for diffusion denoised smoothing (Carlini et al. 2023)"),
    "certify": (_certify, "CERTIFY every selected example of a split (or --task segmentation|localization)"),
    "predict": (_certify, "PREDICT every selected example of a split"),
    "analyze": (_analyze, "certified-accuracy tables and plots from certify logs"),
    "visualize": (_visualize, "a PNG grid of examples under several noise levels"),
    "demo": (_demo, "train, certify and tabulate on Fashion-MNIST (the README's main job)"),
    "attack": (_attack, "attack a certify log's smoothed classifier (PGD tightness, DeepFool)"),
    "import": (_import, "convert a published checkpoint (2019 reference, torchvision) to a model dir"),
    "baseline": (_baseline, "a deterministic certified baseline (Lipschitz margin) to compare with smoothing"),
    "train-task": (_tasks, None),  # reached through train --task
    "certify-task": (_tasks, None),  # reached through certify --task
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command, with the global ``--debug``.

    With ``command``, only that command's module registers its options; the others are listed
    by name and help alone (enough to parse and to print ``smoothcert --help``).
    """
    parser = argparse.ArgumentParser(
        prog="smoothcert",
        description="Certified robustness by randomized smoothing: classification (L2, L1, Linf; sound on "
        "quantized inputs), segmentation and localization.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of errors too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    registers = [r for name, (r, _) in _COMMANDS.items() if command in (None, name)]
    for register in dict.fromkeys(registers):  # once each, in order
        register(sub)
    for name, (_, helptext) in _COMMANDS.items():
        if name not in sub.choices and helptext is not None:
            sub.add_parser(name, help=helptext)
    for p in sub.choices.values():  # also accepted after the command; SUPPRESS keeps a global --debug
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _one_line(exc: BaseException | Warning | str) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` for the command line: one line, no source line."""
    print(f"smoothcert: warning: {_one_line(message)}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smoothcert`` command; returns the exit status."""
    routed = route(sys.argv[1:] if argv is None else argv)
    command = next((a for a in routed if not a.startswith("-")), None)
    args = build_parser(command if command in _COMMANDS else None).parse_args(routed)
    debug = bool(getattr(args, "debug", False))
    with warnings.catch_warnings():  # restores the caller's showwarning (main is also called from Python)
        warnings.showwarning = _show_warning
        if args.command in _HEAVY:
            from smoothcert.runtime.perf import set_threads, tune_malloc

            tuned = tune_malloc()
            threads = set_threads()
            if sys.stderr.isatty() and not getattr(args, "quiet", False):  # errors stay one line in scripts
                alloc = "malloc tuned for reuse" if tuned else "default allocator"
                print(f"smoothcert {args.command}: {threads} torch threads, {alloc}", file=sys.stderr)
        try:
            return int(_dispatch(args) or 0)
        except (SmoothcertError, OSError) as e:  # the data-not-found error is a FileNotFoundError
            if debug:
                traceback.print_exc()
            print(f"smoothcert: error: {_one_line(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"smoothcert: {args.command} interrupted; re-run the same command to resume", file=sys.stderr)
            return 130


def _dispatch(args: argparse.Namespace) -> Any:
    return args.func(args)
