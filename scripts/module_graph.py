"""Draw the project's module import graph and report import circles.

    python scripts/module_graph.py                       # cycles (exit 1 if any) + edge count
    python scripts/module_graph.py --dot graph.dot       # Graphviz DOT; `dot -Tpng graph.dot -o graph.png`
    python scripts/module_graph.py --mermaid graph.md    # a Mermaid flowchart (renders on GitHub)

Edges are every static ``import`` / ``from ... import`` in a module, including the lazy ones inside
functions, because a lazy import hides a circle rather than removing it. Packages scanned: edgesam,
pipelines, serve.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("edgesam", "pipelines", "serve")


def discover(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` under ``packages``."""
    mods: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


def _targets(module: str, node: ast.AST, mods: dict[str, Path]) -> set[str]:
    found: set[str] = set()
    if isinstance(node, ast.Import):
        found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            if mods[module].name != "__init__.py":
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        found.add(target)
        found.update(f"{target}.{a.name}" for a in node.names)
    # the deepest known module for each name ("a.b.func" -> "a.b")
    out = set()
    for name in found:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name and name != module and not module.startswith(name + "."):
            out.add(name)
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: modules it imports}`` within the scanned packages (package ``__init__`` parents excluded)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= _targets(module, node, mods)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def to_dot(graph: dict[str, set[str]]) -> str:
    lines = ["digraph modules {", "  rankdir=LR; node [shape=box, fontsize=10];"]
    lines += [f'  "{a}" -> "{b}";' for a in sorted(graph) for b in sorted(graph[a])]
    return "\n".join(lines + ["}"]) + "\n"


def to_mermaid(graph: dict[str, set[str]]) -> str:
    ids = {m: f"m{i}" for i, m in enumerate(sorted(graph))}
    lines = ["```mermaid", "flowchart LR"]
    lines += [f"  {ids[m]}[{m}]" for m in sorted(graph)]
    lines += [f"  {ids[a]} --> {ids[b]}" for a in sorted(graph) for b in sorted(graph[a])]
    return "\n".join(lines + ["```"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dot", type=Path, help="write Graphviz DOT here")
    parser.add_argument("--mermaid", type=Path, help="write a Mermaid flowchart here")
    args = parser.parse_args(argv)
    graph = import_graph(discover())
    if args.dot:
        args.dot.write_text(to_dot(graph))
    if args.mermaid:
        args.mermaid.write_text(to_mermaid(graph))
    found = cycles(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} import edges, {len(found)} import circles")
    for comp in found:
        print("  circle: " + " <-> ".join(comp))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
