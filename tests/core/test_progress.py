"""Progress bars: a real stage prints a bar with its total, rate and ETA, few lines in a log, none when quiet."""
from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY, stage_env, write_params
from stages.pipeline import progress as progress_module
from stages.pipeline.progress import LOG_INTERVAL, TTY_INTERVAL, progress

# tqdm's closing line of a bar: "desc: 100%|####| n/n [elapsed<remaining, rate unit/s]"
FINISHED = re.compile(r"prepare train: 100%\|[^|]*\| (\d+)/(\d+) \[\d\d:\d\d<\d\d:\d\d, +\d+(\.\d+)?img/s\]")


def run_env() -> dict:
    """The tests' stage environment with the bars on (stage_env switches them off)."""
    return {k: v for k, v in stage_env().items() if not k.startswith("TQDM_")}


def run_prepare(folder, quiet: bool) -> str:
    folder.mkdir()
    (folder / "stages").symlink_to(REPO / "stages")
    write_params(folder, TINY)
    env = {**run_env(), "TQDM_DISABLE": "1"} if quiet else run_env()
    result = subprocess.run([sys.executable, "-m", "stages.prepare", "--out", "data/digits"], cwd=folder, env=env,
                            capture_output=True, text=True)  # stderr is a pipe here, as in a CI log
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_a_stage_shows_a_bar_with_rate_and_is_silent_when_quiet(tmp_path):
    loud = run_prepare(tmp_path / "loud", quiet=False)
    done = FINISHED.search(loud)
    assert done and done.group(1) == done.group(2), loud[-1000:]
    # not a terminal: the bar prints when it starts and when it ends, not once a second
    assert loud.count("prepare train:") <= 3, loud
    quiet = run_prepare(tmp_path / "quiet", quiet=True)
    assert "prepare" not in quiet and "%|" not in quiet, quiet


@pytest.mark.parametrize("tty, interval", [(True, TTY_INTERVAL), (False, LOG_INTERVAL)])
def test_refresh_interval_follows_the_terminal(monkeypatch, tty, interval):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    stream = io.StringIO()
    stream.isatty = lambda: tty
    monkeypatch.setattr(progress_module.sys, "stderr", stream)
    with progress(range(3), desc="x", file=stream) as bar:
        assert bar.mininterval == interval and bar.total == 3


def test_tqdm_variables_still_win_and_a_total_is_required():
    # tqdm reads TQDM_* when it is imported, so this needs a fresh interpreter
    code = ("import io; from stages.pipeline.progress import progress; "
            "print(progress(range(3), desc='x', file=io.StringIO()).mininterval)")
    shown = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**run_env(), "TQDM_MININTERVAL": "5"},
                           capture_output=True, text=True)
    assert shown.stdout.strip() == "5.0", shown.stderr
    with pytest.raises(TypeError, match=r"progress\('gen'\): pass total="):
        progress((i for i in range(3)), desc="gen")
    with progress((i for i in range(3)), desc="gen", total=3, file=io.StringIO()) as bar:
        assert bar.total == 3
