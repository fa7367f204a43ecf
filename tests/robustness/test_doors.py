"""Issue 30, "the doors the last wave opened": each reported input, and the one line it now ends in."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stages import export_hub
from tests.fuzz import run_inprocess

REPO = Path(__file__).resolve().parents[2]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


# --- 6. error lines are one line ---------------------------------------------------------------------------------

def test_a_path_holding_a_newline_or_an_escape_prints_as_one_escaped_line(tmp_path):
    bad = tmp_path / "set\nerror: Fake: injected\x1b[2J"
    outcome = run_inprocess(export_hub.main, ["--set", str(bad), "--out", str(tmp_path / "hub")], tmp_path)
    assert outcome.code == 2
    lines = outcome.stderr.splitlines()
    assert lines == [f"error: ArtifactError: {tmp_path}/set\\nerror: Fake: injected\\x1b[2J/card.json: missing; "
                     "--set must be a distilled set folder"]


def test_a_file_name_that_is_not_utf8_prints_escaped_not_a_traceback(tmp_path):
    """A name with a byte that is not UTF-8 (a lone surrogate in Python) cannot even be written to stderr as is."""
    bad = Path(os.fsdecode(b"set-\xff"))
    result = subprocess.run([sys.executable, "-m", "stages.export_hub", "--set", os.fsencode(bad), "--out", "hub"],
                            cwd=tmp_path, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.decode().splitlines() == [
        "error: ArtifactError: set-\\udcff/card.json: missing; --set must be a distilled set folder"]
