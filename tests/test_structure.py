"""The package's structure: imports point one way and form no cycle, and every docstring
example runs.

Imports are read from the source (``ast``), so a cycle is caught even where the order of
imports happens to make it work today.
"""

import ast
import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import pyrofail

ROOT = Path(__file__).resolve().parents[1]
# installed package -> folder of the repository (setup.cfg's package_dir)
FOLDERS = {"pyrofail.models": "models", "pyrofail.guides": "guides", "pyrofail.analysis": "analysis"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.glob("pyrofail/**/*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = (package, *path.relative_to(ROOT / folder).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path, name: str) -> set[str]:
    """The pyrofail modules ``name`` imports at its top level (not inside functions)."""
    tree = ast.parse(path.read_text())
    found = set()
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else f"{package}.{node.module}"
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    # a package's own ancestors are imported before it anyway: not a dependency
    return {m for m in found if m in MODULES and m != name and not name.startswith(m + ".")}


GRAPH = {name: _imports(path, name) for name, path in MODULES.items()}


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in GRAPH[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in GRAPH:
        if name not in state:
            visit(name, [name])


def _reaches(start: str, prefix: str) -> list[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return sorted(m for m in seen if m.startswith(prefix))


@pytest.mark.parametrize(
    "name",
    [
        m
        for m in MODULES
        if m.startswith("pyrofail") and not m.startswith(("pyrofail.stages", "pyrofail.analy"))
    ],
)
def test_the_core_does_not_import_the_analysis(name):
    assert not _reaches(name, "pyrofail.analysis"), name


def test_models_and_guides_know_nothing_of_each_other():
    for name in MODULES:
        if name.startswith("pyrofail.models"):
            assert not _reaches(name, "pyrofail.guides"), name
        if name.startswith("pyrofail.guides"):
            assert not _reaches(name, "pyrofail.models"), name


def _all_modules():
    yield pyrofail.__name__
    for info in pkgutil.walk_packages(pyrofail.__path__, "pyrofail."):
        yield info.name


@pytest.mark.parametrize("name", sorted(_all_modules()))
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
