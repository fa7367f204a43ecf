"""The recover stage (sre2l, delt, infer) run as dvc.yaml runs it, in a folder sharing the prepared digits."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import TINY, merge, run_stage, write_params

FAST = {"ipc": 3, "sre2l": {"recover": {"iterations": 20}},
        "delt": {"round_iterations": 5, "recover": {"iterations": 20}},
        "infer": {"teachers": ["convnet"], "recover": {"iterations": 20}},
        "edc": {"observers": ["convnet"], "iterations": 10},
        "teacher": {"archs": ["convnet"]}}


def recover_project(prepared: Path, name: str, override: dict | None = None) -> Path:
    """A project folder sharing the prepared data and teacher, with its own params (FAST) and outputs."""
    folder = prepared / name
    folder.mkdir()
    for shared in ("stages", "data"):
        (folder / shared).symlink_to(prepared / shared)
    (folder / "artifacts" / "digits").mkdir(parents=True)
    (folder / "artifacts" / "digits" / "teachers").symlink_to(prepared / "artifacts" / "digits" / "teachers")
    write_params(folder, merge(merge(TINY, FAST), override or {}))
    return folder


def recover(folder: Path, method: str, init: str, out: str, check: bool = True):
    return run_stage(folder, "recover", method, "--teachers", "artifacts/digits/teachers", "--init", init,
                     "--data", "data/digits", "--out", out, "--stats", f"{out}.stats.json", check=check)


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}
