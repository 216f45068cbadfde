"""The package's imports go one way, down the layers of DESIGN.md, and nowhere round in a circle.

    cli -> commands -> train -> run -> config -> (methods, evaluate) -> (nn, losses) -> (data, distributed)

Every ``import`` and ``from ... import`` of ``src/selfsup`` is read with ``ast``, those inside functions
included (a lazy import is still a dependency). A module may import its own layer or any layer below;
the package's ``__init__`` (the Python API) may import anything. Circles are looked for between modules,
within a folder as much as across folders.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "selfsup"
LAYERS = [
    {"cli"}, {"commands"}, {"train"}, {"run"}, {"config"}, {"methods", "evaluate"}, {"nn", "losses"},
    {"data", "distributed"},
]
RANK = {part: depth for depth, parts in enumerate(LAYERS) for part in parts}
MAX_LINES = 400


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(path, package): path for path in package.rglob("*.py")}


def imported(path: Path, known: dict[str, Path], package_dir: Path = PACKAGE) -> set[str]:
    """The selfsup modules ``path`` imports (``from a import b`` names module a.b when that is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path, package_dir)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {name for name in found if name in known and name != here}


def layer(name: str) -> str | None:
    """The first folder (or top-level module) under selfsup; None for the package itself."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    known = modules(package)
    return {name: imported(path, known, package) for name, path in known.items()}


def test_every_folder_and_top_level_module_has_a_layer():
    assert {layer(name) for name in modules()} - {None} == set(RANK)


def test_imports_go_only_down_the_layers():
    upward = [
        f"{source} imports {target}"
        for source, targets in graph().items() if layer(source) is not None
        for target in targets if layer(target) is None or RANK[layer(target)] < RANK[layer(source)]
    ]
    assert not upward, upward


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not circles, circles


def test_the_checker_sees_an_upward_import_and_a_circle(tmp_path):
    """The walk itself: a lazy upward import inside a function and a two-module circle are both found."""
    fake = tmp_path / "selfsup"
    for folder in ("data", "train"):
        (fake / folder).mkdir(parents=True)
        (fake / folder / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "data" / "a.py").write_text("def f():\n    from selfsup.train import b\n")
    (fake / "data" / "c.py").write_text("from . import d\n")
    (fake / "data" / "d.py").write_text("from selfsup.data.c import x\n")
    (fake / "train" / "b.py").write_text("")
    edges = graph(fake)
    assert "selfsup.train.b" in edges["selfsup.data.a"]
    assert "selfsup.data.d" in edges["selfsup.data.c"] and "selfsup.data.c" in edges["selfsup.data.d"]


def test_no_module_over_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_every_folder_says_what_lives_there():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        first = doc.split("\n\n")[0]
        assert first.endswith(".") and len(first.splitlines()) == 1, (init, first)
