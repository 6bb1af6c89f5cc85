"""Imports point one way: each mokit module imports only modules of a lower layer (or its own
subpackage), and no module reaches into another's private names.

`python tests/test_layers.py` prints the graph, layer by layer.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mokit"

# Bottom to top. A module may import modules of lower layers only, never one of its own layer.
LAYERS = [
    ["validate", "files"],
    ["data"],
    ["models"],
    ["train"],
    ["zoo", "metrics"],
    ["prune", "quantize", "distill", "ensemble"],
    ["lowrank", "latency", "llm_compress"],   # factorises prune.prunable_layers; a per-layer latency table;
                                              # GPTQ, AWQ, SmoothQuant, SparseGPT on one weight at a time
    ["search"],
    ["nas", "bench", "supernet", "autocompress"],   # supernet: one-shot NAS over a mokit.search space
    ["procs", "runtime"],
    ["parallel", "export"],
    ["serve"],
    ["results", "plot", "widgets"],
    ["check", "report"],
    ["student", "course"],
    ["workshop", "classroom"],
]
RANK = {m: i for i, layer in enumerate(LAYERS) for m in layer}


def modules() -> dict[str, Path]:
    """Top-level module name -> its files (a subpackage is one module: mokit.search)."""
    out: dict[str, list[Path]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        name = rel.parts[0].removesuffix(".py")
        if name != "__init__":
            out.setdefault(name, []).append(path)
    return out


def imports(path: Path, own: str) -> list[tuple[str, str | None, int]]:
    """(imported top-level mokit module, a private name imported from it or None, line) for every
    import in `path`, lazy ones inside functions included."""
    found = []
    depth = len(path.relative_to(PACKAGE).parts) - 1          # 0 for mokit/x.py, 1 for mokit/search/x.py
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            up = node.level - 1 - depth                       # how far above mokit/ it climbs (0: mokit)
            if up < 0:                                        # inside its own subpackage
                continue
            parts = (node.module or "").split(".")
            if node.module:                                   # noqa: SIM108 - a comment on each branch
                targets = [(parts[0], [a.name for a in node.names])]
            else:                                             # from . import a, b
                targets = [(a.name, []) for a in node.names]
            for mod, names in targets:
                if mod == own:
                    continue
                private = [n for n in names if n.startswith("_")]
                found.append((mod, private[0] if private else None, node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mokit."):
                    found.append((a.name.split(".")[1], None, node.lineno))
    return found


def graph() -> dict[str, set[str]]:
    return {name: {m for p in paths for m, _, _ in imports(p, name)} for name, paths in modules().items()}


def test_every_module_has_a_layer():
    missing = sorted(set(modules()) - set(RANK))
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


def test_imports_point_down():
    upward = []
    for name, paths in modules().items():
        for path in paths:
            for mod, _, line in imports(path, name):
                if mod in RANK and RANK[mod] >= RANK[name]:
                    upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} {name} imports {mod} "
                                  f"(layer {RANK[name]} -> {RANK[mod]})")
    assert not upward, "imports that point up or sideways:\n  " + "\n  ".join(upward)


def test_no_module_uses_another_modules_private_names():
    private = [f"{p.relative_to(PACKAGE.parent)}:{line} imports {mod}.{priv}"
               for name, paths in modules().items() for p in paths
               for mod, priv, line in imports(p, name) if priv]
    assert not private, "make these public (or stop using them):\n  " + "\n  ".join(private)


if __name__ == "__main__":
    g = graph()
    for i, layer in enumerate(LAYERS):
        for m in layer:
            if m in g:
                print(f"{i:2d} {m:10s} <- {', '.join(sorted(g[m], key=lambda x: RANK.get(x, -1))) or '(nothing)'}")
    sys.exit(0)
