"""The package's layers hold: no import circle, and no module imports from a floor above its own.

Imports are read with ``ast`` (function-level imports included: a lazy import is still a dependency; so is
``__import__`` / ``importlib.import_module`` of a name written in the source). Importing a
submodule runs its parent packages' ``__init__``, so an import of ``pkg.sub`` is also an edge to ``pkg`` when that
package is not an ancestor of the importer. ``FLOORS`` is the declared layout, lowest first; a module may import
modules of its own floor or below. The checker is run on planted graphs too, so it is shown to catch what it claims.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "focus_surgery"

# Longest matching prefix wins. 0: imports nothing of the package but errors; 1: the loader; 2: the core maths and
# I/O primitives; 3: checkpoint files; 4: module surgery; 5: what builds on it (families, graphs, speed);
# 6: framework integrations; 7: checkpoint sources; 8: the pipeline; 9: the folder runner and the benchmark (which
# times the pipeline); 10: command line and API.
FLOORS = {
    "focus_surgery.errors": 0,
    "focus_surgery._version": 0,
    "focus_surgery.orders": 0,
    "focus_surgery.limits": 0,
    "focus_surgery.model_configs": 0,
    "focus_surgery.import_hooks": 0,
    "focus_surgery.report": 0,
    "focus_surgery.loader": 1,
    "focus_surgery.atomic_io": 2,
    "focus_surgery.remap": 2,
    "focus_surgery.layers": 2,
    "focus_surgery.stems": 2,
    "focus_surgery.verify": 2,
    "focus_surgery.state_dict": 2,
    "focus_surgery.in_chans": 2,
    "focus_surgery.tensor_digest": 2,
    "focus_surgery.parent_death": 2,
    "focus_surgery.checkpoint_io": 3,
    "focus_surgery.surgery": 4,
    "focus_surgery.demo": 5,
    "focus_surgery.speed": 5,
    "focus_surgery.onnx_graph": 5,
    "focus_surgery.yolov5": 5,
    "focus_surgery.integrations": 6,
    "focus_surgery.yolo": 7,
    "focus_surgery.sources": 7,
    "focus_surgery.files": 8,
    "focus_surgery.folder": 9,
    "focus_surgery.speed.bench": 9,  # `focus-surgery bench` times the pipeline itself (files.convert_file)
    "focus_surgery._fork_server_preload": 9,  # the folder runner's fork server preloads it
    "focus_surgery.cli": 10,
    "focus_surgery.__main__": 10,
    "focus_surgery": 10,  # the package's __init__: the public API, above everything it re-exports
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in the file), from the source text alone."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                # `from pkg import sub` imports the module pkg.sub; `from pkg import name` imports pkg
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            elif isinstance(node, ast.Call) and _imported_by_call(node):  # __import__ / importlib.import_module
                text = node.args[0].value
                level = len(text) - len(text.lstrip("."))
                if level:  # import_module(".x", __package__)
                    text = ".".join(package.split(".")[: len(package.split(".")) - level + 1] + [text[level:]])
                targets.append(text.rstrip("."))
        deps = set()
        for target in targets:
            while target and target not in files:
                target = target.rpartition(".")[0]
            while target.startswith(root.name):  # the module and the packages above it that importing it runs
                if target != name and not name.startswith(target + "."):
                    deps.add(target)
                target = target.rpartition(".")[0]
        graph[name] = deps
    return graph


def _imported_by_call(node: ast.Call) -> bool:
    """``__import__("pkg.mod")`` or ``importlib.import_module("pkg.mod")`` with the name written in the source."""
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    first = node.args[0] if node.args else None
    return name in ("__import__", "import_module") and isinstance(first, ast.Constant) and isinstance(first.value, str)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted; sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in graph.get(node, ()):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def floor(module: str, floors: dict[str, int]) -> int:
    """The floor of the longest entry naming ``module`` or a package above it; the top package's own entry names its
    ``__init__`` only, so a new module must be given a floor (it is not silently put on the top one)."""
    matches = (p for p in floors if module == p or ("." in p and module.startswith(p + ".")))
    prefix = max(matches, key=len, default=None)
    if prefix is None:
        raise KeyError(f"{module}: not in the floor table; give it a floor")
    return floors[prefix]


def upward(graph: dict[str, set[str]], floors: dict[str, int]) -> list[str]:
    """Every import from a module to one on a higher floor, as ``a (floor) -> b (floor)``."""
    return sorted(
        f"{a} ({floor(a, floors)}) -> {b} ({floor(b, floors)})"
        for a, deps in graph.items()
        for b in deps
        if floor(b, floors) > floor(a, floors)
    )


def test_package_has_no_import_circle():
    assert cycles(package_imports(PACKAGE)) == []


def test_no_module_imports_from_a_higher_floor():
    graph = package_imports(PACKAGE)
    assert [m for m in graph if m != "focus_surgery"]  # the walk found the package
    assert upward(graph, FLOORS) == []


def test_loader_and_errors_import_nothing_above_them():
    graph = package_imports(PACKAGE)
    for name, deps in graph.items():
        if name.startswith("focus_surgery.loader"):
            assert all(d.startswith("focus_surgery.loader") or d == "focus_surgery.errors" for d in deps), (name, deps)
    assert graph["focus_surgery.errors"] == set() and graph["focus_surgery.report"] <= {"focus_surgery.errors"}


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "focus_surgery"


def test_checker_finds_planted_circle_and_upward_import(tmp_path):
    """A circle made only by a function-level import, one through a package ``__init__``, and an upward import."""
    root = _write(
        tmp_path,
        {
            "focus_surgery/__init__.py": "",
            "focus_surgery/low.py": "def f():\n    from .high import g\n",  # lazy, still a dependency: upward
            "focus_surgery/high.py": "from . import low\n",
            "focus_surgery/pkg/__init__.py": "from .a import x\n",
            "focus_surgery/pkg/a.py": "from ..other import y\n",
            "focus_surgery/other.py": "from .pkg.helpers import z\n",  # runs pkg/__init__ -> pkg.a -> other
            "focus_surgery/pkg/helpers.py": "",
        },
    )
    graph = package_imports(root)
    assert graph["focus_surgery.low"] == {"focus_surgery.high"}
    assert cycles(graph) == [
        ["focus_surgery.high", "focus_surgery.low"],
        ["focus_surgery.other", "focus_surgery.pkg", "focus_surgery.pkg.a"],
    ]
    floors = {
        "focus_surgery": 9,
        "focus_surgery.low": 0,
        "focus_surgery.high": 1,
        "focus_surgery.other": 1,
        "focus_surgery.pkg": 1,
    }
    assert upward(graph, floors) == ["focus_surgery.low (0) -> focus_surgery.high (1)"]
    with pytest.raises(KeyError, match="not in the floor table"):
        upward(graph, {"focus_surgery.low": 0})


def test_checker_passes_a_clean_layout(tmp_path):
    root = _write(
        tmp_path,
        {
            "focus_surgery/__init__.py": "from .top import run\n",
            "focus_surgery/base.py": "import os\n",
            "focus_surgery/top.py": "from .base import os\n\ndef run():\n    import focus_surgery.base\n",
        },
    )
    graph = package_imports(root)
    assert (
        cycles(graph) == []
        and upward(graph, {"focus_surgery": 2, "focus_surgery.base": 0, "focus_surgery.top": 1}) == []
    )
