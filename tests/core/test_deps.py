"""dvc.yaml's code deps and evaluated sets follow the code and the method registry (`ddpipe dvc-yaml --check`,
stages/layout/dvc_yaml.py): a stage depends on its module or method package and the shared packages it imports,
so an edit reruns only the stages whose code it touched."""
from __future__ import annotations

from stages.layout import dvc_yaml


def test_dvc_yaml_matches_the_code_and_the_registry():
    assert dvc_yaml.differences() == [], "dvc.yaml differs (`ddpipe dvc-yaml --write` rewrites its generated parts)"


def test_a_wrong_dep_is_seen(tmp_path):
    text = dvc_yaml.DVC_YAML.read_text().replace("      - stages/prepare.py\n", "", 1)
    (tmp_path / "dvc.yaml").write_text(text)
    assert any(line.startswith("prepare: code deps missing ['stages/prepare.py']")
               for line in dvc_yaml.differences(tmp_path / "dvc.yaml"))


def test_methods_stay_apart():
    """A method's package is a dep of its own stages only; the training loop of the teachers and evaluates;
    a method's schema or recipe never reruns a teacher."""
    runs = {name: dvc_yaml.declared(b) for name, b in dvc_yaml.stage_bodies().items()}

    def users(path: str) -> set[str]:
        return {s for s, deps in runs.items() if any(path == d or path.startswith(d + "/") for d in deps)}

    assert users("stages/methods/delt/selection.py") == {"rank", "select"}
    assert users("stages/methods/podd/rat_bptt.py") == {"poster"}
    assert users("stages/methods/rded/patches.py") == {"rded", "recover"}  # EDC's RDED starts borrow it
    assert users("stages/methods/d4m/params.py") == set()  # through stages/methods/${key}: prototypes, synthesize
    assert {s for s, deps in runs.items() if "stages/methods/${key}" in deps or "stages/methods/${item}" in deps} \
        == {"recover", "prototypes", "synthesize"}
    assert users("stages/training/loop.py") == {"teacher", "rded", "relabel", "evaluate", "relabel_external",
                                                  "evaluate_external"}
    assert not any(d.startswith("stages/methods") for d in runs["teacher"])


def test_write_fills_a_new_stage_that_lists_no_code(tmp_path):
    """A new method's block lists only its data deps; `--write` appends its code deps to that list."""
    text = dvc_yaml.DVC_YAML.read_text()
    block = text.split("\n  rded:\n", 1)[1].split("\n\n", 1)[0]
    bare = "\n".join(line for line in block.split("\n") if not line.startswith("      - stages/"))
    (tmp_path / "dvc.yaml").write_text(text.replace(block, bare, 1))
    assert any(line.startswith("rded: code deps missing") for line in dvc_yaml.differences(tmp_path / "dvc.yaml"))
    dvc_yaml.write(tmp_path / "dvc.yaml")
    assert dvc_yaml.differences(tmp_path / "dvc.yaml") == []
    assert dvc_yaml.stage_bodies(tmp_path / "dvc.yaml")["rded"]["deps"][:2] == [
        "data/${dataset}", "artifacts/${dataset}/teachers/${rded.observer}"]
