"""The architecture, enforced: sub-packages are layers, imports only run down, no cycles, one home
for each log schema, the TSV reader and the sidecar path, no module far past 500 lines.

The allowed direction (also in the README's "Layout" section), lowest first:

    core  <  runtime  <  models, smoothing  <  io, baselines  <  training, evaluation  <  runs  <  cli

A module may import its own sub-package and any strictly lower layer, never a sibling of the same
layer nor anything above. Each checker is run on a planted violation too (positive controls).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "smoothcert"
LAYER = {
    "core": 0,
    "runtime": 1,
    "models": 2,
    "smoothing": 2,
    "io": 3,
    "baselines": 3,
    "training": 4,
    "evaluation": 4,
    "runs": 5,
    "cli": 6,
}
MAX_LINES = 520  # "about 500"


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in sys.modules if m.startswith('smoothcert')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    return set(out.stdout.split())


def _dotted(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {_dotted(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str, tree: ast.Module) -> set[str]:
    """Every smoothcert module a module imports, function-level (lazy) imports included."""
    package = module if module.count(".") == 0 else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("smoothcert")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("smoothcert"):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in _ALL}
    return found


_ALL = set(_modules())


def _layer(module: str) -> tuple[str, int] | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYER:
        return None  # the package's face (smoothcert/__init__.py, _legacy, __main__)
    return parts[1], LAYER[parts[1]]


def layering_violations(modules: dict[str, ast.Module]) -> list[str]:
    bad = []
    for name, tree in modules.items():
        here = _layer(name)
        if here is None:
            continue
        for target in _imports(name, tree):
            there = _layer(target)
            if there is None:
                if target not in ("smoothcert",):  # __version__ from the face is fine
                    bad.append(f"{name} -> {target}")
                continue
            if there[0] != here[0] and there[1] >= here[1]:
                bad.append(f"{name} -> {target}")
    return sorted(bad)


def cycles(modules: dict[str, ast.Module]) -> list[list[str]]:
    graph = {m: {t for t in _imports(m, tree) if t in modules and t != m} for m, tree in modules.items()}
    found, state, stack = [], dict.fromkeys(graph, 0), []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state[t] == 1:
                found.append([*stack[stack.index(t) :], t])
            elif state[t] == 0:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if state[m] == 0:
            visit(m)
    # a package's __init__ that re-exports its own modules is not a cycle of concepts
    return [c for c in found if len({x.split(".")[1] if "." in x else "" for x in c}) > 1 or len(c) > 2]


def test_imports_only_run_down_the_layers():
    assert layering_violations(_modules()) == []


def test_layering_check_catches_a_planted_upward_import():
    planted = dict(_modules())
    planted["smoothcert.core.planted"] = ast.parse("from smoothcert.cli.main import main\n")
    planted["smoothcert.training.planted"] = ast.parse("def f():\n    from smoothcert.evaluation import analysis\n")
    assert layering_violations(planted) == [
        "smoothcert.core.planted -> smoothcert.cli.main",
        "smoothcert.training.planted -> smoothcert.evaluation",
        "smoothcert.training.planted -> smoothcert.evaluation.analysis",
    ]


def test_no_import_cycles():
    assert cycles(_modules()) == []


def test_cycle_check_catches_a_planted_cycle():
    planted = {
        "smoothcert.io.a": ast.parse("from smoothcert.models import b\n"),
        "smoothcert.models.b": ast.parse("def f():\n    from smoothcert.io import a\n"),
    }
    planted["smoothcert.io"] = ast.parse("")
    planted["smoothcert.models"] = ast.parse("")
    global _ALL
    saved, _ALL = _ALL, _ALL | set(planted)
    try:
        assert cycles(planted) != []
    finally:
        _ALL = saved


def test_no_module_runs_far_past_500_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


@pytest.mark.parametrize(
    "module", ["smoothcert.runs.certify", "smoothcert.runs.attack", "smoothcert.evaluation.attacks"]
)
def test_certification_and_attacks_do_not_import_training(module):
    loaded = _imported_after(f"import {module}")
    assert module in loaded and not any(m.startswith("smoothcert.training") for m in loaded)


def test_core_and_analysis_do_not_import_torch():
    code = "import sys, smoothcert.core.stats, smoothcert.core.radii, smoothcert.core.sequential, smoothcert.evaluation.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "False"


def test_attacks_do_not_import_analysis():
    assert not any(
        "evaluation.logs" in m or "analysis" in m for m in _imported_after("import smoothcert.evaluation.attacks")
    )


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("smoothcert")):
                offenders += [
                    f"{name}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__") and a.name != "_legacy"
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
    assert homes == {"smoothcert.io.logs"}, found
    # one reader: only io.logs splits TSV lines on tabs
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
    assert set(splitters) == {"smoothcert.io.logs"}, splitters


def test_old_module_paths_still_import():
    out = subprocess.run(
        [
            sys.executable,
            "-W",
            "error::DeprecationWarning",
            "-c",
            "from smoothcert import stats; import smoothcert.compat; "
            "from smoothcert.compat import Smooth; import smoothcert.core.stats as s; print(stats is s)",
        ],
        capture_output=True,
        text=True,
        cwd=PACKAGE.parent,
    )
    assert out.stdout.strip() == "True", out.stderr
    old = subprocess.run(
        [
            sys.executable,
            "-c",
            "import warnings; warnings.simplefilter('always'); import smoothcert.analysis as a; "
            "import smoothcert.evaluation.analysis as b; print(a is b)",
        ],
        capture_output=True,
        text=True,
        cwd=PACKAGE.parent,
    )
    assert old.stdout.strip() == "True" and "moved to smoothcert.evaluation.analysis" in old.stderr


def test_model_file_functions_of_the_old_models_module_name_their_new_home():
    import smoothcert.models as models

    with pytest.raises(AttributeError, match=r"moved to smoothcert\.io\.checkpoints"):
        models.load_model  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):  # control: an unknown name
        models.nothing  # noqa: B018
