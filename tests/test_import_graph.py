"""The three packages import each other without cycles: every import counts, also those inside
functions (a lazy import is still a dependency), read from the source with ``ast``."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("inp_former", "kernels", "inpctl")
REPO = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a.b import c`` is a.b.c if that is a module, else a.b)."""
    files = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            for target in targets:
                while target and target not in files:  # a name inside a module: the module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}   # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    assert "inp_former.workflow" in graph and "inp_former.train" in graph["inp_former.workflow"]
    assert "inpctl.cli" in graph and "inpctl.commands.train" in graph["inpctl.cli"]


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_the_packages():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_library_never_imports_the_command_line():
    graph = import_graph()
    offenders = sorted(m for m, deps in graph.items() if not m.startswith("inpctl")
                       and any(d.startswith("inpctl") for d in deps))
    assert offenders == []


def _names_missing(path: Path, siblings: set[str]) -> list[str]:
    """The project (or neighbouring-script) modules and names that ``path`` imports but that do not exist."""
    import importlib

    missing = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES]
            names: list[tuple[str, str]] = []
        elif isinstance(node, ast.ImportFrom) and node.module and (
                node.module.split(".")[0] in PACKAGES or node.module in siblings):
            modules, names = [node.module], [(node.module, alias.name) for alias in node.names]
        else:
            continue
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError:
                missing.append(module)
        for module, name in names:
            if module not in missing and not hasattr(importlib.import_module(module), name):
                try:
                    importlib.import_module(f"{module}.{name}")
                except ImportError:
                    missing.append(f"{module}.{name}")
    return missing


def test_scripts_outside_the_packages_import_only_names_that_exist():
    """bench/ scripts are not imported by the tests; a renamed module or function must not break them
    unseen. Scripts also import their neighbours (bench/studies/quality/recipes.py ...): those count too."""
    import sys

    missing = []
    for path in sorted((REPO / "bench").rglob("*.py")):
        sys.path.insert(0, str(path.parent))
        try:
            siblings = {p.stem for p in path.parent.glob("*.py")}
            missing += [f"{path.relative_to(REPO)}: {name}" for name in _names_missing(path, siblings)]
        finally:
            sys.path.remove(str(path.parent))
    assert not missing, missing


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_serving_and_the_fast_path_stand_on_the_inference_layer_alone():
    """inp_former.inference owns scoring: the server, the fast path and the predictor reach it without
    the evaluation loop, training, metrics or the workflow (every import counts, lazy ones too)."""
    graph = import_graph()
    heavy = {"inp_former.evaluate", "inp_former.train", "inp_former.workflow", "inp_former.settings"}
    for start in ("inp_former.serve.app", "inp_former.fast_path", "inp_former.predictor", "inp_former.inference"):
        reached = _reachable(graph, start)
        assert "inp_former.inference" in reached | {start}
        assert not reached & heavy, f"{start} reaches {sorted(reached & heavy)}"


def test_the_environment_of_torchrun_is_read_in_one_module():
    """RANK / WORLD_SIZE / LOCAL_RANK: only inp_former/distributed.py reads them."""
    readers = sorted(str(p.relative_to(REPO)) for package in PACKAGES for p in (REPO / package).rglob("*.py")
                     if any(f'"{name}"' in p.read_text() for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")))
    assert readers == ["inp_former/distributed.py"]
