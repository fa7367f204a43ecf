"""The project's own import graph, read from the source with ast (nothing is imported): which `stages`
modules a module imports, directly and transitively."""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the project root: stages/ is its top-level package


def module_file(name: str) -> Path | None:
    """stages.a.b → stages/a/b.py or stages/a/b/__init__.py (None when it is not a module of ours)."""
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    parts = path.resolve().relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def direct_imports(name: str) -> frozenset[str]:
    """The `stages` modules `name` imports anywhere in its file (also inside functions): `from stages.x
    import y` counts as stages.x.y when that is a module, else stages.x; importing stages.x.y also runs
    the package stages.x."""
    path = module_file(name)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" if module_file(f"{node.module}.{a.name}") else node.module
                       for a in node.names]
        for target in targets:
            if target == "stages" or target.startswith("stages."):
                parts = target.split(".")
                found |= {".".join(parts[:i]) for i in range(2, len(parts) + 1) if module_file(".".join(parts[:i]))}
    found.discard(name)
    return frozenset(found)


def closure(name: str) -> set[str]:
    """`name` and every `stages` module it imports, transitively."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += direct_imports(current)
    return seen


def package_of(name: str) -> str:
    """stages.recover_engine.engine → stages.recover_engine; a top-level stage module (stages.recover) is its own."""
    parts = name.split(".")
    return ".".join(parts[:2])
