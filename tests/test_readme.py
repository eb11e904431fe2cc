"""The README's Python examples run as written (in order, sharing one namespace)."""

from __future__ import annotations

import re
from pathlib import Path

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
