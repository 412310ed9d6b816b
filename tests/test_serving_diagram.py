"""The sequence diagram of a chat message's path (docs/serving.md) names real functions: every call arrow's
label is a function (or `Class.method`) defined in the file its target participant names. Read with `ast`,
nothing is imported."""
from __future__ import annotations

import ast
import re

from hirpf.paths import PROJECT_ROOT

PAGE = PROJECT_ROOT / "docs" / "serving.md"


def diagram() -> str:
    [block] = re.findall(r"```mermaid\n(sequenceDiagram\n.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    return block


def calls(block: str) -> list[tuple[str, str]]:
    """(file, function) for every call arrow (`A->>B: name …`; `-->>` replies are not calls)."""
    files = dict(re.findall(r"^\s*participant (\w+) as (\S+\.py)$", block, re.M))
    return [(files[target], name) for target, name in re.findall(r"^\s*\w+->>(\w+): ([\w.]+)", block, re.M)]


def defined(path, name: str) -> bool:
    """`function` anywhere in the file (nested ones too: a tab's handlers), or `Class.method` directly."""
    tree = ast.parse((PROJECT_ROOT / path).read_text(encoding="utf-8"))
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    if "." not in name:
        return any(isinstance(node, functions) and node.name == name for node in ast.walk(tree))
    owner, method = name.split(".")
    return any(isinstance(node, ast.ClassDef) and node.name == owner
               and any(isinstance(item, functions) and item.name == method for item in node.body)
               for node in ast.walk(tree))


def test_every_hop_of_the_chat_message_diagram_is_a_real_function():
    hops = calls(diagram())
    assert len(hops) >= 20  # the arrows were read (a changed arrow syntax would silently check nothing)
    missing = [f"{path}: {name}" for path, name in hops if not defined(path, name)]
    assert not missing, f"docs/serving.md's diagram names functions that do not exist: {missing}"
