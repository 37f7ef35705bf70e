"""The import rules of ``docs/architecture.md``: every module imports on its own, ``status`` never pulls in
the heavy libraries, and the module-level imports of ``torchbearer`` form no cycle."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import torchbearer

PACKAGE = Path(torchbearer.__file__).resolve().parent
#: What ``status`` must never load: each costs seconds at import, and ``status`` answers in a blink.
HEAVY = ("torch", "rasterio", "lightning", "torchgeo")
#: What ``torchbearer status`` imports: the CLI, the store, the commands, the settings and the job-file models.
STATUS_MODULES = ("torchbearer.cli", "torchbearer.store", "torchbearer.commands", "torchbearer.settings",
                  "torchbearer.spec")  # fmt: skip
#: Modules that run something when imported: not imported here.
RUNS_ON_IMPORT = {"torchbearer.__main__"}
#: Imports (inside functions) tolerated although they close a cycle: none. The test drops these edges and
#: requires no cycle; an entry whose import is gone from the code fails the test until it is deleted here.
KNOWN_BACK_EDGES: set[tuple[str, str]] = set()


def module_names() -> list[str]:
    """Every module of the package, by dotted name (packages as their ``__init__``)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _module_path(name: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(body: list[ast.stmt], *, deferred: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module: those run at import (module level, inside ``if``/``try``/``with`` and
    class bodies), and with ``deferred`` those inside functions too; never ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                found += _imports(node.body, deferred=deferred)
            found += _imports(node.orelse, deferred=deferred)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not deferred:
            continue
        else:  # try, with, class and function bodies, loops
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, ()):
                    found += _imports(child.body if isinstance(child, ast.ExceptHandler) else [child],
                                      deferred=deferred)  # fmt: skip
    return found


def import_graph(*, deferred: bool = False) -> dict[str, set[str]]:
    """``{module: the torchbearer modules it imports}``: at module level, or with ``deferred`` anywhere (an
    import inside a function still ties the two modules together: a cycle of those is a knot of concepts).

    ``from torchbearer.a import b`` counts as an import of the module ``torchbearer.a.b`` when there is one, else
    of ``torchbearer.a``; parent packages are not added (Python imports a sibling of a package that is still
    initialising without trouble).
    """
    graph: dict[str, set[str]] = {}
    for name in module_names():
        path = _module_path(name)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges: set[str] = set()
        for node in _imports(tree.body, deferred=deferred):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name.startswith("torchbearer")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                if not base.startswith("torchbearer"):
                    continue
                for alias in node.names:
                    edges.add(f"{base}.{alias.name}" if _module_path(f"{base}.{alias.name}") else base)
        graph[name] = {edge for edge in edges if edge != name and _module_path(edge)}
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == {frozenset({"a", "b", "c"})}
    assert cycles({"a": {"b"}, "b": set()}) == set()


def test_module_level_imports_have_no_cycles():
    graph = import_graph()
    assert "torchbearer.store" in graph["torchbearer.cli"]  # the graph is read at all
    assert "torchbearer.ml.models" not in graph["torchbearer.ml.checkpoint"]  # imported inside a function
    found = cycles(graph)
    assert not found, f"import cycles at module level: {[sorted(c) for c in found]}"


def test_no_cycles_even_through_imports_inside_functions():
    graph = import_graph(deferred=True)
    assert "torchbearer.ml.domains" in graph["torchbearer.ml.checkpoint"]  # imports inside functions are read
    gone = {(a, b) for a, b in KNOWN_BACK_EDGES if b not in graph[a]}
    assert not gone, f"these imports are gone: delete them from KNOWN_BACK_EDGES: {sorted(gone)}"
    for importer, imported in KNOWN_BACK_EDGES:
        graph[importer].discard(imported)
    found = cycles(graph)
    assert not found, f"import cycles: {[sorted(c) for c in found]}; import the shared part from a third module"


#: Run in a fresh interpreter: ``status`` on an empty project, then every module imported with every other
#: torchbearer module forgotten first (the heavy third-party ones stay loaded: each module is imported alone
#: as far as the package goes, and the loop stays fast).
SCRIPT = """
import importlib, json, sys, traceback
from typer.testing import CliRunner
heavy, status_modules, modules = json.loads(sys.argv[1])
for name in status_modules:
    importlib.import_module(name)
from torchbearer.cli import app
result = CliRunner().invoke(app, ["--project", sys.argv[2], "status"])
report = {"status_exit": result.exit_code, "status_output": result.output,
          "status_heavy": sorted(m for m in sys.modules if m.split(".")[0] in heavy), "failed": {}}
for name in modules:
    for loaded in [m for m in sys.modules if m == "torchbearer" or m.startswith("torchbearer.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        report["failed"][name] = traceback.format_exc(limit=-3)
print(json.dumps(report))
"""


def test_each_module_imports_alone_and_status_stays_light(tmp_path):
    modules = [name for name in module_names() if name not in RUNS_ON_IMPORT]
    env = {**os.environ, "TORCHBEARER_ENV_FILE": str(tmp_path / "none.env")}
    env = {key: value for key, value in env.items() if not key.startswith("TORCHBEARER_") or key.endswith("ENV_FILE")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps([HEAVY, STATUS_MODULES, modules]), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status_exit"] == 0, report["status_output"]
    assert not report["status_heavy"], f"status pulled in {report['status_heavy']}"
    assert not report["failed"], "\n".join(f"{name}:\n{error}" for name, error in report["failed"].items())
