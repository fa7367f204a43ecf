"""One `recover` block in params.yaml: the engine's knobs once, each method's section holding only the keys it
sets differently. Every effective value is what a whole section would have given, validated, and visible to
DVC (both keys are params of the recover stages)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from stages.pipeline.errors import ParamsError
from stages.pipeline.params import load
from tests.conftest import REPO


def shipped() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def loaded(tmp_path, raw: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load(path, data_root=tmp_path / "data")


def test_each_method_gets_the_block_with_its_overrides(tmp_path):
    raw = shipped()
    p = loaded(tmp_path, raw)
    for method in ("sre2l", "delt", "infer"):
        own = raw[method].get("recover") or {}
        effective = getattr(p, method).recover.model_dump()
        assert effective == {**p.recover.model_dump(), **own}, method
    assert p.sre2l.recover.r_bn == 1.0 and p.delt.recover.r_bn == p.infer.recover.r_bn == raw["recover"]["r_bn"]
    assert (p.delt.recover.jitter, p.delt.recover.crop_schedule) == (0, "cosine")
    assert p.sre2l.recover.jitter == raw["recover"]["jitter"] == 2


def test_the_block_reaches_every_method_without_an_override(tmp_path):
    raw = shipped()
    raw["recover"]["iterations"] = 400
    raw["delt"]["recover"]["iterations"] = 600
    del raw["infer"]["recover"]  # no overrides at all: the block as it is
    p = loaded(tmp_path, raw)
    assert (p.sre2l.recover.iterations, p.delt.recover.iterations, p.infer.recover.iterations) == (400, 600, 400)
    assert p.infer.recover == p.recover


def test_a_resolved_section_dumps_as_a_whole_one_did(tmp_path):
    """card.json and resume keys record `section.model_dump()`: the keys in the engine's order, all of them."""
    p = loaded(tmp_path, shipped())
    assert list(p.sre2l.model_dump()["recover"]) == list(type(p.recover).model_fields)


@pytest.mark.parametrize("where, value, message", [
    ("sre2l", {"teacher": "convnet", "recover": {"r_bn": 1.0, "itertions": 5}},
     "unknown key 'sre2l.recover.itertions'"),
    ("sre2l", {"teacher": "convnet", "recover": {"lr": -1}}, "sre2l.recover.lr = -1"),
    ("recover", "lots", "recover = 'lots'"),
])
def test_a_bad_override_or_block_is_one_error_naming_it(tmp_path, where, value, message):
    raw = shipped()
    raw[where] = value
    with pytest.raises(ParamsError, match=message.replace(".", r"\.").replace("(", r"\(")):
        loaded(tmp_path, raw)


def test_the_recover_stages_list_both_keys_and_dvc_sees_a_change(tmp_path):
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert {"recover", "${key}"} <= set(stages["recover"]["do"]["params"])
    project = tmp_path / "project"
    project.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        (project / name).write_text((REPO / name).read_text())

    def run(*args):
        return subprocess.run(args, cwd=project, capture_output=True, text=True, check=True).stdout

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    text = (project / "params.yaml").read_text().replace("\n  iterations: 500\n", "\n  iterations: 250\n", 1)
    (project / "params.yaml").write_text(text)
    diff = run(sys.executable, "-m", "dvc", "params", "diff", "--md")
    assert "recover.iterations" in diff and "250" in diff
