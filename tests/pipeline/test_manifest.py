"""prepare.copy: false: a manifest of the source files instead of PNG copies; every reader decodes the sources.

Same bytes: where the sources already are the prepared images (square, at prepare.image_size), the teacher,
the ranking and the distilled sets are those of copy: true."""
import json
import os

import numpy as np
import pytest
import torch

from stages.data.augment import Augment, crop_resize, plan_epoch, render
from stages.data.files import save_png
from stages.data.prepared import SourceImages, source_box
from stages.data.splits import Source, square
from stages.pipeline.errors import DataError
from tests.conftest import TINY, assert_refused, merge, run_stage, write_params

SIZE = 16


def sources(folder, shapes, seed=0):
    """PNGs of smooth random images (so resizing means something), one per (height, width)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(shapes):
        coarse = rng.integers(0, 256, (max(2, h // 4), max(2, w // 4), 3), dtype=np.uint8)
        array = np.asarray(__import__("PIL.Image").Image.fromarray(coarse).resize((w, h)))
        path = folder / f"{i:03d}.png"
        save_png(array, path)
        stat = os.stat(path)
        out.append((array, Source(path, stat.st_size, stat.st_mtime_ns)))
    return out


def test_sources_at_the_stage_size_give_the_copys_rows_and_crops_bit_for_bit(tmp_path):
    made = sources(tmp_path, [(SIZE, SIZE)] * 9)
    copy = torch.from_numpy(np.stack([a for a, _ in made])).permute(0, 3, 1, 2).contiguous()
    lazy = SourceImages([s for _, s in made], SIZE, workers=1)
    assert torch.equal(lazy[np.arange(9)], copy)
    plan = plan_epoch(9, 4, np.random.default_rng(1), Augment((0.08, 1.0), True, "cutmix", 1.0, SIZE))
    for batch in plan.batches():
        assert torch.equal(render(lazy, plan, batch, [0.5] * 3, [0.2] * 3, SIZE),
                           render(copy, plan, batch, [0.5] * 3, [0.2] * 3, SIZE))


def test_larger_sources_are_cropped_from_the_source_not_the_square(tmp_path):
    made = sources(tmp_path, [(48, 64), (40, 40)])
    lazy = SourceImages([s for _, s in made], SIZE, workers=1)
    # rows: the copy
    assert torch.equal(lazy[[0]][0].permute(1, 2, 0), torch.from_numpy(square(made[0][0], SIZE).copy()))
    box = np.array([[0.1, 0.2, 0.5, 0.5]], np.float32)
    x0, y0, x1, y1 = source_box(box[0], 48, 64)  # keeps area fraction, pixel aspect and relative position
    assert (x1 - x0) * (y1 - y0) == pytest.approx(0.25 * 48 * 64, rel=1e-5)
    assert (x1 - x0) / (y1 - y0) == pytest.approx(1.0, rel=1e-5)
    assert y0 / (48 - (y1 - y0)) == pytest.approx(0.1 / 0.5) and x0 / (64 - (x1 - x0)) == pytest.approx(0.2 / 0.5)
    # a square source: the box's fractions as they are; cut from the 40 px source, not from the 16 px copy
    box = np.array([[0.1, 0.2, 0.3, 0.3]], np.float32)  # 12 px of the source: enlarged, one sample per pixel
    crop = lazy.crops(np.array([1]), box, SIZE)
    from_source = crop_resize(torch.from_numpy(made[1][0].copy()).permute(2, 0, 1)[None].float() / 255, box, SIZE)
    from_copy = crop_resize(torch.from_numpy(square(made[1][0], SIZE)).permute(2, 0, 1)[None].float() / 255, box, SIZE)
    assert crop.shape == (1, 3, SIZE, SIZE)
    assert torch.equal(crop, from_source)
    assert not torch.equal(crop, from_copy)
    whole = lazy.crops(np.array([1]), np.array([[0, 0, 1, 1]], np.float32), SIZE)  # 40 px → 16: averaged samples
    resized = torch.from_numpy(square(made[1][0], SIZE).copy()).permute(2, 0, 1)[None] / 255
    assert (whole - resized).abs().mean() < 0.03


def test_a_source_changed_after_prepare_is_refused(tmp_path):
    (_, source), = sources(tmp_path, [(SIZE, SIZE)])
    lazy = SourceImages([source], SIZE, workers=1)
    lazy[[0]]
    os.utime(source.path, ns=(source.mtime_ns + 10 ** 9, source.mtime_ns + 10 ** 9))
    with pytest.raises(DataError, match="changed since prepare listed it"):
        lazy[[0]]


def project(folder, src, copy):
    folder.mkdir()
    (folder / "stages").symlink_to(os.path.abspath("stages"))
    write_params(folder, merge(TINY, {"dataset": "imagefolder", "ipc": 2,
                                      "prepare": {"root": str(src), "image_size": SIZE, "copy": copy}}))
    return folder


def test_copy_false_is_refused_for_datasets_without_files(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "stages").symlink_to(os.path.abspath("stages"))
    write_params(folder, merge(TINY, {"prepare": {"copy": False}}))
    assert_refused(run_stage(folder, "prepare", "--out", "data/digits", check=False), "ParamsError",
                   "prepare.copy = false: only for dataset imagefolder")


def test_prepare_lists_the_sources_and_readers_see_the_copys_pixels(tmp_path, monkeypatch):
    """Sources larger than and not square at image_size: the manifest lists them (no pixels written), and
    every whole image read through it is the copy's."""
    from stages.data.folder import load_imagefolder
    from stages.data.prepared import open_images
    from stages.data.splits import split_items

    src = tmp_path / "src"
    for split in ("train", "val"):
        for c, name in enumerate("ab"):
            (src / split / name).mkdir(parents=True)
            sources(src / split / name, [(20 + c, 27), (31, 24)], seed=c)
    data = {}
    for copy in (True, False):
        folder = project(tmp_path / f"copy_{copy}", src, copy)
        run_stage(folder, "prepare", "--out", "data/imagefolder")
        data[copy] = folder / "data" / "imagefolder"
    assert sorted(p.name for p in data[False].iterdir()) == ["classes.json", "manifest.parquet", "meta.json"]
    import pyarrow.parquet as pq
    rows = pq.read_table(data[False] / "manifest.parquet").to_pylist()
    assert [(r["split"], r["path"], r["name"], r["label"]) for r in rows][:2] == [
        ("train", "train/a/000.png", "a/000.png", 0), ("train", "train/a/001.png", "a/001.png", 0)]
    assert all(r["bytes"] == (src / r["path"]).stat().st_size for r in rows)
    monkeypatch.chdir(data[False].parent.parent)  # a manifest is read where params.yaml names its source root
    for split in ("train", "val"):
        copies = load_imagefolder(data[True] / split, ["a", "b"], SIZE)
        listed = open_images(data[False] / split, ["a", "b"], SIZE)
        assert listed.streamed and listed.paths == copies.paths and torch.equal(listed.labels, copies.labels)
        assert torch.equal(listed.images[np.arange(len(copies))], copies.images)
        assert [i.name for i in split_items(data[False] / split, ["a", "b"])] == copies.paths


@pytest.mark.slow
def test_copy_and_manifest_give_the_same_teacher_ranking_and_sets(tmp_path):
    src = tmp_path / "src"
    for split, n in (("train", 8), ("val", 3)):
        for c, name in enumerate("abc"):
            (src / split / name).mkdir(parents=True)
            sources(src / split / name, [(SIZE, SIZE)] * n, seed=10 * c + len(split))
    data, outs = "data/imagefolder", {}
    for copy in (True, False):
        folder = project(tmp_path / f"copy_{copy}", src, copy)
        run_stage(folder, "prepare", "--out", data)
        assert (folder / data / "manifest.parquet").exists() != copy and (folder / data / "train").exists() == copy
        teacher = "artifacts/teachers/convnet"
        run_stage(folder, "teacher", "--arch", "convnet", "--data", data, "--out", teacher)
        run_stage(folder, "rank", "--teacher", teacher, "--data", data, "--out", "ranking.csv")
        run_stage(folder, "select", "--ranking", "ranking.csv", "--data", data, "--out", "init")
        run_stage(folder, "baseline", "random", "--data", data, "--out", "random")
        run_stage(folder, "baseline", "full", "--data", data, "--out", "full")
        run_stage(folder, "relabel", "--set", "full", "--teacher", teacher, "--data", data, "--epochs", "1",
                  "--out", "labels")
        outs[copy] = folder
    a, b = outs[True], outs[False]
    meta_a, meta_b = (json.loads((f / data / "meta.json").read_text()) for f in (a, b))
    assert meta_b.pop("source_root") == str(src) and meta_a == meta_b  # same mean/std, counts, classes
    for path in ("artifacts/teachers/convnet/model.safetensors", "ranking.csv", "labels/epoch_0000.parquet"):
        assert (a / path).read_bytes() == (b / path).read_bytes(), path
    for folder in ("init", "random"):
        files = sorted(p.relative_to(a / folder) for p in (a / folder).rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b / folder) for p in (b / folder).rglob("*") if p.is_file())
        assert all((a / folder / f).read_bytes() == (b / folder / f).read_bytes() for f in files), folder
