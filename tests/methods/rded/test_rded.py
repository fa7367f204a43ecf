"""RDED: patch selection, the stitched layout, determinism, and the stage's set and card."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from stages.methods.rded import realistic_crops as rded
from stages.methods.rded import patches as selection
from stages.data.distilled import load_set


class ClassOfMeanBrightness(nn.Module):
    """A stand-in observer: the brighter the image, the more confident in class 0."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        z = self.scale * x.mean((1, 2, 3))
        return torch.stack([z, -z], 1)


def test_selection_keeps_each_candidates_best_crop_and_the_lowest_losses():
    losses = torch.tensor([[0.9, 0.5, 0.7],   # best crop 1 (0.5)
                           [0.2, 0.8, 0.3],   # best crop 0 (0.2)
                           [1.0, 1.1, 0.95],  # best crop 2 (0.95)
                           [0.4, 0.1, 0.6]])  # best crop 1 (0.1)
    index, crop = selection.select_patches(losses, 3)
    assert index.tolist() == [3, 1, 0] and crop.tolist() == [1, 0, 1]
    with pytest.raises(ValueError):
        selection.select_patches(losses, 5)


def test_observer_scores_pick_the_most_confident_patches():
    torch.manual_seed(0)
    patches = torch.rand(6, 2, 3, 4, 4)
    patches[4, 1] = 1.0  # the brightest patches: the lowest class-0 loss
    patches[2, 0] = 0.95
    losses = selection.patch_losses(ClassOfMeanBrightness(), patches, 0, [0.5] * 3, [0.5] * 3, 8)
    assert losses.shape == (6, 2)
    index, crop = selection.select_patches(losses, 2)
    assert index.tolist() == [4, 2] and crop.tolist() == [1, 0]


def test_stitched_layout_puts_patch_k_ipc_plus_i_in_cell_k_of_image_i():
    ipc, factor, size = 3, 2, 8
    patches = torch.arange(ipc * factor ** 2, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)
    out = selection.stitch(patches, ipc, factor, size)
    assert out.shape == (ipc, 3, size, size)
    for i in range(ipc):
        cells = [out[i, 0, 0, 0], out[i, 0, 0, 4], out[i, 0, 4, 0], out[i, 0, 4, 4]]  # row-major
        assert [int(c) for c in cells] == [k * ipc + i for k in range(4)]
    odd = selection.stitch(torch.rand(2 * 4, 3, 3, 3), 2, 2, 7)  # 7 = 4 + 3: first row/column a pixel bigger
    assert odd.shape == (2, 3, 7, 7)
    assert torch.equal(selection.stitch(patches[:ipc], ipc, 1, 4), patches[:ipc])  # factor 1: the patches themselves


def test_candidates_are_square_crops_and_deterministic_from_the_seed():
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    a = selection.candidate_patches(images, 4, 8, (0.08, 1.0), np.random.default_rng(1))
    b = selection.candidate_patches(images, 4, 8, (0.08, 1.0), np.random.default_rng(1))
    c = selection.candidate_patches(images, 4, 8, (0.08, 1.0), np.random.default_rng(2))
    assert a.shape == (5, 4, 3, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    whole = selection.candidate_patches(images, 1, 16, (1.0, 1.0), np.random.default_rng(0))[:, 0]
    assert torch.allclose(whole, images.float() / 255, atol=1e-6)  # a full-area square crop is the image


def test_padding_centres_a_patch_in_zeros():
    x = torch.ones(1, 3, 4, 4)
    padded = selection.pad_to(x, 8)
    assert padded.shape == (1, 3, 8, 8) and padded.sum() == 48 and padded[0, 0, 2:6, 2:6].min() == 1


def test_the_stage_writes_a_verified_set_with_its_card(prepared, monkeypatch):
    out = "artifacts/digits/ipc3/distilled/rded"
    monkeypatch.chdir(prepared)  # in-process, as dvc.yaml's command line runs it (no second torch import)
    monkeypatch.setattr(sys, "argv", ["rded", "--teachers", "artifacts/digits/teachers", "--data", "data/digits",
                                      "--out", out])
    rded.main()
    card, images = load_set(prepared / out, prepared / "data/digits")
    assert card.method == "rded" and card.ipc == 3 and len(images) == 30 == card.num_images
    assert card.teacher["archs"] == ["convnet"] and card.params["rded"]["factor"] == 1
    assert card.synthesis["patches_kept"] == 30
    assert torch.bincount(images.labels).tolist() == [3] * 10
    first = (prepared / out / "card.json").read_bytes()
    rded.main()
    assert (prepared / out / "card.json").read_bytes() == first  # same seed: the same files (the card hashes them)


def test_rded_run_is_a_typed_function_tests_call_in_process(prepared, monkeypatch):
    from pathlib import Path

    from stages.pipeline import params
    from tests.conftest import workdir

    folder = workdir(prepared, "rded_in_process", {"rded": {"factor": 2, "candidates": 20}})
    (folder / "artifacts" / "digits").mkdir(parents=True)
    (folder / "artifacts" / "digits" / "teachers").symlink_to(prepared / "artifacts" / "digits" / "teachers")
    monkeypatch.chdir(folder)
    monkeypatch.setenv("DDPIPE_RUN_LOG", str(folder / "runs.jsonl"))
    p = params.load()
    synthesis = rded.run(p, Path("artifacts/digits/teachers"), Path("data/digits"), Path("out"))
    card, images = load_set(folder / "out", folder / "data" / "digits")
    assert synthesis == card.synthesis and len(images) == 30
    # factor 2: four patches per image, from 20 candidates per class with rded.crops crops each
    assert synthesis["patches_kept"] == 10 * 3 * 4 and synthesis["patches_scored"] == 10 * 20 * p.rded.crops
