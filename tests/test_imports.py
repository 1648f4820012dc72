"""No import cycles in ``pipeline`` or ``launch``: a static check over every import statement, the
ones inside functions included (a lazy import that closes a circle is still a circle)."""

from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules(root: str, package: str) -> dict[str, str]:
    """Dotted module name -> file, for every .py file under ``root/package``."""
    out = {}
    for dirpath, _, names in os.walk(os.path.join(root, package)):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def _imports(module: str, path: str, known: dict[str, str]) -> set[str]:
    """The known modules ``module`` imports (``from a.b import c``: a.b.c when it is a module, else a.b)."""

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found: set[str | None] = set()
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(owner(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                found.add(full if full in known else owner(base))
    return {m for m in found if m and m != module}


def import_cycles(root: str, packages: tuple[str, ...]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    known: dict[str, str] = {}
    for package in packages:
        known.update(_modules(root, package))
    edges = {m: _imports(m, p, known) for m, p in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(known):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    assert import_cycles(REPO, ("pipeline", "launch")) == []


def test_a_lazy_circle_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n    return g\n")
    (pkg / "c.py").write_text("def g():\n    from pkg import a\n    return a\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    assert import_cycles(str(tmp_path), ("pkg",)) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
