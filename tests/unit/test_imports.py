"""The package's import graph: no cycles, and lxdmig-helper without the move stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "lxdmig"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """lxdmig modules ``path`` imports anywhere (also in functions and under TYPE_CHECKING: a cycle
    hidden behind a lazy import is still a cycle in the design)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in modules}
    return found


def graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    # (A package's __init__ importing its own submodules is not a cycle worth naming.)
    return {m: {i for i in _imports(p, modules) if i != m and not i.startswith(m + ".")} for m, p in paths.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_the_checker_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_helper_does_not_import_the_move_stack() -> None:
    code = ("import sys, lxdmig.helper.cli, lxdmig.helper.server; "
            "print(' '.join(m for m in sys.modules if m.startswith(('lxdmig.migrate', 'lxdmig.cli'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.split()
    assert out == []


def test_the_package_does_not_import_the_test_bed() -> None:
    """The test bed is not installed (F12): a host's lxdmig must run without it."""
    testbed = {_module_name(p) for p in (PACKAGE.parent / "testbed").rglob("*.py")}
    assert "testbed.containers" in testbed
    for path in PACKAGE.rglob("*.py"):
        assert not _imports(path, testbed), path
