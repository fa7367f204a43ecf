"""Two runs of the whole pipeline from scratch give the same dvc.lock: every output hashes the same.

The project is committed once and cloned twice (two folders, two fresh DVC caches, no run-cache), as two
users would; both `dvc repro` run at the same time, without SOURCE_DATE_EPOCH, so nothing may depend on
the clock, the folder or the order the two runs interleave in.
"""
from __future__ import annotations

import json
import subprocess
import sys

import yaml

from conftest import TINY, git, make_project, merge, stage_env

# Every stage runs; only the loops are shorter than TINY's (this is about bytes, not accuracy).
SMALL = merge(TINY, {"evaluate": {"epochs": 4, "full_epochs": 1, "seeds": 1, "eval_points": 1},
                     "podd": {"eval": {"runs": 1, "steps": 2}}})


def test_two_runs_from_scratch_give_the_same_dvc_lock(tmp_path):
    origin = make_project(tmp_path / "origin", SMALL)
    env = {k: v for k, v in stage_env().items() if k != "SOURCE_DATE_EPOCH"} | {"DDPIPE_THREADS": "1"}
    clones = [tmp_path / name for name in ("first", "second")]
    runs = []
    for clone in clones:
        git(tmp_path, "clone", "-q", str(origin), str(clone))
        runs.append(subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=clone, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [run.communicate()[0] for run in runs]
    for run, log in zip(runs, logs):
        assert run.returncode == 0, log[-3000:]

    locks = [yaml.safe_load((clone / "dvc.lock").read_text()) for clone in clones]
    outs = [{(stage, out["path"]): out.get("md5") for stage, entry in lock["stages"].items()
             for out in entry.get("outs", [])} for lock in locks]
    assert len(outs[0]) > 40 and all(outs[0].values())  # every stage's every output, each hashed
    differ = {key: (outs[0][key], outs[1].get(key)) for key in outs[0] if outs[0][key] != outs[1].get(key)}
    assert not differ, f"outputs that differ between the two runs: {differ}"
    assert locks[0] == locks[1]  # deps and params too: the whole file
    # The measurements that must not be in an output are in each clone's run log instead.
    logged = [json.loads(line) for line in (clones[0] / "artifacts" / "runs.jsonl").read_text().splitlines()]
    assert {"teacher", "recover", "synthesize", "poster", "evaluate", "diffusion"} <= {r["stage"] for r in logged}
    assert all(r["seconds"] >= 0 and r["finished"] for r in logged)
