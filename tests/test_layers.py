"""The packages form layers, each importing only those below it, and no modules import each other in a cycle.

rlcm (RL on diffusers pipelines) < feedback (the preference store) < reward_model < studio (the app's core)
< the entry points (app.py, bench/). Learned rewards reach rlcm as functions; only rlcm's CLI (`__main__`)
wires layers together, as every CLI may.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["rlcm", "feedback", "reward_model", "studio"]  # bottom first
ENTRY_POINTS = {"app", "bench", "tests"}


def imports(path: Path, module_level_only: bool = False) -> list[str]:
    """Absolute names of the modules `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    mod = list(path.relative_to(ROOT).with_suffix("").parts)
    package = mod if path.name == "__init__.py" else mod[:-1]
    nodes = tree.body if module_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            out.append(name)
            out += [f"{name}.{a.name}" for a in node.names]  # `from . import checks` imports a module
    return out


def modules() -> dict[str, Path]:
    found = {}
    for layer in LAYERS:
        for path in (ROOT / layer).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def test_no_package_imports_a_layer_above_it():
    wrong = []
    for name, path in modules().items():
        layer = name.split(".")[0]
        if name == f"{layer}.__main__":
            continue
        above = set(LAYERS[LAYERS.index(layer) + 1:]) | ENTRY_POINTS
        wrong += [f"{name} imports {n}" for n in imports(path) if n.split(".")[0] in above]
    assert not wrong


def test_no_modules_import_each_other_in_a_cycle():
    mods = modules()
    graph = {m: {n for n in imports(p, module_level_only=True) if n in mods and n != m} for m, p in mods.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles
