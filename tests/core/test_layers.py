"""The layers hold: the core (stages/pipeline) imports no other package; no shared module names a method or
branches on one (methods plug in through the registry and their recipes); no two modules share a basename;
every stage module is a run() and a short main."""
from __future__ import annotations

import ast

from stages import methods
from stages.layout.import_graph import ROOT, direct_imports, module_name

# Names every package may have: its face, its params section, a method's part in the shared stages.
CONVENTIONS = {"__init__.py", "params.py", "recipe.py"}


def upward_edges(folder: str = "stages/pipeline") -> list[str]:
    edges = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        name = module_name(path)
        edges += [f"{name} -> {target}" for target in sorted(direct_imports(name))
                  if not target.startswith("stages.pipeline")]
    return edges


def test_the_core_imports_no_other_stages_package():
    assert upward_edges() == []


def test_an_upward_import_is_seen():
    """The check parses imports anywhere in a file: a stage package the core imports is listed."""
    edges = [e for e in upward_edges("stages/methods/delt") if e.startswith("stages.methods.delt.params ")]
    assert "stages.methods.delt.params -> stages.training.params" in edges
    assert "stages.methods.delt.params -> stages.recover_engine.params" in edges


def test_params_sections_come_from_their_packages():
    from stages.pipeline import params

    owners = {key: module.__name__ for module in params.section_modules() for key in module.SECTIONS}
    assert owners["podd"] == "stages.methods.podd.params" and owners["delt"] == "stages.methods.delt.params"
    assert owners["recover"] == "stages.recover_engine.params"
    order = list(params.schema().model_fields)  # params.yaml's order (new sections may come in between)
    expected = ["launcher", "dataset", "ipc", "seed", "class_names", "class_prompt", "prepare", "models", "teacher",
                "evaluate", "recover", "sre2l", "delt", "infer", "caption", "diffusion", "latents", "d4m", "vlcp",
                "podd"]
    assert [key for key in order if key in expected] == expected


def method_names() -> set[str]:
    return {m.name for m in methods.methods()} | set(methods.set_names())


def shared_modules() -> list:
    """Every module outside the method packages (stages/methods/__init__.py, the registry, included)."""
    return [p for p in sorted((ROOT / "stages").rglob("*.py"))
            if not (p.relative_to(ROOT).parts[1] == "methods" and len(p.relative_to(ROOT).parts) > 3)]


def named_methods(path, comparisons_only: bool) -> list[str]:
    """`file:line 'name'` for each string constant naming a method or set (in a comparison, or anywhere
    but docstrings)."""
    tree, names, found = ast.parse(path.read_text()), method_names(), []
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if comparisons_only and isinstance(node, ast.Compare):
            consts = [c for c in [node.left, *node.comparators] for c in ast.walk(c) if isinstance(c, ast.Constant)]
        elif not comparisons_only and isinstance(node, ast.Constant) and id(node) not in docstrings:
            consts = [node]
        else:
            continue
        found += [f"{path.relative_to(ROOT)}:{c.lineno} {c.value!r}" for c in consts if c.value in names]
    return sorted(set(found))


def test_no_shared_module_branches_on_a_method_name():
    """`method == "delt"` and the like live in the method's own package only."""
    assert [hit for path in shared_modules() for hit in named_methods(path, comparisons_only=True)] == []


def test_the_core_names_no_method():
    assert [hit for path in sorted((ROOT / "stages/pipeline").rglob("*.py"))
            for hit in named_methods(path, comparisons_only=False)] == []


def test_a_branch_on_a_method_name_is_seen(tmp_path, monkeypatch):
    bad = ROOT / "stages" / "_probe_branch.py"
    bad.write_text('def f(method):\n    return 1 if method == "delt" else 2\n')
    try:
        assert named_methods(bad, comparisons_only=True) == ["stages/_probe_branch.py:2 'delt'"]
    finally:
        bad.unlink()


def test_no_two_modules_share_a_basename():
    """Besides the conventions every package may have (CONVENTIONS), a module's name says which one it is."""
    seen: dict[str, list[str]] = {}
    for path in sorted((ROOT / "stages").rglob("*.py")):
        if path.name not in CONVENTIONS:
            seen.setdefault(path.name, []).append(path.relative_to(ROOT).as_posix())
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}


def test_every_method_has_its_package_its_page_and_its_stages():
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for m in methods.methods():
        assert (ROOT / m.page).is_file(), m.page
        for stage in m.stages:
            name, _, key = stage.partition("@")
            assert name in stages, stage
            if key:
                foreach = stages[name]["foreach"]
                assert key in foreach, stage


MAIN_LINES = 15  # argument parsing and one call: the work itself lives in run()


def stage_shapes() -> dict[str, tuple[int, bool]]:
    """Each stage module (a module with a main: stages/<name>.py, stages/methods/<m>/<name>.py) -> (main's line
    count, whether it has a top-level run)."""
    shapes = {}
    for path in sorted([*(ROOT / "stages").glob("*.py"), *(ROOT / "stages/methods").glob("*/*.py")]):
        functions = {n.name: n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        if "main" in functions:
            main = functions["main"]
            shapes[module_name(path)] = (main.end_lineno - main.lineno + 1, "run" in functions)
    return shapes


def test_every_stage_is_a_run_function_and_a_short_main():
    """A stage module is a typed run(...) that tests call in-process, and a main that parses and calls it."""
    shapes = stage_shapes()
    assert len(shapes) >= 20, shapes  # every dvc.yaml stage module is seen
    assert "stages.methods.delt.rank" in shapes and "stages.methods.podd.poster" in shapes
    assert [name for name, (_, has_run) in shapes.items() if not has_run] == []
    assert {name: lines for name, (lines, _) in shapes.items() if lines > MAIN_LINES} == {}
