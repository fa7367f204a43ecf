"""The teacher stage's typed work function, called in-process on the shared prepared digits.

Resuming, divergence and pretrained imports through the command line are in
tests/robustness/test_resume_training.py and tests/core/test_pretrained.py."""
from __future__ import annotations

import json
from pathlib import Path

from stages import teacher
from stages.models import load_checkpoint
from stages.pipeline import params
from tests.conftest import workdir


def test_teacher_run_trains_or_imports_in_process(prepared, monkeypatch):
    monkeypatch.setenv("DDPIPE_RUN_LOG", str(prepared / "teacher_in_process.runs.jsonl"))
    data = Path("data/digits")
    sha = json.loads((prepared / data / "meta.json").read_text())["classes_sha256"]

    monkeypatch.chdir(workdir(prepared, "teacher_in_process", {"teacher": {"epochs": 1}}))
    out = Path("artifacts/digits/teachers/convnet")
    metrics = teacher.run(params.load(), "convnet", data, out)
    assert metrics == json.loads((out / "metrics.json").read_text()) and metrics["best_epoch"] == 1
    _, meta = load_checkpoint(out, sha)
    assert meta["arch"] == "convnet" and meta["epochs"] == 1 and meta["num_classes"] == 10
    assert not (out.parent / ".convnet.resume").exists()  # the finished run's checkpoints are gone

    # the shared teacher's weights as a file: the imported folder measures the val top-1 the trained one recorded
    shared = prepared / "artifacts" / "digits" / "teachers" / "convnet"
    monkeypatch.chdir(workdir(prepared, "teacher_imported", {"teacher": {"source": {"convnet": {
        "type": "file", "weights": str(shared / "model.safetensors")}}}}))
    metrics = teacher.run(params.load(), "convnet", data, out)
    assert metrics == json.loads((out / "metrics.json").read_text()) and set(metrics) == {"top1", "top5"}
    assert metrics["top1"] == json.loads((shared / "metrics.json").read_text())["top1"]
    assert load_checkpoint(out, sha)[1]["source"]["type"] == "file"
