"""Import layering (issue #14): the SDK stays off the server side, no new import circles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECAGG = ROOT / "secagg"

#: Modules the worker SDK must not load: the state machine, the store, server code, and
#: the heavy 2PC stack (a worker installs none of it).
FORBIDDEN_IN_SDK = ("secagg.rounds", "secagg.store", "servers", "torch", "crypten")

#: Known circles, each with its reason. mpc <-> mpc_link is left for later work on
#: issue #14; anything else failing here is a new circle to break, not to allow-list.
ALLOWED_CYCLES: frozenset[frozenset[str]] = frozenset(
    {frozenset({"secagg.mpc", "secagg.mpc_link"})}
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")[: -node.level] if not module.endswith("__init__") else []
    return ".".join([*base, node.module] if node.module else base)


def secagg_import_graph() -> dict[str, set[str]]:
    """Every ``import`` of a secagg module by a secagg module, at any depth in the file.

    Imports under ``if TYPE_CHECKING:`` are left out: they never run.
    """
    modules = {_module_name(p): p for p in SECAGG.rglob("*.py") if "v1" not in p.parts}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_only: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                type_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, node)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_a_circle() -> None:
    # Control: the walker must report a planted circle, or the test below proves nothing.
    assert import_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [frozenset({"a", "b"})]


def test_no_new_import_cycles_in_secagg() -> None:
    graph = secagg_import_graph()
    assert "secagg.contract" in graph["secagg.store"]
    assert "secagg.rounds" not in graph["secagg.store"]
    new = [sorted(c) for c in import_cycles(graph) if c not in ALLOWED_CYCLES]
    assert new == [], f"new import circle(s) among secagg modules: {new}"


def test_contract_reaches_no_state_machine_or_store() -> None:
    # The contract may use pure helpers (encoding, validation, the DP mechanism's
    # config checks), but nothing it reaches, however indirectly, may be server-side.
    graph = secagg_import_graph()
    seen: set[str] = set()
    todo = ["secagg.contract"]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    server_side = {"secagg.rounds", "secagg.store", "secagg.mpc", "secagg.mpc_link"}
    assert seen & server_side == set()


def test_sdk_does_not_load_server_side_modules() -> None:
    code = (
        "import sys, clients.sdk, clients.admin\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN_IN_SDK!r}"
        f" or m in {FORBIDDEN_IN_SDK!r}]\n"
        "print(','.join(sorted(bad)))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"the SDK loads {res.stdout.strip()}"
