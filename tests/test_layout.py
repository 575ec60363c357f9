"""The package's shape: no import cycle between pdae_core's modules, no oversized module.

The import graph is read from the source (every ``import`` statement, those inside
functions and under ``if TYPE_CHECKING:`` included), so a cycle hidden in a lazy or
annotation-only import is found too. Run ``python tests/test_layout.py`` to print the graph's
size and any cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pdae_core"
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The pdae_core modules that module ``name`` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
            out.update(t for t in targets if t in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                if sub in known:  # `from package import module`
                    out.add(sub)
                elif mod in known:
                    out.add(mod)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_checker_reads_relative_and_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "from typing import TYPE_CHECKING\nfrom .x import y\nif TYPE_CHECKING:\n    from .z import w\n"
        "def f():\n    from ..top import k\n    from . import sib\n"
    )
    known = {"pdae_core.sub.x", "pdae_core.sub.z", "pdae_core.top", "pdae_core.sub.sib", "pdae_core.sub"}
    found = imports_of("pdae_core.sub.m", f, known)
    assert found == {"pdae_core.sub.x", "pdae_core.sub.z", "pdae_core.top", "pdae_core.sub.sib"}


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30
    found = cycles(graph)
    assert not found, "import cycles between pdae_core modules:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_module_imports_the_top_level_package():
    graph = import_graph()
    bad = sorted(name for name, deps in graph.items() if "pdae_core" in deps and name != "pdae_core")
    assert not bad, f"these modules import the top-level package (import from the defining module): {bad}"


def test_every_module_is_short():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_public_name_resolves():
    import pdae_core as pc

    for name in pc.__all__:
        assert getattr(pc, name) is not None, name
    assert set(pc.__all__) <= set(dir(pc))
    with __import__("pytest").raises(AttributeError, match="no attribute 'nope'"):
        pc.nope  # noqa: B018


if __name__ == "__main__":
    g = import_graph()
    print(f"{len(g)} modules, {sum(map(len, g.values()))} import edges")
    for c in cycles(g):
        print("cycle:", " <-> ".join(c))
    for name, path in modules().items():
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            print(f"{name}: {n} lines")
