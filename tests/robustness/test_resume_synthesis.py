"""Kill a real stage mid-run under `dvc repro`, rerun `dvc repro`: it resumes, and the outputs are the bytes
of an uninterrupted run (recover@delt, recover@infer, diffusion in train mode; caption and poster marked slow,
their resume being tested in tests/methods/vlcp/test_caption.py and tests/methods/podd/test_podd.py). Plus a
recover run that diverges: refused with the iteration and value, nothing saved.

One project with the upstream stages (prepare, teacher, rank, select, caption) is reproduced per module and
copied for every run, so each case pays only for its own stage (three times: whole, killed, resumed).
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, assert_nothing_left, assert_refused, dvc, make_project, merge, stage_env, \
    stage_processes, write_params

BASE = merge(TINY, {"teacher": {"archs": ["convnet"]}, "infer": {"teachers": ["convnet"]},
                    "edc": {"observers": ["convnet"]}})
TIMING = ("seconds", "per_second", "rate", "created")  # wall-clock fields: differ between any two runs


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    project = make_project(tmp_path_factory.mktemp("resume") / "upstream", BASE)
    shutil.copy(REPO / ".dvcignore", project / ".dvcignore")  # the resume folders are not part of any output
    dvc(project, "repro", "select", "caption")
    return project


def env(**extra: str) -> dict:
    return {**stage_env(), **extra}


def clone(upstream: Path, folder: Path, override: dict) -> Path:
    """The upstream project (its git, DVC cache and outputs) with these params for the stage under test."""
    shutil.copytree(upstream, folder, symlinks=True)
    write_params(folder, merge(BASE, override))
    return folder


def repro(project: Path, stage: str, **extra: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", "repro", stage], cwd=project, env=env(**extra),
                            capture_output=True, text=True)
    assert result.returncode == 0, f"dvc repro {stage} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def kill_mid_run(project: Path, stage: str, module: str, ready, sig: signal.Signals, **extra: str) -> None:
    """`dvc repro stage` until `ready(project)` (resume state on disk), then `sig` to the stage's python
    process (dvc's child); dvc reports the failure."""
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", stage], cwd=project, env=env(**extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready(project):
            assert proc.poll() is None, f"dvc repro {stage} ended before it could be killed:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, f"no resume state from {stage} in 120 s"
            time.sleep(0.02)
        stage_procs = stage_processes(proc.pid, module)
        assert stage_procs, f"no stages.{module} process under dvc"
        for child in stage_procs:
            child.send_signal(sig)
        log = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, f"dvc repro {stage} succeeded although its stage was killed:\n{log}"


def untimed(value):
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if not any(t in k for t in TIMING)}
    return [untimed(v) for v in value] if isinstance(value, list) else value


def contents(path: Path) -> dict[str, object]:
    """Every file under `path` by relative name: bytes, or for JSON the document without timing fields."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {f.relative_to(path).as_posix() if path.is_dir() else f.name:
            untimed(json.loads(f.read_text())) if f.suffix == ".json" else f.read_bytes() for f in files}


def complete_or_absent(project: Path, outs: list[str]) -> None:
    """After a kill DVC has deleted the outputs and the stage never renamed its temp folder into place."""
    for out in outs:
        assert not (project / out).exists(), f"{out} exists after a kill mid-run"


def check_resume(upstream: Path, tmp_path: Path, stage: str, module: str, override: dict, ready, sig,
                 outs: list[str], resumed: str, **extra: str) -> None:
    whole = clone(upstream, tmp_path / "whole", override)
    repro(whole, stage, **extra)
    killed = clone(upstream, tmp_path / "killed", override)
    kill_mid_run(killed, stage, module, ready, sig, **extra)
    complete_or_absent(killed, outs)
    log = repro(killed, stage, **extra)
    assert resumed in log, log
    for out in outs:
        assert contents(killed / out) == contents(whole / out), f"{out} differs from an uninterrupted run's"
    leftovers = [p.name for out in outs for p in (killed / out).parent.glob(f".{Path(out).name}.*")
                 if p.suffix in (".resume", ".checkpoint", ".partial")]
    assert not leftovers, f"resume state left after success: {leftovers}"


def saved(folder: str, pattern: str, count: int = 1):
    """ready(): at least `count` files matching `pattern` in the hidden resume folder `folder`."""
    return lambda project: len(list((project / folder).glob(pattern))) >= count


DISTILLED = "artifacts/digits/ipc3/distilled"


def test_delt_resumes_after_sigkill_from_its_finished_batches(upstream, tmp_path):
    override = {"delt": {"round_iterations": 25, "recover": {"iterations": 150, "ipc_per_batch": 1}}}
    check_resume(upstream, tmp_path, "recover@delt", "recover", override,
                 saved(f"{DISTILLED}/.delt.resume", "batch*.pt"), signal.SIGKILL,
                 [f"{DISTILLED}/delt", "artifacts/digits/ipc3/synthesis/delt.json"], "recover delt: resumed ")


def test_infer_resumes_after_sigterm_with_its_compensators(upstream, tmp_path):
    override = {"infer": {"recover": {"iterations": 300, "ipc_per_batch": 1}}}  # 2 base sets: 2 jobs
    check_resume(upstream, tmp_path, "recover@infer", "recover", override,
                 saved(f"{DISTILLED}/.infer.resume", "convnet.batch*.pt"), signal.SIGTERM,
                 [f"{DISTILLED}/infer", "artifacts/digits/ipc3/synthesis/infer.json"], "recover infer: resumed 1 of 2")


def test_diffusion_training_resumes_mid_unet_after_sigkill(upstream, tmp_path):
    # caption_fraction 0: no MiniLM encoding of ~1000 captions per run (a third of this case's time); the
    # condition dropout and the noise still draw from the generator the checkpoint restores
    override = {"diffusion": {"caption_fraction": 0.0, "train": {"vae_steps": 5, "unet_steps": 20}}}
    check_resume(upstream, tmp_path, "diffusion", "diffusion", override,
                 saved("artifacts/digits/.diffusion.resume", "train_unet.pt"), signal.SIGKILL,
                 ["artifacts/digits/diffusion", "artifacts/digits/diffusion.json"],
                 "diffusion: resumed train_unet at step",
                 DDPIPE_CHECKPOINT_SECONDS="0")


# caption's resume is also tested in methods/vlcp/test_caption.py (a failed run, a kill mid-write, LLaVA killed)
@pytest.mark.slow
def test_caption_resumes_after_sigterm(upstream, tmp_path):
    def started(project: Path) -> bool:
        partial = project / "artifacts/digits/.captions.resume/captions.partial.jsonl"
        return partial.exists() and partial.stat().st_size > 0

    # other class names: captions (and every downstream stage) rerun, upstream stays cached
    override = {"class_prompt": "a handwritten {name}"}
    check_resume(upstream, tmp_path, "caption", "caption", override, started, signal.SIGTERM,
                 ["artifacts/digits/captions"], "resumed: ")


# the poster's resume is also tested in methods/podd/test_podd.py (SIGKILL, the same bytes); dvc's side by the others
@pytest.mark.slow
def test_poster_resumes_after_sigterm(upstream, tmp_path):
    override = {"podd": {"epochs": 2, "checkpoint_every": 2}}  # 2 x ceil(1437 / 256) = 12 outer steps
    check_resume(upstream, tmp_path, "poster", "poster", override,
                 saved("artifacts/digits/podd0.9/distilled/.podd.resume", "state.pt"), signal.SIGTERM,
                 ["artifacts/digits/podd0.9/distilled/podd", "artifacts/digits/podd0.9/synthesis/podd.json"],
                 "poster: resuming at outer step")


def test_a_diverging_recover_is_refused_with_its_iteration_and_saves_nothing(upstream, tmp_path):
    project = clone(upstream, tmp_path / "diverged", {"sre2l": {"recover": {"r_bn": 1e39}}})  # BN term overflows
    result = subprocess.run([sys.executable, "-m", "stages.recover", "sre2l", "--teachers", "artifacts/digits/teachers",
                             "--init", "noise", "--data", "data/digits", "--out", f"{DISTILLED}/sre2l", "--stats",
                             "artifacts/digits/ipc3/synthesis/sre2l.json"], cwd=project, env=env(),
                            capture_output=True, text=True)
    assert_refused(result, "DivergedError", r"recover sre2l: batch of IPC indices \[0, 3\): loss = inf at "
                                            r"iteration 0 \(the first non-finite one\); nothing was saved - "
                                            r"lower sre2l\.recover\.lr or r_bn")
    assert_nothing_left(project / DISTILLED / "sre2l")
    assert not (project / "artifacts/digits/ipc3/synthesis/sre2l.json").exists()
    assert not list((project / DISTILLED / ".sre2l.resume").glob("*.pt"))  # the batch was not kept either
