"""Module layering: certification does not need the training module; private helpers stay private;
each log schema, the TSV reader and the sidecar path have one home (smoothcert.results)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "smoothcert"


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in sys.modules if m.startswith('smoothcert')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["smoothcert.runs", "smoothcert.attack_runs", "smoothcert.attacks"])
def test_certification_and_attacks_do_not_import_training(module):
    loaded = _imported_after(f"import {module}")
    assert module in loaded and "smoothcert.train" not in loaded


def test_attacks_do_not_import_analysis():
    assert "smoothcert.analysis" not in _imported_after("import smoothcert.attacks")


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in PACKAGE.glob("*.py")}


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                offenders += [
                    f"{name}: from .{node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert offenders == []


def test_log_schemas_tsv_reading_and_sidecar_paths_have_one_home():
    found = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                found += [(name, t.id) for t in node.targets if isinstance(t, ast.Name) and t.id.endswith("_COLUMNS")]
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value == ".json":
                found.append((name, "'.json' suffix"))
    homes = {module for module, _ in found}
    assert homes == {"results"}, found
    # one reader: only results.py splits TSV lines on tabs
    splitters = [
        name
        for name, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "split"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value == "\t"
    ]
    assert set(splitters) == {"results"}, splitters
