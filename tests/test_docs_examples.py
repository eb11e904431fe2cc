"""The documentation site's examples run as written, and its command lines parse.

* Every ```python block of the site's own pages (the home page, getting started, concepts,
  contributing and every guide under ``docs/guides/``) is executed, the blocks of one page in
  order in one namespace, in a temporary working directory. The guides keep their sizes small
  themselves (n of at most 10,000, tiny synthetic models, ``pass_size=None`` to skip the 3 s
  pass-size probe) and say so, so the page shows exactly what runs.
* Every ``smoothcert ...`` line of a ```bash or ```console block in any page of ``docs/`` or in
  the README (backslash continuations joined, ``#`` comments dropped, a ``$ `` prompt removed) is
  accepted by the CLI's own parser.
* The API reference documents every public name: ``smoothcert.__all__`` and the ``__all__`` of
  the public sub-packages.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import torch

from smoothcert.cli.main import build_parser
from smoothcert.cli.tasks import route

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SITE_PAGES = ("index.md", "getting-started.md", "concepts.md", "contributing.md")
EXAMPLE_PAGES = sorted([*(DOCS / name for name in SITE_PAGES), *(DOCS / "guides").glob("*.md")])
COMMAND_PAGES = [*sorted(DOCS.rglob("*.md")), REPO / "README.md"]

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", flags=re.S | re.M)


def _blocks(path: Path, languages: set[str]) -> list[str]:
    return [m[2] for m in FENCE.finditer(path.read_text()) if m[1] in languages]


def smoothcert_commands(text: str) -> list[list[str]]:
    """The ``smoothcert`` command lines of shell text, as argument lists (without ``smoothcert``)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:].lstrip()
        if line.startswith("smoothcert "):  # a shell loop's variable ($s) stands for a number here
            commands.append([re.sub(r"^\$\w+$", "1", a) for a in shlex.split(line, comments=True)[1:]])
    return commands


def _page_commands(path: Path) -> list[list[str]]:
    return [cmd for block in _blocks(path, {"bash", "console", "sh", "shell"}) for cmd in smoothcert_commands(block)]


def parse_problem(args: list[str]) -> str | None:
    """``None`` when the CLI's parser accepts ``args``, else what it printed. As ``smoothcert.cli.main``
    does, ``train``/``certify --task segmentation|localization`` go to the dense tasks' parser first."""
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(route(args))
    except SystemExit as e:
        return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {e.code}"
    return None


@pytest.mark.parametrize(
    "page", [p for p in EXAMPLE_PAGES if _blocks(p, {"python"})], ids=lambda p: str(p.relative_to(DOCS))
)
def test_page_python_examples_run(page: Path, tmp_path, monkeypatch, capsys):
    blocks = _blocks(page, {"python"})
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    namespace: dict[str, object] = {"__name__": "__docs_example__"}
    try:
        for block in blocks:
            exec(compile(block, str(page), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    assert capsys.readouterr().out.strip(), f"{page.name}: the examples print their results"


def test_the_guides_have_python_examples():
    """The runner sees the guides' examples (a fence regex that matched nothing would pass vacuously)."""
    counted = {p.name: len(_blocks(p, {"python"})) for p in EXAMPLE_PAGES}
    assert counted["python-api.md"] >= 3 and sum(counted.values()) >= 12, counted


def test_every_documented_command_parses():
    commands = [(page, cmd) for page in COMMAND_PAGES for cmd in _page_commands(page)]
    assert len(commands) > 60, len(commands)  # every guide shows commands; a broken extractor finds few
    problems = []
    for page, cmd in commands:
        problem = parse_problem(cmd)
        if problem is not None:
            problems.append(f"{page.relative_to(REPO)}: smoothcert {shlex.join(cmd)}: {problem}")
    assert problems == []


def test_the_check_rejects_a_wrong_flag_and_joins_continuations():
    """Positive control: the same extraction and check catch a misspelt flag and a bad value."""
    text = "```bash\nsmoothcert certify --model m \\\n    --out o.tsv --n-samples 100   # a wrong flag\n```\n"
    (cmd,) = [c for block in FENCE.finditer(text) for c in smoothcert_commands(block[2])]
    assert cmd == ["certify", "--model", "m", "--out", "o.tsv", "--n-samples", "100"]
    assert "--n-samples" in (parse_problem(cmd) or "")
    assert parse_problem(["certify", "--model", "m", "--out", "o.tsv", "--norm", "l3"]) is not None
    base = ["certify", "--model", "m", "--out", "o.tsv"]
    assert parse_problem([*base, "--n", "100"]) is None
    assert parse_problem([*base, "--tau", "0.75"]) is not None  # a dense-task flag, refused by classification
    assert parse_problem([*base, "--task", "segmentation", "--tau", "0.75"]) is None
    loop = smoothcert_commands("  smoothcert train --seed $s --out runs/m-$s")
    assert loop == [["train", "--seed", "1", "--out", "runs/m-$s"]]


def _documented_objects() -> set[str]:
    return {m[1] for p in (DOCS / "api").glob("*.md") for m in re.finditer(r"^::: ([\w.]+)", p.read_text(), re.M)}


def test_the_api_reference_documents_every_public_name():
    """Each name of ``smoothcert.__all__`` and of the public sub-packages' ``__all__`` is rendered by
    mkdocstrings: the object itself, or the module that defines it (whose public members are rendered)."""
    import smoothcert

    documented = _documented_objects()
    missing = []
    public = [("smoothcert", n) for n in smoothcert.__all__ if n != "__version__"]
    for package in ("smoothcert.cli", "smoothcert.evaluation", "smoothcert.baselines"):
        public += [(package, n) for n in importlib.import_module(package).__all__]
    for package, name in public:
        try:
            value = getattr(importlib.import_module(package), name)
        except AttributeError:  # a submodule named in __all__ that is not imported yet
            value = importlib.import_module(f"{package}.{name}")
        if isinstance(value, type(smoothcert)):  # a module: rendered whole
            homes = {value.__name__}
        else:  # a class, function or constant: rendered itself, or with its defining module
            module = value.__module__ if callable(value) else smoothcert._LAZY[name]  # ABSTAIN is an int
            homes = {f"{module}.{name}", module}
        if not homes & documented:
            missing.append(f"{package}.{name} (looked for {sorted(homes)})")
    assert missing == []


def test_the_api_check_catches_an_undocumented_name():
    """Positive control: the rendered set is read from the pages, and a name outside it is not in it."""
    documented = _documented_objects()
    assert "smoothcert.smoothing.classifier.SmoothedClassifier" in documented
    assert "smoothcert.smoothing.engine.plan_batches" not in documented
