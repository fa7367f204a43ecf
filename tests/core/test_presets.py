"""presets/: every preset sets the required keys, each value with its source; applying one keeps params.yaml's
comments, validates, and the DAG builds with every path resolved (`dvc repro --dry`); the CIFAR-10 preset
runs end to end at tiny sizes on generated 32 px data with a `file` teacher (slow)."""
import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from stages import preset
from stages.pipeline import params
from stages.pipeline.errors import ParamsError
from tests.conftest import REPO, dvc, git, make_project
from tests.tiny import TINY_PRESET, generated_cifar

NAMES = sorted(p.stem for p in (REPO / "presets").glob("*.yaml"))
LEAF = re.compile(r"^\s*[\w.-]+:\s*[^\s#]")  # a key with a value on its line (not a section header)


def test_the_papers_datasets_have_presets():
    assert {"cifar10-sre2l", "cifar100-sre2l", "tinyimagenet-sre2l", "imagenette-sre2l",
            "imagenet1k-sre2l"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_a_preset_sets_every_required_key_and_sources_each_value(name):
    text = (REPO / "presets" / f"{name}.yaml").read_text()
    assert preset.missing_keys(yaml.safe_load(text)) == []
    unsourced = [line for line in text.splitlines() if LEAF.match(line) and "#" not in line]
    assert unsourced == [], f"values without a source comment: {unsourced}"


def test_a_preset_missing_a_required_key_is_refused(tmp_path, monkeypatch):
    raw = yaml.safe_load((REPO / "presets" / "cifar10-sre2l.yaml").read_text())
    del raw["evaluate"]["temperature"]
    (tmp_path / "partial.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(preset, "PRESETS", tmp_path)
    with pytest.raises(ParamsError, match="does not set evaluate.temperature"):
        preset.load_preset("partial")



def test_preset_run_lists_and_applies_in_process(tmp_path, monkeypatch, capsys):
    listing = preset.run(None)
    assert [line.split()[0] for line in listing.splitlines()] == NAMES and capsys.readouterr().out == listing
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)  # the merged params are validated against ./data (none here)
    diff = preset.run("cifar10-sre2l", Path("params.yaml"))
    assert diff.startswith("--- a/params.yaml\n+++ b/params.yaml\n") and capsys.readouterr().out == diff
    raw = yaml.safe_load((REPO / "presets" / "cifar10-sre2l.yaml").read_text())
    assert params.load().evaluate.temperature == raw["evaluate"]["temperature"]
    assert preset.run("cifar10-sre2l", Path("params.yaml")) == "params.yaml: already at preset cifar10-sre2l\n"

def dry_run(root: Path, monkeypatch) -> list[str]:
    """`dvc repro --dry` over the whole DAG. Every stage's outputs exist as empty placeholders first: a dry
    run still hashes each stage's dependencies, which would otherwise stop it at the first missing one."""
    from dvc.repo import Repo

    monkeypatch.chdir(root)  # dvc resolves a repo's graph from the working directory

    Repo.init(str(root), no_scm=True).close()
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                path = Path(out.fs_path)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch() if path.suffix else path.mkdir(exist_ok=True)
    with Repo(str(root)) as repo, contextlib.redirect_stdout(io.StringIO()):
        stages = repo.reproduce(dry=True, run_cache=False, force=True)
    return [s.addressing for s in stages]


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_applies_validates_and_the_dag_resolves(name, tmp_path, monkeypatch):
    for f in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / f, tmp_path / f)
    (tmp_path / "stages").symlink_to(REPO / "stages")
    diff = preset.apply(name, tmp_path / "params.yaml", tmp_path / "data")
    text = (tmp_path / "params.yaml").read_text()
    assert "+dataset:" in diff or "+ipc:" in diff
    assert "# base seed; each stage derives its own" in text  # comments of untouched keys are kept
    p = params.load(tmp_path / "params.yaml", tmp_path / "data")
    raw = yaml.safe_load((REPO / "presets" / f"{name}.yaml").read_text())
    assert p.ipc == raw["ipc"] and p.evaluate.temperature == raw["evaluate"]["temperature"]
    assert p.prepare.image_size == raw["prepare"]["image_size"] and p.teacher.archs == raw["teacher"]["archs"]
    stages = dry_run(tmp_path, monkeypatch)
    assert {f"teacher@{a}" for a in p.teacher.archs} | {"prepare", "recover@sre2l", "relabel@delt",
                                                          "evaluate@infer", "report"} <= set(stages)
    assert preset.apply(name, tmp_path / "params.yaml", tmp_path / "data") == ""  # applying twice: no change


@pytest.mark.slow  # the whole pipeline (every method, diffusion included) at tiny sizes: minutes on 2 cores
def test_the_cifar10_preset_runs_end_to_end_with_a_file_teacher(tmp_path):
    from stages.models.resnet import resnet18_modified

    project = make_project(tmp_path / "project", None)
    generated_cifar(project / "src", 12, 4)
    torch.manual_seed(0)  # an RDED-style checkpoint: {"model": state_dict} with DDP's module. prefix
    teacher = resnet18_modified(10, 32, width=4)
    (project / "teachers").mkdir()
    torch.save({"model": {f"module.{k}": v for k, v in teacher.state_dict().items()}, "epoch": 1},
               project / "teachers" / "cifar10_resnet18_modified.pth")
    print(preset.apply("cifar10-sre2l", project / "params.yaml", project / "data",
                       {**TINY_PRESET, "prepare": {"root": str(project / "src")}}))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "cifar10 preset")
    log = dvc(project, "repro")
    assert "teacher@resnet18_modified" in log
    meta = json.loads((project / "artifacts/imagefolder/teachers/resnet18_modified/meta.json").read_text())
    assert meta["source"]["type"] == "file" and meta["mean"] == [0.485, 0.456, 0.406]
    report = (project / "artifacts/imagefolder/ipc2/report/results.md").read_text()
    print(report)
    for method in ("sre2l", "delt", "infer", "random"):
        assert method in report
