"""Streaming: a set over the memory budget is decoded batch by batch, with the same pixels, so stages
write the same bytes streamed or in memory (DDPIPE_MEMORY_GB=0 streams every set)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.data.augment import Augment, plan_epoch
from stages.data.folder import load_imagefolder, read_classes, save_png
from stages.data.stream import MEMORY_ENV, LazyImages, memory_budget
from stages.models import build
from stages.pipeline.errors import DataError, PipelineError
from stages.training.loop import Optim, hard_loss, train
from tests.conftest import run_stage, workdir

TEACHER = "artifacts/digits/teachers/convnet"


def load_both(folder: Path):
    classes = read_classes(folder.parents[0])
    return (load_imagefolder(folder, classes, stream=False), load_imagefolder(folder, classes, stream=True))


def test_streamed_rows_equal_in_memory_rows(prepared):
    memory, lazy = load_both(prepared / "data/digits/val")
    assert lazy.streamed and not memory.streamed and isinstance(lazy.images, LazyImages)
    assert lazy.images.shape == memory.images.shape and lazy.paths == memory.paths
    assert torch.equal(lazy.labels, memory.labels)
    n = len(memory)
    index = torch.from_numpy(np.random.default_rng(0).permutation(n)[:37])
    for idx in (5, -1, slice(3, 40), slice(None, None, 7), index, index.view(37, 1)[:36].view(4, 9),
                index.numpy(), [0, n - 1, 0]):
        assert torch.equal(lazy.images[idx], memory.images[idx]), idx
    norm = ([0.2, 0.3, 0.4], [0.5, 0.6, 0.7])
    mean, std = torch.tensor(norm[0]).view(1, 3, 1, 1), torch.tensor(norm[1]).view(1, 3, 1, 1)
    whole = (memory.images.float() / 255 - mean) / std
    assert torch.equal(lazy.normalised(*norm).tensor(batch_size=50), whole)  # batching changes no bit
    assert torch.equal(memory.normalised(*norm)[index], whole[index])
    assert torch.equal(lazy.normalised(*norm)[7], whole[7])
    with pytest.raises(IndexError, match=f"row {n} out of range"):
        lazy.images[torch.tensor([0, n])]


def test_a_training_epoch_holds_two_batches_and_decodes_each_image_once(prepared):
    classes = read_classes(prepared / "data/digits")
    lazy = load_imagefolder(prepared / "data/digits/train", classes, stream=True)
    memory = load_imagefolder(prepared / "data/digits/train", classes, stream=False)
    val = load_imagefolder(prepared / "data/digits/val", classes, stream=True)
    norm, batch, epochs = ([0.5] * 3, [0.25] * 3), 64, 2
    augment = Augment((0.5, 1.0), False, "cutmix", 1.0, 16)

    def fit(data, valset):
        torch.manual_seed(0)
        model = build("convnet", len(classes), 16, {"width": 8, "depth": 2, "norm": "batch"})
        rng = np.random.default_rng(0)
        history = train(model, data, norm, epochs, batch, lambda e: (plan_epoch(len(data), batch, rng, augment), None),
                        hard_loss, Optim("sgd", 0.05, 0.0), (valset.normalised(*norm), valset.labels), 1, "t")
        return model, history

    streamed, h_streamed = fit(lazy, val)
    # every image decoded once per epoch (the prefetched batch is exactly the next one), never the whole set
    assert lazy.images.decoded == epochs * len(lazy)
    assert lazy.images.largest_batch <= 2 * batch < len(lazy)
    assert 0 < val.images.decoded <= (epochs * len(val)) * 2 and val.images.largest_batch <= 2 * 512
    in_memory, h_memory = fit(memory, load_imagefolder(prepared / "data/digits/val", classes, stream=False))
    assert h_streamed.top1 == h_memory.top1 and h_streamed.loss == h_memory.loss
    assert all(torch.equal(a, b) for a, b in zip(streamed.state_dict().values(), in_memory.state_dict().values()))


def test_the_budget_picks_the_mode(prepared, monkeypatch):
    classes = read_classes(prepared / "data/digits")
    folder = prepared / "data/digits/val"
    monkeypatch.setenv(MEMORY_ENV, "0")
    assert load_imagefolder(folder, classes).streamed
    size = len(load_imagefolder(folder, classes)) * 3 * 16 * 16
    monkeypatch.setenv(MEMORY_ENV, str(size / 2 ** 30))  # exactly fits
    assert not load_imagefolder(folder, classes).streamed
    monkeypatch.setenv(MEMORY_ENV, str((size - 1) / 2 ** 30))
    assert load_imagefolder(folder, classes).streamed
    monkeypatch.delenv(MEMORY_ENV)
    assert memory_budget() > 0 and not load_imagefolder(folder, classes).streamed
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv(MEMORY_ENV, bad)
        with pytest.raises(PipelineError, match=f"{MEMORY_ENV}='{bad}'"):
            memory_budget()


@pytest.fixture
def small_folder(prepared, tmp_path) -> tuple[Path, list[str]]:
    classes = read_classes(prepared / "data/digits")
    root = tmp_path / "val"
    for name in classes:
        files = sorted((prepared / "data/digits/val" / name).iterdir())[:3]
        (root / name).mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, root / name / f.name)
    return root, classes


def test_an_unreadable_image_is_named_when_its_batch_streams(small_folder):
    root, classes = small_folder
    bad = sorted((root / classes[4]).iterdir())[1]
    bad.write_bytes(b"not a png")
    lazy = load_imagefolder(root, classes, 16, stream=True)  # no up-front decode: the error comes with the rows
    assert lazy.images[:3].shape == (3, 3, 16, 16)  # rows before it stream fine
    with pytest.raises(DataError, match=f"{bad}: unreadable image"):
        lazy.images[torch.arange(len(lazy))]
    with pytest.raises(DataError, match=f"{bad}: unreadable image"):
        load_imagefolder(root, classes, 16, stream=False)


def test_an_image_of_another_size_is_named_when_its_batch_streams(small_folder):
    root, classes = small_folder
    odd = sorted((root / classes[7]).iterdir())[2]
    save_png(np.zeros((12, 20, 3), np.uint8), odd)
    lazy = load_imagefolder(root, classes, 16, stream=True)
    with pytest.raises(DataError, match=f"{odd}: is 20x12, other images are 16x16"):
        lazy.normalised([0] * 3, [1] * 3).tensor()
    with pytest.raises(DataError, match=f"{odd}: is 20x12, expected 16x16"):
        load_imagefolder(root, classes, 16, stream=False)
    first = sorted((root / classes[0]).iterdir())[0]
    save_png(np.zeros((12, 20, 3), np.uint8), first)  # the first image sets the shape: checked against image_size
    with pytest.raises(DataError, match=f"{first}: is 20x12, expected 16x16"):
        load_imagefolder(root, classes, 16, stream=True)


def outputs(folder: Path, paths: list[str]) -> dict[str, bytes]:
    return {p: (folder / p).read_bytes() for p in paths}


@pytest.mark.slow  # ~65 s: every streaming stage twice; CI checks the streamed rows equal the in-memory rows above
def test_stages_write_the_same_bytes_streamed(prepared, monkeypatch):
    """teacher, rank, relabel and evaluate of the full train set, in memory and with every set streamed."""
    folder = workdir(prepared, "streamed", {"evaluate": {"protocols": ["fkd", "hard"], "seeds": 1}})
    (folder / "artifacts").mkdir()
    full = "artifacts/digits/full/distilled/full"
    run_stage(folder, "baseline", "full", "--data", "data/digits", "--out", full)
    written = {}
    for mode, budget in (("memory", "8"), ("stream", "0")):
        monkeypatch.setenv(MEMORY_ENV, budget)
        teacher, labels = f"{mode}/teacher", f"{mode}/soft_labels"
        log = run_stage(folder, "teacher", "--arch", "convnet", "--data", "data/digits", "--out", teacher).stdout
        assert ("streaming" in log) == (mode == "stream")
        run_stage(folder, "rank", "--teacher", teacher, "--data", "data/digits", "--out", f"{mode}/ranking.csv")
        run_stage(folder, "relabel", "--set", full, "--teacher", teacher, "--data", "data/digits", "--epochs", "2",
                  "--out", labels)
        run_stage(folder, "evaluate", "--set", full, "--labels", labels, "--teacher", teacher, "--data",
                  "data/digits", "--epochs", "2", "--out", f"{mode}/metrics.json")
        written[mode] = (outputs(folder / mode, ["teacher/model.safetensors", "teacher/metrics.json", "ranking.csv",
                                                 "soft_labels/epoch_0000.parquet", "soft_labels/epoch_0001.parquet"]),
                         json.loads((folder / mode / "metrics.json").read_text()))
    assert written["stream"] == written["memory"]
