"""presets/: every preset sets the required keys, each value with its source; applying one keeps params.yaml's
comments, validates, and the DAG builds with every path resolved (`dvc repro --dry`); the CIFAR-10 preset
runs end to end at tiny sizes on generated 32 px data with a `file` teacher (slow)."""
import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from stages import preset
from stages.pipeline import params
from stages.pipeline.errors import ParamsError
from tests.conftest import REPO, TINY, dvc, git, make_project

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


CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# The CIFAR-10 preset at sizes a CPU runs in minutes: the paper's shapes (32 px, 10 classes, RN18-mod) kept.
TINY_RUN = {**{k: TINY[k] for k in ("diffusion", "d4m", "vlcp", "podd")},
            "dataset": "imagefolder", "ipc": 2,
            "models": {"resnet18_modified": {"width": 4, "norm": "batch"}},
            "evaluate": {"epochs": 4, "full_epochs": 1, "seeds": 1, "eval_points": 1},
            "sre2l": {"recover": {"iterations": 10}},
            "delt": {"round_iterations": 5, "recover": {"iterations": 10, "ipc_per_batch": 2}},
            "infer": {"recover": {"iterations": 10}}}


def generated_cifar(root: Path, train: int = 12, val: int = 4) -> None:
    """32 px images whose colour depends on the class, so a teacher can tell them apart."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c, name in enumerate(CIFAR10):
            (root / split / name).mkdir(parents=True)
            base = np.array([c * 25, 255 - c * 25, (c * 70) % 256])
            for i in range(n):
                pixels = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


@pytest.mark.slow  # the whole pipeline (every method, diffusion included) at tiny sizes: minutes on 2 cores
def test_the_cifar10_preset_runs_end_to_end_with_a_file_teacher(tmp_path):
    from stages.models.resnet import resnet18_modified

    project = make_project(tmp_path / "project", None)
    generated_cifar(project / "src")
    torch.manual_seed(0)  # an RDED-style checkpoint: {"model": state_dict} with DDP's module. prefix
    teacher = resnet18_modified(10, 32, width=4)
    (project / "teachers").mkdir()
    torch.save({"model": {f"module.{k}": v for k, v in teacher.state_dict().items()}, "epoch": 1},
               project / "teachers" / "cifar10_resnet18_modified.pth")
    print(preset.apply("cifar10-sre2l", project / "params.yaml", project / "data",
                       {**TINY_RUN, "prepare": {"root": str(project / "src")}}))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "cifar10 preset")
    log = dvc(project, "repro")
    assert "teacher@resnet18_modified" in log
    meta = json.loads((project / "artifacts/imagefolder/teachers/resnet18_modified/meta.json").read_text())
    assert meta["source"]["type"] == "file" and meta["mean"] == [0.485, 0.456, 0.406]
    report = (project / "artifacts/imagefolder/ipc2/report/report.md").read_text()
    print(report)
    for method in ("sre2l", "delt", "infer", "random"):
        assert method in report
