"""The layering the code is built on (docs/architecture.md): imports point down only,
    seqrec.cli -> {flows, serving} -> tasks -> {models, validation} -> core (the rest of seqrec/),
with no import circles, and the data-version layout read through the catalog alone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("seqrec", "flows", "serving", "tasks", "models", "validation")
CLI = "seqrec.cli"
LAYER = {"flows": 3, "serving": 3, "tasks": 2, "models": 1, "validation": 1, "seqrec": 0}


def _modules() -> dict[str, Path]:
    return {f"{pkg}.{f.stem}": f for pkg in PACKAGES for f in sorted((ROOT / pkg).glob("*.py")) if f.stem != "__init__"}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in the file (function-level and TYPE_CHECKING imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        out |= {n for n in names if n in modules}
    return out


def _layer(module: str) -> int:
    return 4 if module == CLI else LAYER[module.split(".")[0]]


GRAPH = {m: _imports(p, _modules()) - {m} for m, p in _modules().items()}


def test_the_import_graph_has_no_circles():
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for n in sorted(GRAPH[m]):
            if seen.get(n) == 1:
                pytest.fail("import circle: " + " -> ".join([*path[path.index(n):], n]))
            if n not in seen:
                visit(n, [*path, n])
        seen[m] = 2

    for m in sorted(GRAPH):
        if m not in seen:
            visit(m, [m])


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    up = sorted(n for n in GRAPH[module] if _layer(n) > _layer(module))
    assert not up, f"{module} imports {up} from a layer above it"
    if module.startswith(("models.", "validation.")):  # siblings: torch and the data contract stay apart
        other = "validation." if module.startswith("models.") else "models."
        assert not [n for n in GRAPH[module] if n.startswith(other)], f"{module} imports {other[:-1]}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check itself can fail: a models module importing a task is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tasks.train import train\n")
    imported = _imports(bad, _modules())
    assert imported == {"tasks.train"} and _layer("tasks.train") > _layer("models.net")


def test_only_the_catalog_knows_the_data_version_layout():
    readers = [str(p.relative_to(ROOT)) for m, p in _modules().items()
               if m != "seqrec.catalog" and re.search(r"[\"']meta\.json[\"']\s*\)", p.read_text())]
    assert not readers, f"read meta.json outside seqrec.catalog: {readers}"
