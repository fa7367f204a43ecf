"""Test helpers: tiny projects in temp dirs that run the real stage modules and the real dvc.yaml."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from tests.tiny import TINY, merge  # noqa: F401 (re-exported to the test files)

REPO = Path(__file__).resolve().parents[1]

# The tests that share one reproduced tiny project (the `reproduced` fixture in that folder's conftest.py).
REPRODUCED = "tests/pipeline/reproduced/"


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: without xdist (-p no:xdist) there is nothing to schedule
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with tests/pipeline/reproduced/ as one unit: a file stays on one worker, and so do the
    files that share the reproduced project, which a worker builds once (a session fixture is per worker)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedProjectScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return REPRODUCED if nodeid.startswith(REPRODUCED) else super()._split_scope(nodeid)

    return SharedProjectScheduling(config, log)


# pytest runs a worker per core (pytest-xdist): a test that trains in its own process takes one core, as the
# stages it starts do (stage_env), or two busy workers with two threads each slow each other several-fold.
torch.set_num_threads(1)


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def write_params(folder: Path, override: dict | None = None) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(merge(default_params(), override or {}), sort_keys=False))
    return path


def tiny_params(folder: Path, override: dict | None = None):
    """TINY (+ override) written to folder/params.yaml and loaded through the validated schema, as a stage loads it."""
    from stages.pipeline import params

    folder.mkdir(parents=True, exist_ok=True)
    write_params(folder, merge(TINY, override or {}))
    return params.load(folder / "params.yaml", folder / "data")


def stage_env() -> dict:
    """Quiet, reproducible, and offline: nothing a test runs may reach a model hub."""
    # One thread per stage: pytest runs a worker per core (pytest-xdist), and the bytes depend on the count.
    return {**os.environ, "TQDM_DISABLE": "1", "SOURCE_DATE_EPOCH": "0", "DDPIPE_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def stage_module(name: str) -> str:
    """A dvc.yaml stage's module (`rank` → stages.methods.delt.rank), or stages.<name> for a module name."""
    from stages.layout import dvc_yaml

    body = dvc_yaml.stage_bodies().get(name)
    return dvc_yaml.stage_module(body) if body else f"stages.{name}"


def run_stage(project: Path, module: str, *args: str, check: bool = True,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a stage's module (a dvc.yaml stage name, or a module under stages) inside `project`, exactly as
    dvc.yaml does (`env`: extra variables)."""
    module = stage_module(module).removeprefix("stages.")
    result = subprocess.run([sys.executable, "-m", f"stages.{module}", *args], cwd=project,
                            env={**stage_env(), **(env or {})},
                            capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"stages.{module} failed:\n{result.stdout}\n{result.stderr}")
    return result


def stage_processes(dvc_pid: int, module: str) -> list[psutil.Process]:
    """The `python -m stages.<module>` processes under a dvc process - not the shell dvc runs the command in,
    which (dash, the default /bin/sh when SHELL is unset) does not exec it and would take a signal alone."""
    found = []
    try:
        for child in psutil.Process(dvc_pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a process ended while being looked at
                if child.cmdline()[1:3] == ["-m", f"stages.{module}"]:
                    found.append(child)
    except psutil.Error:
        pass
    return found


def dvc(project: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=stage_env(),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def ran(log: str) -> set[str]:
    """The stages a `dvc repro` log says it ran."""
    import re

    return set(re.findall(r"Running stage '([^']+)'", log))


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project, check=True,
                   capture_output=True)


def make_project(root: Path, params: dict | None) -> Path:
    """A copy of this repository's pipeline (code, dvc.yaml, params) with its own git and DVC."""
    root.mkdir()
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    write_params(root, params)
    git(root, "init", "-q")
    dvc(root, "init", "-q")
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")  # after init, which writes a blank one
    dvc(root, "config", "core.analytics", "false")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "project")
    return root


@pytest.fixture
def project(tmp_path) -> Path:
    """The pipeline on tiny params."""
    return make_project(tmp_path / "project", TINY)


@pytest.fixture
def default_project(tmp_path) -> Path:
    """The pipeline on the shipped params.yaml, untouched."""
    return make_project(tmp_path / "project", None)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """A project folder with the digits prepared and a tiny convnet teacher, shared by unit tests."""
    root = tmp_path_factory.mktemp("prepared")
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    write_params(root, TINY)
    run_stage(root, "prepare", "--out", "data/digits")
    run_stage(root, "teacher", "--arch", "convnet", "--data", "data/digits", "--out",
              "artifacts/digits/teachers/convnet", "--curves", "artifacts/digits/teacher_curves/convnet.csv")
    return root


def workdir(prepared: Path, name: str, override: dict | None = None, data: Path | None = None) -> Path:
    """A project folder with the shared code, its own params, and the prepared digits (or `data`)."""
    folder = prepared / name
    folder.mkdir()
    (folder / "stages").symlink_to(prepared / "stages")
    (folder / "data").mkdir()
    (folder / "data" / "digits").symlink_to(data or prepared / "data" / "digits")
    write_params(folder, merge(TINY, override or {}))
    return folder


def assert_refused(result: subprocess.CompletedProcess, kind: str, message: str) -> None:
    """The stage stopped cleanly: exit 2 and the one line `error: <kind>: <message…>` (message a regex prefix)."""
    import re

    assert result.returncode == 2, f"exit {result.returncode}, expected 2:\n{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and re.match(f"error: {kind}: {message}", lines[0]), result.stderr
    if os.environ.get("DDPIPE_FAULT_LOG"):  # the fault matrix as run: test case → the line the user saw
        case = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
        with open(os.environ["DDPIPE_FAULT_LOG"], "a") as f:
            f.write(f"{case}\t{lines[0]}\n")


def assert_nothing_left(out: Path) -> None:
    """No output for DVC to cache and no temp folder beside it."""
    out = Path(out)
    assert not out.exists(), f"{out} was left behind"
    leftovers = sorted(p.name for p in out.parent.glob(f".{out.name}.tmp*")) if out.parent.exists() else []
    assert not leftovers, f"temp files left beside {out}: {leftovers}"
