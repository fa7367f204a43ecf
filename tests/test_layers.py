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
