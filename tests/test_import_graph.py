"""crl's modules import one another without a cycle, lazy imports included (issue 25, item 7).

The graph is built from the source with ``ast``, so an import inside a function (a lazy import) is an edge
like any other: a lazy import that only hides a cycle is caught. setuptools maps ``crl.envs`` → envs/,
``crl.agents`` → agents/, ``crl.configs`` → configs/ (pyproject.toml), and the graph follows that map.

An edge ``M → N`` is an import that runs N's code or reads N's names:
- ``import a.b.c`` / ``from a.b.c import x`` (x not a submodule) → a.b.c, and each package above a.b.c
  whose ``__init__`` runs first, unless that package is already M's own (it is initialising when M runs);
- ``from a.b import c`` with c a submodule → a.b.c; ``from a.b import name`` with name not a submodule →
  a.b even when a.b is M's own package (reading a name from a half-initialised package is the hazard);
- imports under ``if TYPE_CHECKING:`` are skipped: they never run;
- a module that imports by name (``importlib.import_module``, ``pkgutil``: the registry's discovery) has an
  edge to every crl module a string constant in it names, and to every module of a package one names: the
  registry imports what it discovers, so an agent that imported the registry would close a cycle; a package
  that scans itself (crl.envs) has an edge to each of its modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"crl": ROOT / "crl", "crl.envs": ROOT / "envs", "crl.agents": ROOT / "agents",
            "crl.configs": ROOT / "configs"}


def module_files() -> dict[str, Path]:
    """Every module of the crl distribution, by its import name."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skipped = _type_checking_nodes(tree)
        own_package = name if _is_package(name, modules) else name.rpartition(".")[0]
        own = set(_ancestors(name)) | ({name} if _is_package(name, modules) else set())

        def edge_to(target: str, *, with_parents: bool = True) -> None:
            while target not in modules and "." in target:  # `import crl.envs.metaworld.X` names a module's attribute
                target = target.rpartition(".")[0]
            if target not in modules or target == name:
                return
            graph[name].add(target)
            if with_parents:
                graph[name].update(p for p in _ancestors(target) if p in modules and p not in own)

        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    edge_to(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = own_package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source not in modules:
                    continue
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    if submodule in modules:
                        edge_to(submodule)
                    else:  # a name read from `source`: its code must have run, even if it is our own package
                        if source != name:
                            graph[name].add(source)
                        graph[name].update(p for p in _ancestors(source) if p in modules and p not in own)
        if any(isinstance(n, ast.Attribute) and n.attr in ("import_module", "iter_modules", "walk_packages")
               for n in ast.walk(tree)):
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
                    named = node.value
                    found = [named] + ([m for m in modules if m.startswith(named + ".")]
                                       if _is_package(named, modules) else [])
                    for target in found:
                        edge_to(target)
            if _is_package(name, modules):  # a package that scans itself (crl.envs) imports each of its modules
                for target in modules:
                    if target.startswith(name + ".") and "." not in target[len(name) + 1:]:
                        edge_to(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component that has one (Tarjan, then a path inside it)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        # breadth-first from start back to start, inside the component: the shortest cycle through it
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        cycle = paths[v] + [start]
                        break
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        cycles.append(cycle)
    return cycles


def test_the_graph_sees_the_packages_and_lazy_imports():
    graph = import_graph()
    assert {"crl", "crl.cli", "crl.envs", "crl.envs.metaworld", "crl.agents.sac", "crl.configs"} <= set(graph)
    assert "crl.envs.sequences" in graph["crl.envs.metaworld"]  # a top-level import
    assert "crl.loop" in graph["crl.cli"]  # `from crl import loop` inside a function
    assert {"crl.agents.sac", "crl.interventions"} <= graph["crl.registry"]  # what the registry discovers
    assert "crl.envs.gridworld" in graph["crl.envs"]  # the package scans itself


def test_find_cycles_reports_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_crl():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (lazy imports included):\n" + "\n".join(" → ".join(c) for c in cycles)


def test_config_names_no_env_family_and_learners_do_not_import_the_config():
    """crl.config reaches the families only through crl.envs' sequence registry; the bf16 check that learners
    need lives in crl.devices, so no learner imports the run's configuration (issue 25, item 7)."""
    graph = import_graph()
    assert not {m for m in graph["crl.config"] if m.startswith("crl.envs.")}
    learners = {m for m in graph if m.startswith("crl.agents.")} | {"crl.offpolicy", "crl.learner"}
    assert not {m for m in learners if "crl.config" in graph[m]}
