"""CI runs the linter through pytest (`.ci/run` runs the README's test command): `ruff check` with pyproject's rules."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # tests/core/this file


def ruff() -> list[str]:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: it is in the `test` extra (pip install -e '.[test]')")
    return [found]


def test_ruff_check_is_clean():
    done = subprocess.run([*ruff(), "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_sees_a_violation(tmp_path):
    """The rules are live: a line over the length and an unused import are flagged with the project's config."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\nX = '" + "x" * 130 + "'\n")
    done = subprocess.run([*ruff(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
                           "--output-format", "concise", str(bad)], capture_output=True, text=True)
    assert done.returncode == 1 and "E501" in done.stdout and "F401" in done.stdout, done.stdout + done.stderr
