"""The project's imports run one way, read from the source with `ast` (no module is imported):

    hirpf        imports nothing of ours but hirpf
    db           hirpf (paths)
    annotation   hirpf, db
    training     hirpf
    app          everything (app.py, the Spaces entry, counts as app)

and no module imports, directly or through others, a module that imports it back. Imports inside functions
count too: a lazy import still ties the two modules together.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hirpf", "db", "annotation", "training", "app")
ALLOWED = {"hirpf": {"hirpf"}, "db": {"db", "hirpf"}, "annotation": {"annotation", "hirpf", "db"},
           "training": {"training", "hirpf"}, "app": set(PACKAGES)}
ENTRY = "app.py"  # the Spaces entry beside the app/ package; a module of its own


def project_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the five packages and the entry file."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    modules[ENTRY] = ROOT / ENTRY
    return modules


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute dotted name a relative `from . import` refers to."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is one of our modules (`hirpf.eval.common.EvalError` -> the module)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules and candidate != ENTRY:
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, path, node)
                targets = [f"{base}.{alias.name}" for alias in node.names]  # a submodule or a name in base
            else:
                continue
            for target in targets:
                found = _resolve(target, modules)
                if found is not None and found != module:
                    graph[module].add(found)
    return graph


def _layer(module: str) -> str:
    return "app" if module == ENTRY else module.split(".")[0]


def wrong_way_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets
                  if _layer(t) not in ALLOWED[_layer(m)])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_imports_it_should():
    graph = import_graph()
    assert "hirpf.eval.interview" in graph["hirpf.eval.questionnaire"]  # lazy, inside a function
    assert "hirpf.eval.common" in graph["hirpf.eval.situations"]         # relative, several names
    assert "hirpf.labels" in graph["annotation.store"]                   # absolute
    assert "db" in graph["annotation.report"]                             # a package's __init__


def test_no_wrong_way_imports():
    assert wrong_way_imports(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_are_for():
    graph = {"hirpf.a": {"annotation.b"}, "annotation.b": {"hirpf.a"}, "training.c": {"db"}, "db": set()}
    assert wrong_way_imports(graph) == ["hirpf.a imports annotation.b", "training.c imports db"]
    assert cycles(graph) == [["annotation.b", "hirpf.a"]]
