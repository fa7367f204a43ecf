"""The core (stages/pipeline) imports no method and no layer above it: only itself (and the standard
library and third-party packages). Method sections reach params validation by discovery, not by name."""
from __future__ import annotations

from tests.imports import ROOT, direct_imports, module_name


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
    edges = [e for e in upward_edges("stages/synthesis") if e.startswith("stages.synthesis.params ")]
    assert "stages.synthesis.params -> stages.training.params" in edges
    assert "stages.synthesis.params -> stages.synthesis.schedules" in edges


def test_params_sections_come_from_their_packages():
    from stages.pipeline import params

    owners = {key: module.__name__ for module in params.section_modules() for key in module.SECTIONS}
    assert owners["podd"] == "stages.podd.params" and owners["delt"] == "stages.synthesis.params"
    order = list(params.schema().model_fields)  # params.yaml's order (new sections may come in between)
    expected = ["launcher", "dataset", "ipc", "seed", "class_names", "class_prompt", "prepare", "models", "teacher",
                "evaluate", "sre2l", "delt", "infer", "caption", "diffusion", "latents", "d4m", "vlcp", "podd"]
    assert [key for key in order if key in expected] == expected


MAIN_LINES = 15  # argument parsing and one call: the work itself lives in run()


def stage_shapes() -> dict[str, tuple[int, bool]]:
    """Each stage module (stages/<name>.py with a main) -> (main's line count, whether it has a top-level run)."""
    import ast
    shapes = {}
    for path in sorted((ROOT / "stages").glob("*.py")):
        functions = {n.name: n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        if "main" in functions:
            main = functions["main"]
            shapes[path.stem] = (main.end_lineno - main.lineno + 1, "run" in functions)
    return shapes


def test_every_stage_is_a_run_function_and_a_short_main():
    """A stage module is a typed run(...) that tests call in-process, and a main that parses and calls it."""
    shapes = stage_shapes()
    assert len(shapes) >= 20, shapes  # every dvc.yaml stage module is seen
    assert [name for name, (_, has_run) in shapes.items() if not has_run] == []
    assert {name: lines for name, (lines, _) in shapes.items() if lines > MAIN_LINES} == {}
