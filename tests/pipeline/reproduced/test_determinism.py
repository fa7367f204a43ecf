"""Two runs of the whole pipeline from scratch give the same dvc.lock: every output hashes the same.

The `reproduced` fixture runs the tiny project and, at the same time, a `git clone` of it made before any
result (another folder, a fresh DVC cache, no run-cache) without SOURCE_DATE_EPOCH, as a second user
would: nothing may depend on the clock, the folder or how the two runs interleave.
The fixture is in this folder's conftest.py; the folder runs on one worker (tests/conftest.py).
"""
from __future__ import annotations

import json

import yaml


def test_a_second_run_from_scratch_gives_the_same_dvc_lock(reproduced):
    project, _ = reproduced
    second = project.parent / "second"
    assert (second / "dvc.lock").exists(), (second / "repro.log").read_text()[-3000:]

    locks = [yaml.safe_load((folder / "dvc.lock").read_text()) for folder in (project, second)]
    outs = [{(stage, out["path"]): out.get("md5") for stage, entry in lock["stages"].items()
             for out in entry.get("outs", [])} for lock in locks]
    assert len(outs[0]) > 40 and all(outs[0].values())  # every stage's every output, each hashed
    differ = {key: (outs[0][key], outs[1].get(key)) for key in outs[0] if outs[0][key] != outs[1].get(key)}
    assert not differ, f"outputs that differ between the two runs: {differ}"
    assert locks[0] == locks[1]  # deps and params too: the whole file
    # What may not be in an output - wall time, host, finish time - is in each project's run log instead.
    logged = [json.loads(line) for line in (second / "artifacts" / "runs.jsonl").read_text().splitlines()]
    assert {"teacher", "recover", "synthesize", "poster", "evaluate", "diffusion"} <= {r["stage"] for r in logged}
    assert all(r["seconds"] >= 0 and r["finished"] for r in logged)
