"""The engine's import graph as a house (issue 26): rooms, arrows, floors, cycles and imports hidden in functions.

    .venv/bin/python scripts/import_graph.py [--root HCCTwin/HCCTwinLib] [--json]

Rooms are the package's top-level modules and sub-packages (``HCCTwinLib.pipeline``, ``HCCTwinLib.survival``, ...);
an arrow is "room A imports something of room B" (top-level or inside a function). Floors come from the
condensation of the graph (a cycle is one block): floor 0 imports no other room, every other room sits one floor
above the highest room it imports. An upward arrow is one inside a cycle (it points to a room that also imports,
directly or not, its origin). Read in docs/architecture.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        name = ".".join((root.name, *p.relative_to(root).with_suffix("").parts))
        out[name.removesuffix(".__init__")] = p
    return out


def imports(root: Path) -> tuple[dict[str, set[str]], int, int]:
    """Module-level arrows ``{module: {imported modules}}``, and the counts of top-level / in-function imports."""
    mods = modules(root)
    edges: dict[str, set[str]] = {}
    top = nested = 0
    for m, p in mods.items():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found = [c for c in [target] + [f"{target}.{a.name}" for a in node.names] if c in mods and c != m]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names if a.name in mods and a.name != m]
            else:
                continue
            if not found:
                continue
            edges.setdefault(m, set()).update(found)
            up, inside = node, False
            while up in parents:
                up = parents[up]
                if isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    inside = True
                    break
            nested += inside
            top += not inside
    return edges, top, nested


def room(module: str) -> str:
    return ".".join(module.split(".")[:2])


def house(root: Path) -> dict:
    edges, top, nested = imports(root)
    rooms: dict[str, set[str]] = {room(m): set() for m in modules(root)}
    for a, bs in edges.items():
        for b in bs:
            if room(a) != room(b):
                rooms[room(a)].add(room(b))
    # strongly connected components (Tarjan)
    sys.setrecursionlimit(10000)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comp_of: dict[str, int] = {}
    comps: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in rooms[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                comp_of[w] = len(comps)
                if w == v:
                    break
            comps.append(sorted(comp))

    for v in sorted(rooms):
        if v not in index:
            strong(v)
    floor: dict[int, int] = {}
    for c in range(len(comps)):  # Tarjan emits components in reverse topological order: dependencies first
        below = {comp_of[w] for v in comps[c] for w in rooms[v]} - {c}
        floor[c] = 1 + max((floor[b] for b in below), default=-1)
    arrows = sum(len(bs) for bs in rooms.values())
    upward = sorted(f"{a} -> {b}" for a, bs in rooms.items() for b in bs if comp_of[a] == comp_of[b])
    return {"rooms": len(rooms), "arrows": arrows, "floors": 1 + max(floor.values()),
            "cycles": [c for c in comps if len(c) > 1], "upward_arrows": upward,
            "imports_in_functions_share": round(nested / max(top + nested, 1), 3),
            "floor_of": {v: floor[comp_of[v]] for v in sorted(rooms)},
            "arrows_of": {v: sorted(rooms[v]) for v in sorted(rooms)}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1] / "HCCTwin" / "HCCTwinLib"))
    ap.add_argument("--json", action="store_true", help="the whole graph as JSON")
    args = ap.parse_args(argv)
    h = house(Path(args.root))
    if args.json:
        print(json.dumps(h, indent=2))
        return 0
    print(f"{h['rooms']} rooms on {h['floors']} floors, {h['arrows']} arrows, {len(h['upward_arrows'])} upward, "
          f"{len(h['cycles'])} cycles; {100 * h['imports_in_functions_share']:.0f}% of the imports inside functions")
    for c in h["cycles"]:
        print("cycle:", " <-> ".join(c))
    by_floor: dict[int, list[str]] = {}
    for v, f in h["floor_of"].items():
        by_floor.setdefault(f, []).append(v.split(".", 1)[-1])
    for f in sorted(by_floor, reverse=True):
        print(f"floor {f}: {', '.join(sorted(by_floor[f]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
