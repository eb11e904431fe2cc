"""The README's Python examples run as written (in order, sharing one namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert out.strip(), "the examples print their results"
    from smoothcert import Certificate

    assert isinstance(namespace["cert"], Certificate)
    assert len(namespace["certs"]) == 8  # type: ignore[arg-type]


def test_readme_names_the_two_setup_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    assert "make test" in (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()


def _torchrun_lines() -> list[str]:
    """Every README line that runs torchrun, with backslash continuations joined."""
    text = README.read_text().replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("torchrun ")]


def test_readme_torchrun_lines_parse_with_torchruns_own_parser():
    """Each torchrun line is accepted by torchrun's parser and hands smoothcert a command its parser accepts."""
    import shlex

    from torch.distributed.run import get_args_parser

    from smoothcert.cli.main import build_parser

    lines = _torchrun_lines()
    assert lines, "the README shows how to run under torchrun"
    for line in lines:
        tokens = shlex.split(line.split("#")[0])[1:]
        args = get_args_parser().parse_args(tokens)  # SystemExit (status 2) on e.g. an ambiguous --n
        assert args.module and args.training_script == "smoothcert", line
        sub = build_parser().parse_args(args.training_script_args)
        assert sub.command in {"certify", "predict", "train"}, line


def test_torchrun_parser_rejects_the_form_without_separator():
    """Positive control: the form the README used to show is what torchrun's parser refuses."""
    from torch.distributed.run import get_args_parser

    bad = "--nproc_per_node 2 -m smoothcert certify --model m --n 100000 --out o.tsv".split()
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(bad)
