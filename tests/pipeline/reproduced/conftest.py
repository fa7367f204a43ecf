"""The tiny pipeline reproduced once for this folder's tests (test_repro.py, test_determinism.py, test_sharing.py).

A session fixture is built once per pytest-xdist worker; tests/conftest.py's scheduler keeps this folder on one
worker, so the tiny project is reproduced once per run."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import TINY, dvc, git, make_project, stage_env


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory):
    """The tiny pipeline reproduced once and committed; (project, the `dvc repro` log). Shared read-only.

    A second user's run goes alongside, at the same time: `<project>/../second` is a git clone of the project
    made before any result, reproduced without SOURCE_DATE_EPOCH (test_determinism.py compares them).
    """
    project = make_project(tmp_path_factory.mktemp("reproduced") / "project", TINY)
    second = project.parent / "second"
    git(project.parent, "clone", "-q", str(project), str(second))
    env = {k: v for k, v in stage_env().items() if k != "SOURCE_DATE_EPOCH"}
    other = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=second, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        log = dvc(project, "repro")
    finally:
        other_log = other.communicate()[0]
    (second / "repro.log").write_text(other_log)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "ipc 3 results")
    return project, log
