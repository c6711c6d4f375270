"""The layers of the house: no import cycle, and the pure modules stay free of I/O."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "gateway"

# Modules that decide or encode; they never touch sockets, threads, files or the clock's
# networking neighbours (their callers do).
PURE = (
    "gateway.errors",
    "gateway.protocol",
    "gateway.frames",
    "gateway.admission",
    "gateway.auth.policy",
    "gateway.auth.limits",
    "gateway.hub",
    "gateway.rules",
)
IO_MODULES = (
    "socket",
    "asyncio",
    "threading",
    "sqlite3",
    "asyncpg",
    "urllib.request",
    "http.client",
    "websockets",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each gateway module's imports at run time (``if TYPE_CHECKING:`` blocks excluded)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text())
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[_module_name(path)] = found
    return graph


def test_no_import_cycle() -> None:
    """No gateway module imports itself back, directly or through others."""
    graph = _imports()
    modules = set(graph)
    edges = {m: {i for i in imports if i in modules and i != m} for m, imports in graph.items()}
    # A package's __init__ importing its own submodules is not a cycle of layers.
    cycles = []
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(edges[module]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt] if nxt in trail else [nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[module] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_pure_modules_do_no_io() -> None:
    """The pure modules import no networking, threading or database module."""
    graph = _imports()
    for module in PURE:
        io = {name for name in graph[module] for bad in IO_MODULES if name.startswith(bad)}
        assert io == set(), module
