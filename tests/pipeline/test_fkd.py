"""Augmentation plans and FKD soft labels: replaying a stored epoch rebuilds the teacher's exact inputs; static
(shipped) labels follow the plan's mixing."""
import json

import numpy as np
import pytest
import torch

from stages.data.augment import Augment, plan_epoch, render
from stages.data.distilled import load_set
from stages.models import load_checkpoint, predict
from stages.training.soft_labels import epoch_file, read_epoch
from tests.conftest import assert_refused, run_stage, workdir

SET = "artifacts/digits/ipc3/distilled/random"
LABELS = "artifacts/digits/ipc3/soft_labels/random"
DRAW0 = LABELS + "/draw0"  # random is one subset per student seed: draw 0's labels
TEACHER = "artifacts/digits/teachers/convnet"


@pytest.fixture(scope="module")
def relabelled(prepared):
    run_stage(prepared, "baseline", "random", "--data", "data/digits", "--out", SET)
    run_stage(prepared, "relabel", "--set", SET, "--teacher", TEACHER, "--data", "data/digits",
              "--epochs", "3", "--out", LABELS)
    return prepared


@pytest.mark.parametrize("mix", ["cutmix", "mixup", "none"])
def test_plans_are_seeded_and_well_formed(mix):
    augment = Augment((0.3, 1.0), True, mix, 1.0, 16)
    a = plan_epoch(23, 10, np.random.default_rng(5), augment)
    b = plan_epoch(23, 10, np.random.default_rng(5), augment)
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("order", "boxes", "flips", "partner", "lam"))
    assert sorted(a.order) == list(range(23))
    top, left, height, width = a.boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 1 + 1e-6).all() and (left + width <= 1 + 1e-6).all()
    assert [s.stop - s.start for s in a.batches()] == [10, 10, 3]
    for s in a.batches():
        assert sorted(a.partner[s]) == list(range(s.stop - s.start))  # partners are a permutation of the batch
        assert len(set(a.lam[s])) == 1
        if mix == "cutmix":
            y0, y1, x0, x1 = a.cut[s][0]
            assert a.lam[s][0] == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 256)
        if mix == "none":
            assert a.lam[s][0] == 1 and list(a.partner[s]) == list(range(s.stop - s.start))


def test_full_box_without_flip_renders_the_image_itself():
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    plan = plan_epoch(4, 4, np.random.default_rng(0), Augment((1.0, 1.0), False, "none", 1.0, 16))
    plan.boxes[:] = [0, 0, 1, 1]
    out = render(images, plan, slice(0, 4), [0, 0, 0], [1, 1, 1], 16)
    assert torch.allclose(out, images[torch.from_numpy(plan.order)].float() / 255, atol=1e-6)


def test_cutmix_pastes_the_partner_inside_the_box():
    images = torch.stack([torch.full((3, 16, 16), v, dtype=torch.uint8) for v in (0, 255)])
    plan = plan_epoch(2, 2, np.random.default_rng(3), Augment((1.0, 1.0), False, "cutmix", 1.0, 16))
    plan.boxes[:] = [0, 0, 1, 1]
    plan.cut[:] = (2, 10, 4, 8)
    out = render(images, plan, slice(0, 2), [0, 0, 0], [1, 1, 1], 16)
    own = images[torch.from_numpy(plan.order)].float() / 255
    partner = own[torch.from_numpy(plan.partner)]
    assert torch.equal(out[:, :, 2:10, 4:8], partner[:, :, 2:10, 4:8])
    assert torch.equal(out[:, :, 10:], own[:, :, 10:])


def test_replaying_a_stored_epoch_gives_identical_crops_and_the_stored_logits(relabelled):
    root = relabelled
    meta = json.loads((root / DRAW0 / "fkd.json").read_text())
    assert meta["epochs"] == 3 and meta["num_images"] == 30 and len(list((root / DRAW0).glob("*.parquet"))) == 3
    _, images = load_set(root / SET, root / "data" / "digits")
    teacher, t_meta = load_checkpoint(root / TEACHER)
    norm = (t_meta["mean"], t_meta["std"])

    # The relabel stage drew its plans from this generator; draw them again to compare with the files.
    from stages.pipeline.params import load
    from stages.pipeline.seeds import derive_seed
    from stages.training.recipe import eval_augment, eval_batch_size
    p = load(root / "params.yaml", root / "data")
    rng = np.random.default_rng(derive_seed(p.seed, "relabel"))
    for epoch in range(3):
        fresh = plan_epoch(30, eval_batch_size(p.evaluate, 30, 10), rng, eval_augment(p.evaluate, 16))
        stored, logits = read_epoch(epoch_file(root / DRAW0, epoch))
        assert logits.dtype == torch.float16 and logits.shape == (30, 10)
        for s in stored.batches():
            replayed = render(images.images, stored, s, *norm, 16)
            assert torch.equal(replayed, render(images.images, fresh, s, *norm, 16))  # bit-identical crops
            assert torch.equal(predict(teacher, replayed).to(torch.float16), logits[s])  # the stored labels


def test_soft_labels_carry_the_teachers_knowledge(relabelled):
    _, logits = read_epoch(epoch_file(relabelled / DRAW0, 0))
    plan, _ = read_epoch(epoch_file(relabelled / DRAW0, 0))
    _, images = load_set(relabelled / SET, relabelled / "data" / "digits")
    labels = images.labels[torch.from_numpy(plan.order)]
    # Under cutmix the larger piece usually decides the teacher's top class.
    own_major = torch.from_numpy(plan.lam >= 0.5)
    agree = (logits.float().argmax(1) == labels)[own_major].float().mean()
    assert agree > 0.6


def test_evaluate_refuses_labels_stored_for_fewer_epochs(relabelled):
    result = run_stage(relabelled, "evaluate", "--set", SET, "--labels", LABELS, "--teacher", TEACHER,
                       "--data", "data/digits", "--epochs", "5", "--out", "m.json", check=False)
    assert result.returncode == 2
    assert "stored 3 epochs x batch 30 for 30 images; evaluate needs 5 x 30 for 30" in result.stderr


def test_renormalise_moves_between_normalisations_and_commutes_with_mixing():
    from stages.data.folder import normalise, renormalise

    pixels = torch.rand(4, 3, 8, 8)
    a, b = ([0.5, 0.4, 0.3], [0.2, 0.3, 0.4]), ([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    assert torch.allclose(renormalise(normalise(pixels, *a), a, b), normalise(pixels, *b), atol=1e-6)
    mixed = 0.3 * normalise(pixels, *a) + 0.7 * normalise(pixels.flip(0), *a)
    assert torch.allclose(renormalise(mixed, a, b), normalise(0.3 * pixels + 0.7 * pixels.flip(0), *b), atol=1e-6)
    x = normalise(pixels, *a)
    assert renormalise(x, a, a) is x


def test_static_labels_are_mixed_with_the_images_lambda():
    from stages.evaluate import static_labels

    logits = torch.randn(10, 4)
    plan = plan_epoch(10, 4, np.random.default_rng(0), Augment((0.5, 1.0), False, "mixup", 1.0, 8))
    mixed = static_labels(plan, logits)
    for batch in plan.batches():
        lam = float(plan.lam[batch][0])
        own = logits[plan.order[batch]]
        assert torch.allclose(mixed[batch], lam * own + (1 - lam) * own[plan.partner[batch]])
    plain = plan_epoch(10, 4, np.random.default_rng(0), Augment((0.5, 1.0), False, "none", 1.0, 8))
    assert torch.equal(static_labels(plain, logits), logits[plain.order])


def test_crops_are_torchvision_roi_align_without_importing_torchvision():
    """crop_resize loads torchvision's compiled kernel alone (importing the package costs relabel ~2.5 s)
    and gives the bytes `torchvision.ops.roi_align` gives."""
    import subprocess
    import sys

    script = """
import sys, numpy as np, torch
from stages.data.augment import crop_resize, sample_boxes
x = torch.rand(7, 3, 16, 16)
boxes = sample_boxes(7, np.random.default_rng(0), (0.2, 1.0))
out = crop_resize(x, boxes, 12)
assert "torchvision" not in sys.modules
from torchvision.ops import roi_align
top, left, h, w = (torch.from_numpy(boxes) * 16).unbind(1)
rois = torch.stack([torch.arange(7.0), left, top, left + w, top + h], 1)
assert torch.equal(out, roi_align(x, rois, output_size=12, spatial_scale=1.0, sampling_ratio=1, aligned=True))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _epoch(n: int = 37, classes: int = 10, seed: int = 0):
    plan = plan_epoch(n, 16, np.random.default_rng(seed), Augment((0.5, 1.0), True, "cutmix", 1.0, 16))
    return plan, torch.randn(n, classes, generator=torch.Generator().manual_seed(seed)) * 4


def test_topk_of_every_class_reads_back_the_dense_fp16_logits_bit_for_bit(tmp_path):
    """relabel.topk = C: the rebuilt rows are exactly today's dense rows, so evaluate (which only sees
    read_epoch's tensor) trains the same students."""
    from stages.training.soft_labels import write_epoch

    plan, logits = _epoch()
    write_epoch(tmp_path / "dense.parquet", plan, logits)
    write_epoch(tmp_path / "top.parquet", plan, logits, topk=10)
    dense_plan, dense = read_epoch(tmp_path / "dense.parquet")
    top_plan, top = read_epoch(tmp_path / "top.parquet")
    assert top.dtype == dense.dtype == torch.float16
    assert dense.numpy().tobytes() == top.numpy().tobytes()
    assert all(np.array_equal(getattr(dense_plan, k), getattr(top_plan, k))
               for k in ("order", "boxes", "flips", "partner", "lam", "cut"))


@pytest.mark.parametrize("k", [1, 3])
def test_topk_keeps_the_top_probabilities_and_spreads_the_rest_evenly(tmp_path, k):
    """FKD's marginal smoothing at temperature 1: the kept classes keep the teacher's probability, every other
    class gets an equal share of the teacher's remaining mass."""
    from stages.training.soft_labels import write_epoch

    plan, logits = _epoch(classes=12)
    write_epoch(tmp_path / "e.parquet", plan, logits, topk=k)
    _, rebuilt = read_epoch(tmp_path / "e.parquet")
    assert rebuilt.shape == logits.shape
    teacher, student = torch.softmax(logits.half().float(), 1), torch.softmax(rebuilt.float(), 1)
    kept = logits.topk(k, 1).indices
    assert torch.allclose(student.gather(1, kept), teacher.gather(1, kept), atol=2e-3)
    others = torch.ones_like(student, dtype=torch.bool).scatter(1, kept, False)
    rest = student[others].view(len(student), -1)
    assert torch.allclose(rest, rest[:, :1].expand_as(rest))  # evenly spread
    assert torch.allclose(rest.sum(1), 1 - teacher.gather(1, kept).sum(1), atol=2e-3)
    assert torch.equal(rebuilt.argmax(1), logits.argmax(1))


def test_topk_files_shrink_with_k(tmp_path):
    from stages.training.soft_labels import write_epoch

    plan, logits = _epoch(n=200, classes=100)
    sizes = {}
    for k in (None, 10, 1):
        write_epoch(tmp_path / f"{k}.parquet", plan, logits, topk=k)
        sizes[k] = (tmp_path / f"{k}.parquet").stat().st_size
    assert sizes[None] > 3 * sizes[10] and sizes[10] > sizes[1]


@pytest.mark.slow
def test_topk_of_every_class_gives_todays_evaluate_outputs(relabelled):
    """relabel.topk = 10 on digits (10 classes) and evaluate's fkd protocol: the same metrics file, byte for
    byte, as the dense labels."""
    folder = workdir(relabelled, "topk10", {"relabel": {"topk": 10}, "evaluate": {"protocols": ["fkd"], "seeds": 1}})
    dense = workdir(relabelled, "dense", {"evaluate": {"protocols": ["fkd"], "seeds": 1}})
    for project in (folder, dense):
        (project / "artifacts").symlink_to(relabelled / "artifacts")
        run_stage(project, "relabel", "--set", SET, "--teacher", TEACHER, "--data", "data/digits",
                  "--epochs", "3", "--out", "labels")
        run_stage(project, "evaluate", "--set", SET, "--labels", "labels", "--teacher", TEACHER,
                  "--data", "data/digits", "--epochs", "3", "--out", "m.json")
    assert json.loads((folder / "labels" / "fkd.json").read_text())["topk"] == 10
    epoch = "labels/epoch_0000.parquet"
    assert (folder / epoch).read_bytes() != (dense / epoch).read_bytes()
    assert (folder / "m.json").read_bytes() == (dense / "m.json").read_bytes()


def test_topk_above_the_class_count_is_refused(relabelled):
    folder = workdir(relabelled, "topk11", {"relabel": {"topk": 11}})
    (folder / "artifacts").symlink_to(relabelled / "artifacts")
    result = run_stage(folder, "relabel", "--set", SET, "--teacher", TEACHER, "--data", "data/digits",
                       "--epochs", "1", "--out", "labels", check=False)
    assert_refused(result, "ParamsError", "relabel.topk = 11: more than the 10 classes of data/digits")


def test_evaluate_run_is_a_typed_function_tests_call_in_process(relabelled, monkeypatch):
    """evaluate.run(params, ...) in this process: the metrics it returns are the file it writes, every
    protocol and seed trained on the stored labels, and the first student's curves written."""
    import csv
    import os
    from pathlib import Path

    from stages import evaluate
    from stages.pipeline import params
    from stages.pipeline.outputs import dir_bytes

    folder = workdir(relabelled, "evaluate_in_process", {"evaluate": {"protocols": ["fkd", "hard", "static"],
                                                                      "seeds": 2}})
    (folder / "artifacts").symlink_to(relabelled / "artifacts")
    monkeypatch.chdir(folder)
    monkeypatch.setenv("DDPIPE_RUN_LOG", os.devnull)
    p = params.load(folder / "params.yaml", folder / "data")
    metrics = evaluate.run(p, Path(SET), Path(LABELS), Path(TEACHER), Path("data/digits"), 3, Path("m.json"),
                           Path("curves.csv"))
    assert metrics == json.loads((folder / "m.json").read_text())
    assert list(metrics["protocols"]) == ["fkd", "hard"]  # random ships no labels: static is skipped
    assert metrics["label_bytes"] == {"fkd": dir_bytes(folder / DRAW0), "hard": 0}
    assert metrics["images"] == 30 and metrics["epochs"] == 3 and metrics["draws"] == 2
    assert all(len(r["per_seed_top1"]) == 2 for r in metrics["protocols"].values())
    rows = list(csv.DictReader((folder / "curves.csv").open()))
    assert {(r["protocol"], r["seed"]) for r in rows} == {(pr, s) for pr in ("fkd", "hard") for s in "01"}
    assert not list(folder.glob(".m.json*"))  # the resume folder is cleared


def test_relabel_run_is_a_typed_function_tests_call_in_process(relabelled, monkeypatch):
    """relabel.run(params, ...) in this process writes the files the stage's command line wrote, byte for byte."""
    import os
    from pathlib import Path

    from stages import relabel
    from stages.pipeline import params

    folder = workdir(relabelled, "relabel_in_process")
    (folder / "artifacts").symlink_to(relabelled / "artifacts")
    monkeypatch.chdir(folder)
    monkeypatch.setenv("DDPIPE_RUN_LOG", os.devnull)
    relabel.run(params.load(folder / "params.yaml", folder / "data"), Path(SET), Path(TEACHER), Path("data/digits"),
                3, Path("labels"))
    cli = relabelled / LABELS
    made = sorted(p.relative_to(folder / "labels").as_posix() for p in (folder / "labels").rglob("*") if p.is_file())
    assert made == sorted(p.relative_to(cli).as_posix() for p in cli.rglob("*") if p.is_file())
    assert "draw1/epoch_0002.parquet" in made
    assert all((folder / "labels" / name).read_bytes() == (cli / name).read_bytes() for name in made)
    assert not list(folder.glob(".labels*"))  # no temp or resume folder left


def test_relabel_teachers_label_each_crop_with_their_mean_logits(relabelled):
    """EDC's multi-teacher relabel: relabel.teachers' logits averaged, each teacher reading the crop in its own
    normalisation; one listed teacher gives the files evaluate.teacher alone gives; the folder is required."""
    both = ["convnet", "resnet18_modified"]
    root = workdir(relabelled, "ensemble", {"relabel": {"teachers": both}})
    (root / "artifacts/digits/teachers").mkdir(parents=True)
    (root / TEACHER).symlink_to(relabelled / TEACHER)
    run_stage(root, "teacher", "--arch", "resnet18_modified", "--data", "data/digits", "--out",
              "artifacts/digits/teachers/resnet18_modified")
    (root / SET).parent.mkdir(parents=True)
    (root / SET).symlink_to(relabelled / SET)
    args = ["--set", SET, "--teacher", TEACHER, "--data", "data/digits", "--epochs", "1"]
    refused = run_stage(root, "relabel", *args, "--out", "mean", check=False)
    assert_refused(refused, "ParamsError", r"relabel.teachers = \['convnet', 'resnet18_modified'\]: the stage needs "
                                           "--teachers")
    run_stage(root, "relabel", *args, "--teachers", "artifacts/digits/teachers", "--out", "mean")

    meta = json.loads((root / "mean/draw0/fkd.json").read_text())
    assert [t["arch"] for t in meta["teachers"]] == both and "teacher" not in meta
    plan, logits = read_epoch(epoch_file(root / "mean/draw0", 0))
    _, images = load_set(root / SET, root / "data" / "digits")
    teachers = [load_checkpoint(root / "artifacts/digits/teachers" / arch) for arch in both]
    for s in plan.batches():
        each = [predict(t, render(images.images, plan, s, m["mean"], m["std"], 16)) for t, m in teachers]
        assert not torch.equal(each[0], each[1])
        assert torch.equal(logits[s], ((each[0] + each[1]) / 2).to(torch.float16))

    one = workdir(relabelled, "ensemble_of_one", {"relabel": {"teachers": ["convnet"]}})
    (one / "artifacts").symlink_to(root / "artifacts")
    run_stage(one, "relabel", *args, "--teachers", "artifacts/digits/teachers", "--out", "one")
    assert (one / "one/draw0/epoch_0000.parquet").read_bytes() == \
        (relabelled / DRAW0 / "epoch_0000.parquet").read_bytes()
