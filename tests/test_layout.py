"""The package layout's rules, read from the source with ast.

- No import cycle between sipsuite's modules.  An import under
  ``if TYPE_CHECKING:`` does not count (it never runs); one inside a function
  does (it runs, only later, and still ties the two modules together).
- sipsuite.sip is sans-IO and the bottom layer: it imports neither Twisted nor
  any other sipsuite package.
- The examples use only the public APIs (``sipsuite.proxy``, ``sipsuite.api``,
  ``sipsuite.embed``) and
  sipsuite.sip, so that what they show is what users may rely on.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sipsuite"

#: Cycles tolerated, each as the sorted list of its modules: none (the last,
#: sip.message re-exporting the parser that builds its classes, went with
#: issue 13).  A new cycle is a failure, not an entry here.
KNOWN_CYCLES: list[list[str]] = []


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, except the bodies of ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for other in node.orelse:
                yield other
                yield from _nodes(other)
            continue
        yield node
        yield from _nodes(node)


def imported_names(path: Path, name: str) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of each import that runs, relative ones resolved;
    ``from pkg import x`` yields ``pkg.x`` (x may be a module) and ``pkg``."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in _nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, node.lineno
            for alias in node.names:
                yield f"{module}.{alias.name}", node.lineno


def graph() -> dict[str, dict[str, int]]:
    """module -> {sipsuite module it imports: line of the first such import}."""
    modules = all_modules()
    edges: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        out: dict[str, int] = {}
        for target, line in imported_names(path, name):
            if target in modules and target != name:
                out.setdefault(target, line)
        edges[name] = out
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def a_cycle(edges: dict[str, dict[str, int]], component: list[str]) -> str:
    """One concrete loop through *component*, with the lines that make it."""
    members = set(component)
    start = component[0]
    path = [start]
    seen = {start}
    while True:
        here = path[-1]
        nxt = next((w for w in sorted(edges[here]) if w in members and w == start and len(path) > 1),
                   None) or next((w for w in sorted(edges[here]) if w in members and w not in seen),
                                 None)
        if nxt is None or nxt == start:
            break
        path.append(nxt)
        seen.add(nxt)
    path.append(start)
    return " -> ".join(
        f"{a} (line {edges[a].get(b, '?')})" for a, b in zip(path, path[1:], strict=False)
    ) + f" -> {start}"


def test_no_import_cycles() -> None:
    edges = graph()
    new = [c for c in cycles(edges) if c not in KNOWN_CYCLES]
    assert not new, "import cycles:\n" + "\n".join(a_cycle(edges, c) for c in new)


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert a_cycle(edges, ["a", "b", "c"]).startswith("a (line 1) -> b (line 2) -> c (line 3)")


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\n"
                      "def f():\n    import y\n")
    assert {n for n, _ in imported_names(source, "m")} == {"typing", "typing.TYPE_CHECKING", "y"}


def test_sip_is_sans_io_and_the_bottom_layer() -> None:
    bad = []
    for name, path in all_modules().items():
        if name != "sipsuite.sip" and not name.startswith("sipsuite.sip."):
            continue
        for target, line in imported_names(path, name):
            top = target.split(".")
            if top[0] == "twisted" or (
                top[0] == "sipsuite" and len(top) > 1 and top[1] != "sip"
            ):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {target}")
    assert not bad, "\n".join(bad)


def test_examples_use_the_public_api() -> None:
    # The user services' examples use their public handle (sipsuite.api).
    allowed = ("sipsuite.proxy", "sipsuite.sip", "sipsuite.api", "sipsuite.embed")
    bad = []
    examples = sorted([*(ROOT / "examples").glob("*.py"), *(ROOT / "examples").glob("*/*.py"),
                       *(ROOT / "examples").glob("*.tac")])
    assert examples
    for path in examples:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for target in names:
                if target.split(".")[0] != "sipsuite":
                    continue
                if target not in allowed and not target.startswith("sipsuite.sip."):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {target}")
    assert not bad, "\n".join(bad)


#: What the core (sipsuite.proxy.core) must never import at run time: the
#: features, which plug into it through proxy/api.py's hooks, and the
#: management layer above it.  Type-only imports do not count.
FORBIDDEN_FOR_CORE = ("sipsuite.proxy.modules", "sipsuite.proxy.media", "sipsuite.proxy.registrar",
                      "sipsuite.ops")


def core_violations(edges: dict[str, dict[str, int]]) -> list[str]:
    return [f"{name} (line {line}) imports {target}"
            for name, targets in sorted(edges.items())
            if name == "sipsuite.proxy.core" or name.startswith("sipsuite.proxy.core.")
            for target, line in sorted(targets.items())
            if any(target == pkg or target.startswith(pkg + ".") for pkg in FORBIDDEN_FOR_CORE)]


def test_core_imports_no_feature_module() -> None:
    bad = core_violations(graph())
    assert bad == [], "the core imports a feature or the management layer:\n" + "\n".join(bad)


def test_the_core_check_finds_a_feature_import() -> None:
    edges = {"sipsuite.proxy.core.proxy": {"sipsuite.proxy.modules.auth": 30,
                                           "sipsuite.proxy.api": 12},
             "sipsuite.proxy.core.stats": {"sipsuite.ops.errors": 5},
             "sipsuite.proxy.modules.auth": {"sipsuite.proxy.core.hooks": 3}}
    assert core_violations(edges) == [
        "sipsuite.proxy.core.proxy (line 30) imports sipsuite.proxy.modules.auth",
        "sipsuite.proxy.core.stats (line 5) imports sipsuite.ops.errors"]
