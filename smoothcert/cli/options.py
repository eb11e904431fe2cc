"""Command-line options derived from the config dataclasses: each setting is declared once, as a field.

:func:`add_options` adds one option per field of a config dataclass (``RunConfig``,
``AttackConfig``, ``TrainConfig``, ``DenoiserConfig``) and :func:`build_config` builds the
config back from the parsed arguments, so no command copies fields by hand. The option's form
follows the field: its name gives the flag (``n_max`` -> ``--n-max``), its type the parser
(``int``, ``float``, ``str``, ``bool``, ``tuple[float, ...]`` as a comma list), its default the
default (a field without default is a required option). A field's ``metadata`` (or an
``overrides`` entry given by the command, for configs whose fields carry none) refines it:

``help``
    the help text.
``flag``
    another flag name (``progress`` is ``--quiet``).
``negate``
    the flag stores the opposite of the field (``--quiet`` sets ``progress=False``).
``choices``
    the allowed values (e.g. the noise registry's names).
``min``
    integers below it are refused by the parser (status 2), e.g. ``--n 0``.
``commands``
    the sub-commands that take the option (``--n0`` is certify's, not predict's).
``group``
    the title of the argument group it is listed under.
``order``
    sort key among the options (default 0; the dataclass's order breaks ties).
``cli``
    ``False``: the field is not an option.

A boolean field that defaults to True becomes ``--flag/--no-flag``; one that defaults to False
a plain switch.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "add_device",
    "add_options",
    "add_sound_flag",
    "build_config",
    "check_sound_flag",
    "floats",
    "int_at_least",
    "positive_int",
]

Overrides = Mapping[str, Mapping[str, Any]]


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v

    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


positive_int = int_at_least(1)


def floats(text: str) -> list[float]:
    """An argparse type: a comma list of numbers (empty items ignored)."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got {text!r}") from None


def add_device(p: argparse.ArgumentParser) -> None:
    """``--device`` for the commands whose config has no device field."""
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")


def add_sound_flag(p: argparse.ArgumentParser) -> None:
    """``--sound``: accepted so that 0.2 scripts keep working; sound mode is the default since 0.3."""
    p.add_argument(
        "--sound",
        dest="sound_flag",
        action="store_true",
        help="accepted for 0.2 scripts: sound mode is the default (--float-noise turns it off)",
    )


def check_sound_flag(args: argparse.Namespace, *, sound: bool) -> None:
    """Refuse ``--sound`` given with ``--float-noise`` (the two contradict each other)."""
    from smoothcert.core.errors import ConfigError

    if getattr(args, "sound_flag", False) and not sound:
        raise ConfigError("--sound and --float-noise contradict each other: sound mode is the default, drop one")


def _meta(f: dataclasses.Field[Any], overrides: Overrides | None) -> dict[str, Any]:
    return {**f.metadata, **((overrides or {}).get(f.name, {}))}


def _flag(f: dataclasses.Field[Any], meta: Mapping[str, Any]) -> str:
    return str(meta.get("flag") or "--" + f.name.replace("_", "-"))


def _dest(f: dataclasses.Field[Any], meta: Mapping[str, Any]) -> str:
    return _flag(f, meta).lstrip("-").replace("-", "_")


def _base(tp: Any) -> Any:
    """``X`` of ``X | None``; other types unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _base(args[0])
    return tp


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(_base(tp)) is tuple


def add_options(
    parser: argparse.ArgumentParser,
    cls: type[Any],
    *,
    command: str | None = None,
    overrides: Overrides | None = None,
) -> dict[str, argparse._ArgumentGroup]:
    """Add one option per field of the dataclass ``cls`` to ``parser``; returns the groups made.

    ``command`` selects the fields whose ``commands`` metadata names it (fields without it are
    always added); ``overrides`` adds or replaces metadata per field name.
    """
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    ordered = sorted(enumerate(dataclasses.fields(cls)), key=lambda p: (_meta(p[1], overrides).get("order", 0), p[0]))
    for _, f in ordered:
        meta = _meta(f, overrides)
        if meta.get("cli", True) is False:
            continue
        if command is not None and "commands" in meta and command not in meta["commands"]:
            continue
        kw: dict[str, Any] = {"dest": _dest(f, meta)}
        if meta.get("help"):
            kw["help"] = meta["help"]
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        tp = _base(hints[f.name])
        if tp is bool:
            if meta.get("negate"):
                kw.update(action="store_true")
            elif default is True:
                kw.update(action=argparse.BooleanOptionalAction, default=True)
            else:
                kw.update(action="store_true")
        else:
            if tp is int:
                kw["type"] = int_at_least(int(meta["min"])) if "min" in meta else int
            elif tp is float:
                kw["type"] = float
            elif _is_tuple(tp):
                kw["type"] = floats
            elif tp is not str:
                raise TypeError(f"{cls.__name__}.{f.name} has no command-line form ({tp!r}); give it cli=False")
            if default is dataclasses.MISSING:
                kw["required"] = True
            else:
                kw["default"] = default
            if meta.get("choices") is not None:
                kw["choices"] = list(meta["choices"])
        target: Any = parser
        if meta.get("group"):
            target = groups.get(meta["group"]) or groups.setdefault(
                meta["group"], parser.add_argument_group(meta["group"])
            )
        target.add_argument(_flag(f, meta), **kw)
    return groups


def build_config(cls: type[Any], args: argparse.Namespace, *, overrides: Overrides | None = None, **fixed: Any) -> Any:
    """The ``cls`` config of the parsed ``args`` (the inverse of :func:`add_options`).

    ``fixed`` gives fields that are not options (e.g. ``command``). Fields whose option this
    command lacks keep the dataclass default. A ``ValueError`` from the config's own checks is
    the user's setting: it is raised as :class:`~smoothcert.core.errors.ConfigError`.
    """
    from smoothcert.runs.config import as_config_error

    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = dict(fixed)
    for f in dataclasses.fields(cls):
        meta = _meta(f, overrides)
        if f.name in fixed or meta.get("cli", True) is False or not hasattr(args, _dest(f, meta)):
            continue
        value = getattr(args, _dest(f, meta))
        if meta.get("negate"):
            value = not value
        if value is not None and _is_tuple(hints[f.name]):
            value = tuple(value)
        kwargs[f.name] = value
    with as_config_error():
        return cls(**kwargs)
