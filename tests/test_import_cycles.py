"""The repository's own modules import each other without a cycle (static, from the source).

Every import counts: at module level, inside functions (a lazy import only hides a cycle until
someone moves it) and under ``if TYPE_CHECKING:`` (a cycle of types is still a cycle of design).
``from pkg import name`` depends on the submodule ``pkg.name`` when there is one, else on
``pkg``; importing ``pkg.sub`` is not counted as depending on ``pkg``'s ``__init__``.
Rules for who may import whom: docs/architecture.md, "Import rules".
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("crdt_core", "relay", "client", "benchmarks", "tests", "tools", "demos")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def own_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "node_modules" not in path.parts:
                found[_module_name(path)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The repository modules ``name`` (at ``path``) imports anywhere in its source."""
    tree = _tree(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in modules else source)
    return {dep for dep in found if dep in modules and dep != name}


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@cache
def import_graph() -> dict[str, set[str]]:
    modules = own_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_sees_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_lazy_and_type_checking_imports() -> None:
    graph = import_graph()
    assert "relay.context" in graph["relay.http.app"]
    assert "relay.http.sync_socket" in graph["relay.http.app"]
    assert "relay.auth.account_types" in graph["relay.auth.device_certs"]  # under TYPE_CHECKING
    assert "relay.auth.account_store_pg" in graph["relay.auth.accounts"]  # inside a function


def test_no_import_cycle_among_the_repositorys_modules() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def _external_imports(path: Path) -> set[str]:
    tree = _tree(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
    return found


#: Which of the repository's packages each shipped package may not import (docs/architecture.md).
FORBIDDEN = {
    "crdt_core": {"relay", "client", "benchmarks", "tests", "tools", "demos"},
    "relay": {"client", "benchmarks", "tests", "tools", "demos"},
    "client": {"relay", "benchmarks", "tests", "tools", "demos"},
}

#: The client's layers, bottom up (docs/architecture.md): a subpackage imports only its own
#: modules and the layers below it; ``sync`` and ``peer`` share a layer and never import each other.
CLIENT_LAYERS = {"storage": 0, "local": 1, "sync": 2, "peer": 2, "cli": 3}


def test_packages_import_only_what_the_layering_allows() -> None:
    graph = import_graph()
    wrong = sorted(
        f"{name} imports {dep}"
        for name, deps in graph.items()
        for dep in deps
        if dep.split(".")[0] in FORBIDDEN.get(name.split(".")[0], set())
    )
    assert wrong == []


#: The relay's layers, lowest first: a relay module may import its own subpackage and the layers
#: below its own, never a sibling in its layer or anything above (docs/architecture.md).
RELAY_LAYERS: list[set[str]] = [
    {"relay.errors"},
    {"relay.ops"},
    {"relay.store", "relay.fanout"},
    {"relay.auth", "relay.documents"},
    {"relay.sync"},
    {"relay.context"},
    {"relay.http"},
    {"relay.cli"},
]


def _relay_part(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else name


def _relay_layer(name: str) -> int | None:
    part = _relay_part(name)
    return next((i for i, layer in enumerate(RELAY_LAYERS) if part in layer), None)


def test_every_relay_module_sits_in_a_layer() -> None:
    homeless = [n for n in own_modules() if n.startswith("relay.") and _relay_layer(n) is None]
    assert homeless == []


def test_relay_layers_import_only_downwards() -> None:
    graph = import_graph()
    wrong = sorted(
        f"{name} imports {dep}"
        for name, deps in graph.items()
        if name.startswith("relay.")
        for dep in deps
        if dep.startswith("relay.")
        and _relay_part(dep) != _relay_part(name)
        and not (_relay_layer(dep) or 0) < (_relay_layer(name) or 0)
    )
    assert wrong == []


#: Only these relay subpackages import the web framework and server (FastAPI, Starlette, uvicorn);
#: ``relay.context`` names ``FastAPI`` as a type only.
WEB_FRAMEWORK = ("fastapi", "starlette", "uvicorn")
WEB_IMPORTERS = {"relay.http", "relay.cli", "relay.context"}


def test_only_the_http_layer_imports_the_web_framework() -> None:
    wrong = sorted(
        n
        for n, p in own_modules().items()
        if n.startswith("relay.")
        and _relay_part(n) not in WEB_IMPORTERS
        and any(m.split(".")[0] in WEB_FRAMEWORK for m in _external_imports(p))
    )
    assert wrong == []


def test_the_clients_subpackages_import_only_the_layers_below_them() -> None:
    graph = import_graph()

    def layer(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if parts[0] == "client" and len(parts) > 2 else None

    wrong = []
    for name, deps in graph.items():
        mine = layer(name)
        if mine is None:
            continue
        for dep in deps:
            theirs = layer(dep)
            if theirs is None or theirs == mine:
                continue
            if CLIENT_LAYERS[theirs] >= CLIENT_LAYERS[mine]:
                wrong.append(f"{name} imports {dep}")
    assert sorted(wrong) == []
    assert set(CLIENT_LAYERS) == {n.split(".")[1] for n in graph if n.startswith("client.") and "." in n[7:]}


def test_the_engine_and_uvicorns_internals_each_have_one_importer() -> None:
    modules = own_modules()
    pycrdt = sorted(
        n for n, p in modules.items() if any(m.split(".")[0] == "pycrdt" for m in _external_imports(p))
    )
    internals = sorted(
        n for n, p in modules.items() if any(m.startswith("uvicorn.protocols") for m in _external_imports(p))
    )
    shipped = [n for n in pycrdt if n.split(".")[0] in FORBIDDEN]
    assert shipped == ["crdt_core.engine"], pycrdt
    assert [n for n in internals if n.split(".")[0] in FORBIDDEN] == ["relay.http.ws_protocol"], internals
