"""Two runs of the whole pipeline from scratch give the same dvc.lock: every output hashes the same.

The second run is a `git clone` of the tiny project the `reproduced` fixture ran (another folder, a fresh
DVC cache, no run-cache), as a second user would, and runs without SOURCE_DATE_EPOCH: nothing may depend
on the clock, the folder or the machine's load.
"""
from __future__ import annotations

import json
import subprocess
import sys

import yaml

from conftest import git, stage_env


def test_a_second_run_from_scratch_gives_the_same_dvc_lock(reproduced, tmp_path):
    project, _ = reproduced
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    git(clone, "reset", "-q", "--hard", "HEAD~1")  # the commit before the results: no dvc.lock
    assert not (clone / "dvc.lock").exists()
    env = {k: v for k, v in stage_env().items() if k != "SOURCE_DATE_EPOCH"}
    run = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=clone, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    locks = [yaml.safe_load((folder / "dvc.lock").read_text()) for folder in (project, clone)]
    outs = [{(stage, out["path"]): out.get("md5") for stage, entry in lock["stages"].items()
             for out in entry.get("outs", [])} for lock in locks]
    assert len(outs[0]) > 40 and all(outs[0].values())  # every stage's every output, each hashed
    differ = {key: (outs[0][key], outs[1].get(key)) for key in outs[0] if outs[0][key] != outs[1].get(key)}
    assert not differ, f"outputs that differ between the two runs: {differ}"
    assert locks[0] == locks[1]  # deps and params too: the whole file
    # What may not be in an output - wall time, host, finish time - is in each project's run log instead.
    logged = [json.loads(line) for line in (clone / "artifacts" / "runs.jsonl").read_text().splitlines()]
    assert {"teacher", "recover", "synthesize", "poster", "evaluate", "diffusion"} <= {r["stage"] for r in logged}
    assert all(r["seconds"] >= 0 and r["finished"] for r in logged)
