"""Interrupted training stages resume: teacher, relabel and evaluate are killed mid-run under `dvc repro`
(SIGTERM or SIGKILL, the stage alone or dvc with it), rerun with `dvc repro`, and end with the bytes of an
uninterrupted run of the same project. A diverging loss stops a stage with DivergedError and nothing written.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest
import yaml

from tests.conftest import TINY, assert_nothing_left, assert_refused, dvc, make_project, merge, run_stage, \
    stage_env, stage_processes, workdir

ART = "artifacts/digits"
# Enough epochs that a kill lands mid-run on a fast machine, few enough to keep each case to seconds of training.
# evaluate: the fkd student finishes before the kill, the hard one (plans drawn from a generator) resumes.
SETTINGS = merge(TINY, {"prepare": {"image_size": 8}, "teacher": {"epochs": 4},
                        "evaluate": {"epochs": 40, "seeds": 1, "protocols": ["fkd", "hard"]}})


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    """One tiny project for the three cases: the stages upstream of each (prepare, teacher, baselines) run once."""
    return make_project(tmp_path_factory.mktemp("resume") / "project", SETTINGS)


def lock_outs(project: Path, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]
    return {out["path"]: out["md5"] for out in lock["outs"]}


def reference_then_forget(project: Path, stage: str) -> tuple[dict[str, str], Path]:
    """Reproduce `stage` uninterrupted; keep its outputs' hashes and a copy of them; then make the project forget
    that run: delete the outputs, the stage's dvc.lock entry and the run cache (else the rerun would check the
    reference outputs out of DVC's cache instead of running the stage)."""
    dvc(project, "repro", stage)
    outs, copy = lock_outs(project, stage), project.parent / f"reference-{stage}"
    for path in outs:
        (copy / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(project / path, copy / path)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    del lock["stages"][stage]
    (project / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    shutil.rmtree(project / ".dvc" / "cache" / "runs")
    return outs, copy


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def kill_mid_run(project: Path, stage: str, module: str, ready: Callable[[], bool], sig: signal.Signals,
                 whole_group: bool) -> None:
    """Start `dvc repro <stage>`, wait until `ready()` (a checkpoint exists), then send `sig` to the stage's
    process, or (whole_group) to dvc and everything it started, as a lost node would."""
    launcher = subprocess.Popen([sys.executable, "-m", "dvc", "repro", stage], cwd=project, env=stage_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        target, deadline = None, time.monotonic() + 300
        while launcher.poll() is None and time.monotonic() < deadline and not (target and ready()):
            target = target or next(iter(stage_processes(launcher.pid, module)), None)
            time.sleep(0.01)
        assert target and ready() and launcher.poll() is None, "the stage ended before it could be killed"
        os.killpg(launcher.pid, sig) if whole_group else target.send_signal(sig)
        launcher.wait(60)
        psutil.wait_procs([target], timeout=60)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()


def untimed(record: dict) -> dict:
    """A metrics record without its wall-clock fields (the only ones allowed to differ between runs)."""
    if isinstance(record, dict):
        return {k: untimed(v) for k, v in record.items() if "seconds" not in k and "per_second" not in k}
    return record


def test_teacher_resumes_after_sigterm_to_the_same_weights(pipeline):
    stage, out = "teacher@convnet", pipeline / ART / "teachers" / "convnet"
    reference, copy = reference_then_forget(pipeline, stage)
    state = out.with_name(".convnet.resume") / "train.pt"
    kill_mid_run(pipeline, stage, "teacher", state.exists, signal.SIGTERM, whole_group=False)
    assert_nothing_left(out)  # SIGTERM leaves through `finally`: no output, no temp folder
    log = dvc(pipeline, "repro", stage)
    assert re.search(r"teacher convnet: resumed from epoch [1-3] of 4", log), log
    assert files(out) == files(copy / out.relative_to(pipeline))  # model.safetensors, metrics, curves
    assert lock_outs(pipeline, stage) == reference
    assert not state.parent.exists()  # done: nothing left to resume


def test_relabel_resumes_after_sigkill_of_dvc_without_redoing_finished_epochs(pipeline):
    stage, out = "relabel@random", pipeline / ART / "ipc3" / "soft_labels" / "random"
    reference, copy = reference_then_forget(pipeline, stage)
    kept = out.with_name(".random.resume")
    kill_mid_run(pipeline, stage, "relabel", lambda: any(kept.glob("draw*-epoch_*.parquet")), signal.SIGKILL,
                 whole_group=True)
    assert not out.exists()  # atomic: a SIGKILL leaves at most a temp folder beside it (ignored by DVC)
    finished = len(list(kept.glob("draw0-epoch_*.parquet")))  # random: draw 0 is labelled first
    assert 0 < finished < 40
    log = dvc(pipeline, "repro", stage)
    assert f"relabel random: resumed - {finished} of 40 epochs kept in" in log, log
    assert files(out) == files(copy / out.relative_to(pipeline))
    assert lock_outs(pipeline, stage) == reference
    assert not kept.exists()


def test_evaluate_keeps_finished_students_and_resumes_the_next_after_sigkill(pipeline):
    stage, metrics = "evaluate@random", pipeline / ART / "ipc3" / "metrics" / "random.json"
    reference, copy = reference_then_forget(pipeline, stage)
    state = metrics.with_name(".random.json.resume")
    ready = lambda: (state / "fkd-seed0.json").exists() and (state / "hard-seed0.pt").exists()  # noqa: E731
    kill_mid_run(pipeline, stage, "evaluate", ready, signal.SIGKILL, whole_group=False)
    assert not metrics.exists()
    log = dvc(pipeline, "repro", stage)
    assert "evaluate random [fkd seed 0]: finished before the interruption; resumed" in log, log
    assert re.search(r"evaluate random \[hard seed 0\]: resumed from epoch \d+ of 40", log), log
    assert "[fkd seed 0]: top-1" not in log  # the finished student was not trained again
    reference_metrics = json.loads((copy / metrics.relative_to(pipeline)).read_text())
    assert untimed(json.loads(metrics.read_text())) == untimed(reference_metrics)
    curves = f"{ART}/ipc3/curves/random.csv"
    assert (pipeline / curves).read_bytes() == (copy / curves).read_bytes()
    assert lock_outs(pipeline, stage)[curves] == reference[curves]
    assert not state.exists()


@pytest.mark.parametrize("stage", ["teacher", "evaluate"])
def test_a_diverging_loss_stops_training_and_writes_nothing(prepared, stage):
    teacher = prepared / ART / "teachers" / "convnet"
    if stage == "teacher":
        folder = workdir(prepared, "diverging_teacher", {"teacher": {"lr": 1e6}})
        out = folder / "out" / "convnet"
        result = run_stage(folder, "teacher", "--arch", "convnet", "--data", "data/digits", "--out", str(out),
                           check=False)
        expected = r"teacher convnet: training loss is (nan|inf|-inf) at epoch 1, step \d+ of 23; nothing was written"
    else:
        folder = workdir(prepared, "diverging_student", {"evaluate": {"lr": 1e6, "protocols": ["hard"], "seeds": 1}})
        subset = f"{ART}/ipc3/distilled/random"
        run_stage(folder, "baseline", "random", "--data", "data/digits", "--out", subset)
        out = folder / "metrics.json"
        result = run_stage(folder, "evaluate", "--set", subset, "--labels", "unused", "--teacher", str(teacher),
                           "--data", "data/digits", "--epochs", "5", "--out", str(out), check=False)
        expected = r"evaluate random \[hard seed 0\]: training loss is (nan|inf|-inf) at epoch \d, step 1 of 1;"
    assert_refused(result, "DivergedError", expected)
    assert_nothing_left(out)
