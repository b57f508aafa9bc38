"""The library's imports point down its layers: no import up them, no cycle, no private name across packages.

The layers are the numbered list under docs/reference/architecture.md's "Layers", read from there (one place): each item
names its packages and modules in backticks (``stages``, ``_optional``; ``compress`` alone is the package's own
``__init__.py``). A module may import from its own layer and the layers below; import-linter's ``layers`` contract,
with the order kept in the docs and imports inside functions counted. ``compress.runtimes`` is the ``runtimes/``
directory (installed under that name).

A cycle hides easily in a function-level import; this walks every ``import`` statement of every module, wherever
it sits. A package's ``__init__.py`` importing its submodules is an edge like any other: legal alone, a cycle when
the submodule imports the package's ``__init__.py`` back.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ROOTS = ((ROOT / "compress", "compress"), (ROOT / "runtimes", "compress.runtimes"))
ARCHITECTURE = ROOT / "docs" / "reference" / "architecture.md"


def _modules(roots=ROOTS) -> dict[str, Path]:
    mods = {}
    for base, pkg in roots:
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


def _package(mod: str, mods: dict[str, Path]) -> str:
    """The package a module belongs to: a package's ``__init__`` belongs to the package itself."""
    return mod if mods[mod].name == "__init__.py" else mod.rpartition(".")[0]


def _imports(mod: str, mods: dict[str, Path]):
    """``(imported module, the names taken from it or None)`` for every import statement of ``mod``.

    ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one, else the name ``sub`` of ``pkg``."""
    package = _package(mod, mods)
    for node in ast.walk(ast.parse(mods[mod].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield _resolve(a.name, mods), None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                yield (sub, None) if sub in mods else (_resolve(base, mods), a.name)


def import_graph(roots=ROOTS) -> dict[str, set[str]]:
    mods = _modules(roots)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod in mods:
        graph[mod] |= {target for target, _ in _imports(mod, mods) if target and target != mod}
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


# --- the layers -------------------------------------------------------------------------------------------


def layers(page: Path = ARCHITECTURE) -> list[tuple[str, list[str]]]:
    """The numbered list under the page's "## Layers", bottom first: ``(the item's text, the modules it names)``.
    A backticked name is a module or package under ``compress`` (``runtimes``: ``compress.runtimes``; ``compress``:
    the package's own ``__init__.py``); backticked paths and file names (``runtimes/host.py``) are prose."""
    text = page.read_text(encoding="utf-8")
    section = text[text.index("\n## Layers"):]
    section = section[: section.find("\n## ", 1) if "\n## " in section[1:] else len(section)]
    items = re.findall(r"^\d+\.\s+(.*?)(?=^\d+\.\s|^\s*$)", section, flags=re.M | re.S)
    out = []
    for item in items:
        names = [n for n in re.findall(r"`([^`]+)`", item) if re.fullmatch(r"[A-Za-z_]\w*", n)]
        out.append((" ".join(item.split()), [n if n == "compress" else f"compress.{n}" for n in names]))
    return out


def layer_of(mod: str, order: list[tuple[str, list[str]]]) -> int | None:
    """The index of the layer that names ``mod`` (the longest name that is ``mod`` or a package above it)."""
    best: tuple[int, int] | None = None
    for i, (_, names) in enumerate(order):
        for name in names:
            if mod == name or (name != "compress" and mod.startswith(name + ".")):
                if best is None or len(name) > best[1]:
                    best = (i, len(name))
    return best[0] if best else None


def upward_imports(graph: dict[str, set[str]], order: list[tuple[str, list[str]]]) -> list[str]:
    found = []
    for mod, targets in sorted(graph.items()):
        here = layer_of(mod, order)
        for target in sorted(targets):
            there = layer_of(target, order)
            if here is not None and there is not None and there > here:
                found.append(f"{mod} (layer {here + 1}) imports {target} (layer {there + 1})")
    return found


def private_imports(roots=ROOTS) -> list[str]:
    """``from X import _name`` where ``X`` is a module of another package than the importing module's."""
    mods = _modules(roots)
    found = []
    for mod in mods:
        for target, name in _imports(mod, mods):
            if target and name and name.startswith("_") and not name.startswith("__") \
                    and _package(target, mods) != _package(mod, mods):
                found.append(f"{mod} imports {target}.{name}")
    return sorted(set(found))


def test_the_layers_are_read_from_the_docs():
    order = layers()
    assert len(order) >= 5, order
    mods = _modules()
    named = [n for _, names in order for n in names]
    unknown = [n for n in named if n not in mods]
    assert not unknown, f"docs/reference/architecture.md's Layers name what is no module or package: {unknown}"
    twice = sorted({n for n in named if named.count(n) > 1})
    assert not twice, f"docs/reference/architecture.md's Layers name these in more than one layer: {twice}"
    homeless = [m for m in mods if layer_of(m, order) is None]
    assert not homeless, f"modules in no layer of docs/reference/architecture.md's Layers: {homeless}"


def test_the_walker_sees_function_level_imports():
    g = import_graph()
    assert "compress.validation.common" in g["compress.validation.remote"]  # imported inside a function
    assert "compress.profiles.budgets" in g["compress.validation.estimated"]


def test_no_import_points_up_the_layers():
    found = upward_imports(import_graph(), layers())
    assert found == [], "imports that point up docs/reference/architecture.md's Layers:\n" + "\n".join(found)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == [], "import cycles (every arrow must point down a layer):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_no_private_name_is_imported_across_packages():
    found = private_imports()
    assert found == [], "private names imported from another package (move them down into a leaf, public):\n" + \
        "\n".join(found)


def test_a_submodule_importing_its_package_back_is_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.sub import g\n\n\ndef f():\n    from pkg.other import h\n")
    (pkg / "sub.py").write_text("from pkg import common\n")
    (pkg / "common.py").write_text("")
    (pkg / "other.py").write_text("def h():\n    from pkg import f\n")
    graph = import_graph(((pkg, "pkg"),))
    assert graph["pkg"] == {"pkg.sub", "pkg.other"}  # a package re-exporting its submodules: edges, no cycle alone
    assert graph["pkg.sub"] == {"pkg.common"}  # `from pkg import common` imports the submodule, not the package
    assert cycles(graph) == [["pkg", "pkg.other"]]  # the submodule imports its package back: a cycle


def test_an_upward_import_is_named(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# A\n\n## Layers\n\n1. the leaves: `errors`;\n2. `stages`, which\n   wraps;\n\nMore prose.\n")
    order = layers(page)
    assert order == [("the leaves: `errors`;", ["compress.errors"]), ("`stages`, which wraps;", ["compress.stages"])]
    graph = {"compress.errors": {"compress.stages.spec"}, "compress.stages.spec": {"compress.errors"}}
    assert upward_imports(graph, order) == ["compress.errors (layer 1) imports compress.stages.spec (layer 2)"]
