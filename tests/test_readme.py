"""The README's Python example runs as written and gives a sound certificate; its set-up commands are
CI's; every torchrun line (README and the torchrun guide) parses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TORCHRUN_GUIDE = REPO / "docs" / "guides" / "torchrun.md"


def test_readme_python_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 1
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert out.strip(), "the examples print their results"
    from smoothcert import Certificate

    cert, certs = namespace["cert"], namespace["certs"]
    assert isinstance(cert, Certificate)
    assert cert.sound and cert.grid == 255, "the README promises a sound certificate for an 8-bit input"
    assert len(certs) == 8 and all(isinstance(c, Certificate) and c.sound for c in certs)  # type: ignore[arg-type]


def test_readme_names_the_two_setup_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    assert "make test" in (REPO / ".ci" / "run").read_text()


def _torchrun_lines(path: Path) -> list[str]:
    """Every line of ``path`` that runs torchrun, with backslash continuations joined."""
    text = path.read_text().replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("torchrun ")]


def test_readme_torchrun_lines_parse_with_torchruns_own_parser():
    """Each torchrun line is accepted by torchrun's parser and hands smoothcert a command its parser accepts."""
    import shlex

    from torch.distributed.run import get_args_parser

    from smoothcert.cli.main import build_parser

    assert _torchrun_lines(TORCHRUN_GUIDE), "the torchrun guide shows how to run under torchrun"
    lines = _torchrun_lines(TORCHRUN_GUIDE) + [ln for ln in _torchrun_lines(README) if not ln.endswith("...")]
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
