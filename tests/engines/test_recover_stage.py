"""The recover stage (sre2l, delt, infer) run as dvc.yaml runs it, on the shared prepared digits: the three
methods' sets, sharding, the settings it refuses, the output check, run(). Each method's own stage cases are in
tests/methods/<name>/."""
import json
from pathlib import Path

import pytest
import torch

from stages.data.distilled import load_set, read_labels
from tests.conftest import run_stage
from tests.support.recover import pngs, recover
from tests.support.recover import recover_project as workdir


def test_sre2l_delt_and_infer_write_complete_sets(prepared):
    folder = workdir(prepared, "methods")
    run_stage(folder, "rank", "--teacher", "artifacts/digits/teachers/convnet", "--data", "data/digits",
              "--out", "artifacts/digits/ranking.csv")
    run_stage(folder, "select", "--ranking", "artifacts/digits/ranking.csv", "--data", "data/digits",
              "--out", "init")

    recover(folder, "sre2l", "noise", "sre2l")
    card, images = load_set(folder / "sre2l", folder / "data" / "digits")
    assert card.method == "sre2l" and card.num_images == 30 and card.teacher["archs"] == ["convnet"]
    assert sorted(p.split("/")[1] for p in images.paths if p.startswith("4/")) == ["000.png", "001.png", "002.png"]
    assert card.synthesis["image_iterations"] == 30 * 20 and card.synthesis["saving_vs_sre2l"] == 0

    log = recover(folder, "delt", "init", "delt").stdout
    card, _ = load_set(folder / "delt", folder / "data" / "digits")
    # IPC 3 over 20 / 5 = 4 rounds: ranks join in rounds 0, 1, 2 → 20 + 15 + 10 of 3 x 20 updates per class
    assert card.synthesis["image_iterations"] == 10 * 45 and card.synthesis["saving_vs_sre2l"] == 0.25
    assert "vs 600 for SRe2L at the same 20 iterations: 25.0 % fewer" in log
    stats = json.loads((folder / "delt.stats.json").read_text())
    assert stats["image_iterations"] == 450 and not [k for k in stats if "second" in k]  # timings: the run log
    logged = [json.loads(line) for line in (folder / "artifacts" / "runs.jsonl").read_text().splitlines()]
    assert [r["image_iterations"] for r in logged if r["stage"] == "recover" and r["method"] == "delt"] == [450]
    assert all(r["image_iterations_per_second"] > 0 for r in logged)

    recover(folder, "infer", "data/digits/train", "infer")
    card, images = load_set(folder / "infer", folder / "data" / "digits")
    # ipc 3, C 10, M 1: 30 // 11 = 2 bases per class + 2 compensators → 2·(10 + 1) = 22 ≤ 30 stored images
    assert card.synthesis["ipc_init"] == 2 and card.synthesis["stored_images"] == 22 and card.num_images == 40
    labels, kind = read_labels(folder / "infer", card, images)
    assert kind == "logits" and labels.shape == (40, 10) and (labels.argmax(1) == images.labels).float().mean() > 0.8
    bases = [p for p in images.paths if p.split("/")[1] in ("000.png", "001.png")]
    train = {p.read_bytes() for p in (folder / "data" / "digits" / "train").rglob("*.png")}
    assert len(bases) == 20  # the bases are real train images, byte for byte
    assert sum((folder / "infer" / p).read_bytes() in train for p in bases) == 20


def test_a_stage_sharded_by_ipc_range_writes_the_same_images(prepared):
    whole = workdir(prepared, "whole", {"sre2l": {"recover": {"ipc_per_batch": 1}}})
    recover(whole, "sre2l", "noise", "out")
    parts = []
    for start, end in ((0, 1), (1, 3)):
        shard = workdir(prepared, f"shard{start}",
                        {"sre2l": {"recover": {"ipc_per_batch": 1, "ipc_start": start, "ipc_end": end}}})
        recover(shard, "sre2l", "noise", "out")
        parts.append(pngs(shard / "out"))
    assert len(parts[0]) == 10 and len(parts[1]) == 20
    assert {**parts[0], **parts[1]} == pngs(whole / "out")


@pytest.mark.parametrize("override, message", [
    ({"infer": {"ipc_init": 3}}, r"infer\.ipc_init = 3: 3·\(10 classes \+ 1 teachers\) = 33 stored images, "
                                 r"above the budget ipc·C = 30"),
    ({"sre2l": {"recover": {"ipc_end": 5}}}, r"sre2l\.recover\.ipc_end = 5: above ipc = 3"),
    ({"delt": {"round_iterations": 7}}, r"delt\.round_iterations = 7: must divide recover\.iterations = 20"),
    ({"infer": {"teachers": ["convnet", "vgg11"]}}, r"infer\.teachers\[1\] = 'vgg11': not one of teacher\.archs"),
])
def test_impossible_recover_settings_are_refused_by_name(prepared, override, message):
    folder = workdir(prepared, f"bad{abs(hash(message))}", override)
    result = recover(folder, "infer", "data/digits/train", "out", check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert __import__("re").search(message, result.stderr), result.stderr
    assert not (folder / "out").exists()


@pytest.mark.parametrize("method, init, message", [
    ("sre2l", "noise", r"recover sre2l: 30 of 30 images meant to be optimised did not move from their "
                       r"initialisation .* - class 0: rank 0 \(0\.000\), 1 \(0\.000\), 2 \(0\.000\); class 1:"),
    ("infer", "data/digits/train", r"recover infer: 2 of 2 images meant to be optimised did not move .* - "
                                   r"teacher convnet: base set 0 \(0\.000\), 1 \(0\.000\);"),
])
def test_a_recover_that_returns_its_input_fails_loudly(prepared, method, init, message):
    """A learning rate too small to change one uint8 level: the stage's own check on its output refuses."""
    from tests.conftest import assert_nothing_left, assert_refused

    folder = workdir(prepared, f"still_{method}", {method: {"recover": {"lr": 1e-12, "iterations": 2}}})
    assert_refused(recover(folder, method, init, "out", check=False), "NotOptimisedError", message)
    assert_nothing_left(folder / "out")


def test_recover_run_is_a_typed_function_tests_call_in_process(prepared, monkeypatch):
    from stages import recover as stage
    from stages.pipeline import params

    folder = workdir(prepared, "in_process", {"ipc": 1})
    monkeypatch.chdir(folder)
    monkeypatch.setenv("DDPIPE_RUN_LOG", str(folder / "runs.jsonl"))
    stats = stage.run(params.load(), "sre2l", Path("artifacts/digits/teachers"), "noise", Path("data/digits"),
                      Path("out"), Path("out.stats.json"))
    assert stats == json.loads((folder / "out.stats.json").read_text())
    assert stats == {"method": "sre2l", "images": 10, "image_iterations": 10 * 20,
                     "sre2l_image_iterations": 10 * 20, "saving_vs_sre2l": 0}
    card, images = load_set(folder / "out", folder / "data" / "digits")  # the card's hashes match the files
    assert card.num_images == 10 and torch.equal(images.labels, torch.arange(10))
    assert not (folder / ".out.resume").exists()  # the finished batches are cleared
