"""EDC (stages/methods/edc, docs/methods/edc.md): the statistics pass, the matching loss against the reference's
formula, the recover loop's schedule and saving, and the statistics + recover@edc stages on the shared digits."""
import io
import json

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from stages.data.distilled import load_set
from stages.methods.edc.matching import StatisticMatching, StatisticsPass, matched_layers
from stages.methods.edc.recipe import jpeg, plan_batches
from stages.methods.edc.statistics import augment
from tests.conftest import run_stage
from tests.support.models import tiny_teacher
from tests.support.recover import pngs, recover
from tests.support.recover import recover_project as workdir


def patch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per 4 x 4 patch position, mean and variance over (batch, channels, 4, 4) - written with unfold, not the
    code's reshape (a side below 4 is resized up bilinearly first, as the reference's F.interpolate)."""
    side = max(4, x.shape[-1])
    x = F.interpolate(x, [side, side], mode="bilinear") if side != x.shape[-1] else x
    cols = F.unfold(x, 4, stride=4)
    cols = cols.permute(2, 0, 1).reshape(cols.shape[2], -1)  # [positions, B x C x 16]
    return cols.mean(1), cols.var(1, unbiased=False)


def inputs_of(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    seen = []
    handles = [m.register_forward_hook(lambda _m, i, _o: seen.append(i[0].detach())) for _, m in matched_layers(model)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def test_the_statistics_pass_is_the_average_of_batch_and_per_class_image_statistics():
    model = tiny_teacher()  # convnet, batch norm: conv, bn, conv, bn (and the head is linear)
    torch.manual_seed(0)
    x, labels = torch.randn(12, 3, 8, 8), torch.tensor([0, 1, 2] * 4)
    stats = StatisticsPass(model, 3, len(x))
    with stats.hooked():
        stats.add_batch(model, x[:8], labels[:8])
        stats.add_batch(model, x[8:], labels[8:])
    got = stats.result()
    first, second = inputs_of(model, x[:8]), inputs_of(model, x[8:])
    kinds = [isinstance(m, nn.Conv2d) for _, m in matched_layers(model)]
    assert kinds[:2] == [True, False]
    for i, conv in enumerate(kinds):
        whole = torch.cat([first[i], second[i]])
        for c in range(3):  # a class's targets: the average of its images' own channel statistics
            mine = whole[labels == c]
            assert torch.allclose(got[f"{i:03d}.class_mean"][c], mine.mean((2, 3)).mean(0), atol=1e-5)
            assert torch.allclose(got[f"{i:03d}.class_var"][c], mine.var((2, 3), unbiased=False).mean(0), atol=1e-5)
        if conv:  # the global targets: per-batch statistics weighted by the batch's share (8/12, 4/12)
            var = lambda t: t.transpose(0, 1).flatten(1).var(1, unbiased=False)
            assert torch.allclose(got[f"{i:03d}.var"], (8 * var(first[i]) + 4 * var(second[i])) / 12, atol=1e-5)
            (m1, v1), (m2, v2) = patch_stats(first[i]), patch_stats(second[i])
            assert torch.allclose(got[f"{i:03d}.patch_mean"], (8 * m1 + 4 * m2) / 12, atol=1e-5)
            assert torch.allclose(got[f"{i:03d}.patch_var"], (8 * v1 + 4 * v2) / 12, atol=1e-5)
        else:  # BatchNorm's global targets are its running statistics: nothing stored
            assert f"{i:03d}.var" not in got


def test_the_matching_loss_is_the_references_formula_with_its_ema_and_swapped_patch_targets():
    model = tiny_teacher()
    torch.manual_seed(1)
    real, real_labels = torch.randn(30, 3, 8, 8), torch.arange(3).repeat(10)
    stats = StatisticsPass(model, 3, len(real))
    with stats.hooked():
        stats.add_batch(model, real, real_labels)
    targets = stats.result()
    x, labels = torch.randn(6, 3, 8, 8) * 0.7, torch.tensor([0, 0, 1, 1, 2, 2])
    layers = matched_layers(model)
    seen = inputs_of(model, x)

    def expected(scale: float, swap: bool) -> torch.Tensor:
        """0.5 (||g - ŝ|| + ||c - ŝ||) per statistic, ŝ's value = EMA = scale x s; first layer x 10."""
        total = []
        for i, (_, m) in enumerate(layers):
            s = {"mean": seen[i].mean((0, 2, 3)), "var": seen[i].transpose(0, 1).flatten(1).var(1, unbiased=False)}
            if isinstance(m, nn.Conv2d):
                s["patch_mean"], s["patch_var"] = patch_stats(seen[i])
            term = 0.0
            for stat, value in s.items():
                glob = targets[f"{i:03d}.{stat}"] if isinstance(m, nn.Conv2d) else getattr(m, f"running_{stat}")
                named = {"patch_mean": "patch_var", "patch_var": "patch_mean"}.get(stat, stat) if swap else stat
                cls = targets[f"{i:03d}.class_{named}"][labels].mean(0)
                term += 0.5 * ((glob - scale * value).norm() + (cls - scale * value).norm())
            total.append(term)
        return 10 * total[0] + sum(total[1:])

    for swap in (True, False):
        with StatisticMatching(model, targets, 0.8, 10.0, 0.0, swap, np.random.default_rng(0)) as matching:
            matching.start(labels)
            model(x)
            assert torch.allclose(matching.loss(), expected(0.2, swap), rtol=1e-5)  # EMA from 0: 0.2 s
            model(x)
            assert torch.allclose(matching.loss(), expected(0.36, swap), rtol=1e-5)  # 0.8 (0.2 s) + 0.2 s
            matching.start(labels)  # a new batch starts its EMAs from zero again
            model(x)
            assert torch.allclose(matching.loss(), expected(0.2, swap), rtol=1e-5)
            with matching.pause():  # the flatness forward adds nothing
                model(x)
            assert matching.terms == []


def test_the_matching_gradient_is_the_current_batchs_not_the_emas():
    model = tiny_teacher()
    targets = {}
    real = torch.randn(9, 3, 8, 8)
    stats = StatisticsPass(model, 3, 9)
    with stats.hooked():
        stats.add_batch(model, real, torch.arange(3).repeat(3))
    targets = stats.result()
    x = torch.randn(3, 3, 8, 8, requires_grad=True)
    with StatisticMatching(model, targets, 0.8, 10.0, 0.0, True, np.random.default_rng(0)) as matching:
        matching.start(torch.arange(3))
        model(x)
        loss = matching.loss()
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.abs().sum() > 0  # the gradient reaches the pixels through ŝ = ema + s - s.detach()


def test_batches_are_class_major_slices_and_observers_take_turns_across_them():
    # CIFAR-10's script: batch 10. IPC 1: one batch of every class; IPC 10: one class a batch.
    assert plan_batches(10, 1, 10) == [range(0, 10)]
    assert [list(b) for b in plan_batches(10, 10, 10)][:2] == [list(range(10)), list(range(10, 20))]
    assert [len(b) for b in plan_batches(3, 5, 4)] == [4, 4, 4, 3]  # slices may cross classes, as turn_index's
    order = torch.tensor(list(plan_batches(10, 10, 10)[3]))
    assert torch.equal(order // 10, torch.full((10,), 3)) and torch.equal(order % 10, torch.arange(10))


def test_the_saved_pixels_are_what_the_references_jpeg_files_decode_to():
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8))
    for i, array in enumerate(pixels.numpy()):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG")  # PIL's default quality, as the reference's .save
        assert np.array_equal(jpeg(pixels, 75)[i].numpy(), np.asarray(Image.open(buffer).convert("RGB")))
    assert jpeg(pixels, None) is pixels


def test_the_statistics_augmentation_pads_with_black_and_crops_each_image():
    x = torch.full((4, 3, 16, 16), 255, dtype=torch.uint8)
    out = augment(x, "pad", False, np.random.default_rng(3))
    assert out.shape == (4, 3, 16, 16) and out.max() == 1 and out.min() == 0  # some crop reaches the padding
    assert torch.equal(augment(x, "none", False, np.random.default_rng(0)), x.float() / 255)


# the stages on the shared digits

def edc_project(prepared, name, override=None):
    folder = workdir(prepared, name, override)
    run_stage(folder, "statistics", "--teachers", "artifacts/digits/teachers",
              "--data", "data/digits", "--out", "stats")
    return folder


def test_edc_recovers_real_starts_against_the_statistics_and_resumes_to_the_same_bytes(prepared):
    folder = edc_project(prepared, "edc")
    info = json.loads((folder / "stats" / "statistics.json").read_text())
    assert info["observers"] == {"convnet": 4}  # TINY convnet: depth 2, batch norm and info["images"] > 1000
    recover(folder, "edc", "stats", "out")
    card, images = load_set(folder / "out", folder / "data" / "digits")
    assert card.num_images == 30 and card.method == "edc" and card.synthesis["observers"] == ["convnet"]
    starts = card.synthesis["starts"]
    assert len(starts) == 30 and all(path.split("/")[0] == key.split("/")[0] for key, path in starts.items())
    assert json.loads((folder / "out.stats.json").read_text())["image_iterations"] == 30 * 10
    # a second run: the same bytes (each batch depends on its own index and seed)
    first = pngs(folder / "out")
    recover(folder, "edc", "stats", "again")
    assert pngs(folder / "again") == first


def test_edc_refuses_statistics_of_another_teacher(prepared):
    folder = edc_project(prepared, "edc_other")
    meta = folder / "stats" / "convnet.safetensors"
    from safetensors.torch import load_file, save_file
    save_file(load_file(meta), meta, metadata={"ddpipe": json.dumps({"teacher_sha256": "0" * 64})})
    result = recover(folder, "edc", "stats", "out", check=False)
    assert result.returncode == 2 and "made with another convnet teacher; rerun the statistics stage" in result.stderr
    assert not (folder / "out").exists()


def test_starts_are_drawn_per_image_as_the_reference_or_distinct_within_a_class_across_batches():
    from stages.methods.edc.recipe import start_rows

    members = [np.arange(0, 5), np.arange(5, 12)]
    labels, indices = torch.tensor([0] * 5 + [1] * 5), torch.tensor(list(range(5)) * 2)
    # distinct: the k-th of a class's seeded permutation, whichever batch (rng) holds the image
    halves = [start_rows(members, labels[s], indices[s], True, 0, np.random.default_rng(i))
              for i, s in enumerate((slice(0, 3), slice(3, 10)))]
    rows = halves[0] + halves[1]
    assert sorted(rows[:5]) == list(range(5)) and len(set(rows[5:])) == 5 and all(5 <= r < 12 for r in rows[5:])
    # independent (the reference's np.random.choice per image): every start from its own class, repeats allowed
    drawn = start_rows(members, torch.zeros(50, dtype=torch.long), torch.arange(50) % 5, False, 0,
                       np.random.default_rng(0))
    assert set(drawn) <= set(range(5)) and len(set(drawn)) < 50


def test_rded_starts_are_the_images_the_rded_stage_makes_with_the_same_knobs(prepared):
    """init rded: each class's starts are RDED's selection, made in-process; `rded` with the same knobs and
    observer writes exactly those pixels, and recover@edc refines them."""
    from stages.data.folder import read_classes
    from stages.data.prepared import open_images
    from stages.methods.edc.recipe import rded_class
    from stages.models.teachers import Teachers
    from stages.pipeline import params
    from stages.pipeline.artifacts import read_data_meta

    knobs = {"observer": "convnet", "candidates": 20, "crops": 2, "factor": 2, "crop_scale": [0.3, 1.0]}
    folder = edc_project(prepared, "edc_rded", {"rded": knobs, "edc": {"init": "rded", "rded": knobs}})
    run_stage(folder, "rded", "--teachers", "artifacts/digits/teachers", "--data", "data/digits", "--out", "rded")
    p = params.load(folder / "params.yaml", folder / "data")
    data = folder / "data" / "digits"
    classes, meta = read_classes(data), read_data_meta(data)
    teachers = Teachers(folder / "artifacts" / "digits" / "teachers", ["convnet"], meta)
    train = open_images(data / "train", classes, meta.image_size)
    _, rded_set = load_set(folder / "rded", data)
    for c in (0, 7):
        members = np.flatnonzero(train.labels.numpy() == c)
        starts = rded_class(p, teachers.models[0], train, members, c, classes[c], meta.image_size, teachers)
        assert torch.equal(starts, rded_set.images[rded_set.labels == c])
    recover(folder, "edc", "stats", "out")
    card, images = load_set(folder / "out", data)
    assert card.num_images == 30 and set(card.synthesis["starts"].values()) == {"rded 0", "rded 1", "rded 2"}
