"""The library's imports point down its layers: no cycles, counting imports inside functions too.

``compress.runtimes`` is the ``runtimes/`` directory (installed under that name). A cycle hides easily in
a function-level import; this walks every ``import`` statement of every module, wherever it sits.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    mods = {}
    for base, pkg in ((ROOT / "compress", "compress"), (ROOT / "runtimes", "compress.runtimes")):
        for f in sorted(base.rglob("*.py")):
            if "bundle_template" in f.parts:  # shipped to the device: imports nothing of edgecompress
                continue
            rel = f.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The internal module an imported name belongs to (``compress.x.y`` may name ``y`` inside ``x``)."""
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            for n in names:
                target = _resolve(n, mods)
                # a package's own __init__ re-exporting its submodules, and a module naming itself, are not edges
                if target and target != mod and not (target.startswith(mod + ".") and path.name == "__init__.py"):
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_function_level_imports():
    g = import_graph()
    assert "compress.validation.common" in g["compress.validation.remote"]  # imported inside a function
    assert "compress.profiles.budgets" in g["compress.validation.local"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == [], "import cycles (every arrow must point down a layer):\n" + "\n".join(
        " <-> ".join(c) for c in found)
