"""PoDD: poster geometry, PoDDL label cells, PoCO ordering, the NaN-safe differentiable Adam, ZCA, and the
poster stage end to end (outputs, resume after SIGKILL, bad params)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from tests.conftest import run_stage, stage_env, workdir
from stages.models.convnet import ConvNet
from stages.methods.podd import rat_bptt
from stages.methods.podd.geometry import (Geometry, auto_class_grid, crop_index, crops, effective_ipc, fixed_labels,
                                  initial_poster, placements, poster_size)
from stages.methods.podd.labels import crop_labels, crop_reader, initial_cells, label_grid
from stages.methods.podd.order import anti_diagonal, cosine_distances, embed, greedy_order
from stages.methods.podd.zca import fit

# The reference's README configs (docs/methods/podd.md#knobs-podd): poster, image, class grid, patch grid.
README_CONFIGS = {
    "cifar10": Geometry(153, 60, (32, 32), (5, 2), (16, 6)),
    "cifar100": Geometry(303, 303, (32, 32), (10, 10), (20, 20)),
    "cub": Geometry(610, 302, (32, 32), (20, 10), (60, 30)),
    "tiny": Geometry(1211, 608, (64, 64), (20, 10), (40, 20)),
    "digits": Geometry(76, 30, (16, 16), (5, 2), (16, 6)),
}


@pytest.mark.parametrize("name", README_CONFIGS)
def test_crops_cover_the_poster_edge_to_edge(name):
    g = README_CONFIGS[name]
    starts = g.crop_starts()
    h, w = g.image
    assert len(starts) == g.patch_grid[0] * g.patch_grid[1]
    assert starts[:, 0].min() == 0 and starts[:, 0].max() + w == g.width
    assert starts[:, 1].min() == 0 and starts[:, 1].max() + h == g.height
    covered = np.zeros((g.height, g.width), bool)
    for x, y in starts:
        covered[y:y + h, x:x + w] = True
    assert covered.all()
    # x-major: box k sits at x-index k // n_y
    assert (starts[:g.patch_grid[1], 0] == 0).all() and starts[g.patch_grid[1], 0] > 0
    # the gather equals slicing, crop by crop
    poster = torch.randn(3, g.height, g.width)
    every = crops(poster, crop_index(g))
    for k in (0, len(starts) // 2, len(starts) - 1):
        x, y = starts[k]
        assert torch.equal(every[k], poster[:, y:y + h, x:x + w])


def test_placements_round_half_to_even_and_span_the_length():
    assert placements(153, 32, 5).tolist() == [0, 30, 60, 91, 121]  # docs/methods/podd.md#geometry
    assert placements(60, 32, 2).tolist() == [0, 28]
    with pytest.raises(ValueError, match="does not fit"):
        placements(10, 16, 2)


def test_effective_ipc_from_pixels():
    assert README_CONFIGS["cifar10"].ipc == pytest.approx(9180 / 10240)  # 0.8965
    assert README_CONFIGS["cifar100"].ipc == pytest.approx(0.8966, abs=1e-4)
    assert README_CONFIGS["tiny"].ipc == pytest.approx(0.8988, abs=1e-4)
    assert effective_ipc(76, 30, 10, (16, 16)) == 0.890625
    assert poster_size(0.9, (5, 2), (16, 16)) == (76, 30)  # the digits default
    assert poster_size(0.9, (5, 2), (32, 32)) == (152, 61)  # the README's 153 x 60 is this, hand-tuned
    assert auto_class_grid(10) == (5, 2) and auto_class_grid(100) == (10, 10) and auto_class_grid(200) == (20, 10)
    with pytest.raises(ValueError, match="smaller than one"):
        Geometry(15, 30, (16, 16), (5, 2), (16, 6))


def test_fixed_labels_are_the_majority_class_of_each_crop():
    g = README_CONFIGS["cifar10"]
    order = np.arange(10).reshape(2, 5)
    labels = fixed_labels(g, order)
    assert labels.shape == (96, 10) and torch.allclose(labels.sum(1), torch.ones(96))
    counts = labels.argmax(1).bincount(minlength=10)
    assert counts.tolist() == [6, 12, 12, 12, 6, 6, 12, 12, 12, 6]  # docs/methods/podd.md#labels
    assert labels[0].argmax() == 0 and labels[-1].argmax() == 9  # top-left crop: order[0, 0]; bottom-right: [1, 4]
    assert fixed_labels(README_CONFIGS["cub"], np.arange(200).reshape(10, 20)).max(1).values.min() == 0.5  # ties


@pytest.mark.parametrize("name", README_CONFIGS)
@pytest.mark.parametrize("comp_ipc", [1, 2])
def test_every_class_owns_a_label_cell(name, comp_ipc):
    g = README_CONFIGS[name]
    order = np.random.default_rng(0).permutation(g.classes).reshape(g.class_grid[1], g.class_grid[0])
    grid = label_grid(g, comp_ipc)
    cells = initial_cells(g, order, grid)
    owner = cells.flatten(1).argmax(0)
    assert set(owner.tolist()) == set(range(g.classes))  # the reference leaves 10-20 % of classes with none
    assert (cells.sum(0) == 1).all()
    budget = g.classes * comp_ipc
    assert grid[0] * grid[1] < budget or grid[0] * grid[1] == g.classes  # below budget unless one per class
    reader = crop_reader(g, grid)
    assert reader.shape == (len(g.crop_starts()), grid[0] * grid[1]) and (reader.sum(1) >= 1).all()
    labels = crop_labels(cells, reader)
    assert torch.allclose(labels.sum(1), torch.ones(len(labels)))


def test_label_grid_keeps_the_reference_rule_where_it_leaves_no_class_out():
    # CIFAR-100 at comp_ipc 2: 200 vectors allowed; reference rule picks the largest grid strictly below
    assert label_grid(README_CONFIGS["cifar100"], 2) == (14, 14)
    # CIFAR-10 at comp_ipc 1: the reference's 1 x 6 leaves half the classes without a cell; we use 2 x 5
    assert label_grid(README_CONFIGS["cifar10"], 1) == (2, 5)


def test_all_zero_label_cell_gives_a_zero_label_not_nan():
    cells = torch.zeros(3, 1, 2, requires_grad=True)
    labels = crop_labels(cells, torch.eye(2))
    labels.sum().backward()
    assert torch.isfinite(labels).all() and torch.isfinite(cells.grad).all()


def test_poco_places_the_closest_pair_next_to_each_other():
    # six classes; class 0 is placed first, its nearest class is 4, and 4's nearest after 0 is 2
    d = np.full((6, 6), 0.9)
    np.fill_diagonal(d, 0)
    for a, b, v in ((0, 4, 0.1), (4, 2, 0.2), (2, 5, 0.3), (0, 1, 0.5)):
        d[a, b] = d[b, a] = v
    grid = greedy_order(d, 2, 3)
    pos = {int(c): (r, col) for (r, col), c in np.ndenumerate(grid)}
    assert abs(pos[0][0] - pos[4][0]) + abs(pos[0][1] - pos[4][1]) == 1
    assert sorted(grid.flatten().tolist()) == list(range(6))
    # on a line metric and a 1 x K grid the greedy walk from class 0 (an end) is the sorted order
    points = np.array([0.0, 5.0, 1.0, 3.0, 2.0, 4.0])
    line = np.abs(points[:, None] - points[None, :])
    assert greedy_order(line, 1, 6).flatten().tolist() == [0, 2, 4, 3, 5, 1]
    assert anti_diagonal(2, 3) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    with pytest.raises(ValueError, match="does not fill"):
        greedy_order(d, 2, 2)


def test_poco_text_distances_from_the_offline_minilm():
    from stages.generation.text import minilm_path

    names = ["cat", "dog", "truck", "automobile"]
    distance = cosine_distances(embed(names, minilm_path()))
    assert np.allclose(distance, distance.T) and np.allclose(np.diag(distance), 0)
    assert distance[2, 3] < distance[2, 0] and distance[0, 1] < distance[0, 2]  # truck~automobile, cat~dog


def test_differentiable_adam_matches_torch_adam():
    torch.manual_seed(0)
    net = nn.Linear(5, 3)
    x, y = torch.randn(8, 5), torch.randint(3, (8,))
    reference = torch.optim.Adam(net.parameters(), lr=0.01)
    params = {k: p.detach().clone() for k, p in net.named_parameters()}
    state = rat_bptt.AdamState.zeros(params)
    for _ in range(5):
        leaf = {k: p.requires_grad_() for k, p in params.items()}
        loss = rat_bptt.inner_loss(net, leaf, x, y)
        grads = dict(zip(leaf, torch.autograd.grad(loss, list(leaf.values()))))
        with torch.no_grad():
            params, state = rat_bptt.adam_step(params, grads, state, 0.01)
        reference.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        reference.step()
    for k, p in net.named_parameters():
        assert torch.allclose(params[k], p, atol=1e-6)


class GatedConvNet(nn.Module):
    """An instance-norm ConvNet plus a branch whose conv bias feeds an instance norm over a 1x1 map: that
    norm's output is exactly 0, so the bias (and its conv) get gradient exactly 0 and Adam's v stays 0.
    (In the ConvNet's own wider maps the same gradient is ~1e-8, analytically 0 but not in floats.)"""

    def __init__(self, classes: int):
        super().__init__()
        self.body = ConvNet(classes, 16, width=8, depth=2, norm="instance")
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(3, 4, 1), nn.GroupNorm(4, 4), nn.Flatten(),
                                  nn.Linear(4, classes))

    def forward(self, x):
        return self.body(x) + self.gate(x)


def _meta_gradient(net: nn.Module, sqrt, monkeypatch):
    monkeypatch.setattr(rat_bptt, "masked_sqrt", sqrt)
    torch.manual_seed(0)
    poster = torch.randn(3, 16, 40, requires_grad=True)
    g = Geometry(40, 16, (16, 16), (2, 1), (6, 1))
    run = rat_bptt.InnerRun(1e-3, window=3, minwindow=0, totwindow=3, batch_size=6, ops=["rotate"])
    loss, _ = rat_bptt.meta_loss(net, crops(poster, crop_index(g)), fixed_labels(g, np.array([[0, 1]])),
                                 torch.randn(8, 3, 16, 16), torch.randint(2, (8,)), run,
                                 torch.Generator().manual_seed(0))
    loss.backward()
    return poster.grad


def test_masked_sqrt_keeps_the_meta_gradient_finite(monkeypatch):
    torch.manual_seed(0)
    net = GatedConvNet(2)
    grad = _meta_gradient(net, rat_bptt.masked_sqrt, monkeypatch)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    # the trap is real: plain √v has an infinite derivative at v = 0 and poisons the whole poster
    assert torch.isnan(_meta_gradient(net, torch.sqrt, monkeypatch)).all()
    torch.manual_seed(0)
    assert torch.isfinite(_meta_gradient(ConvNet(2, 16, width=8, depth=2, norm="instance"), rat_bptt.masked_sqrt,
                                         monkeypatch)).all()


def test_norm_clip_limits_to_twice_the_running_norm():
    clip = rat_bptt.NormClip(0.9)
    first = torch.full((4,), 1.0)
    assert clip(first) == 2.0 and clip.ema == 2.0
    big = torch.full((4,), 10.0)  # norm 20; ema → 0.9·2 + 0.1·20 = 3.8; limit 7.6
    clip(big)
    assert big.norm().item() == pytest.approx(7.6)


def test_zca_whitens_to_identity_covariance():
    x = torch.randn(2000, 3, 4, 4) @ torch.randn(4, 4)  # correlated features
    zca = fit(x, reg=1e-5)
    white = zca(x).flatten(1).double()
    cov = white.T @ white / len(white)
    keep = zca.eigenvalues > 1e-4 * zca.eigenvalues.max()  # per-image centring removes one direction
    assert keep.sum() == 47
    eigenvalues = torch.linalg.eigvalsh(cov)
    assert torch.allclose(eigenvalues[-47:], torch.ones(47, dtype=torch.float64), atol=1e-2)
    assert eigenvalues[0] < 1e-2  # the removed direction stays removed
    regularised = fit(x, reg=0.1)  # reg shrinks the small-eigenvalue directions: λ / (λ + 0.1 mean λ) < 1
    white = regularised(x).flatten(1).double()
    assert torch.linalg.eigvalsh(white.T @ white / len(white))[-1] < 1
    assert torch.allclose(zca.unwhiten @ zca.whiten, torch.eye(48), atol=1e-3)


def test_initial_poster_is_unit_norm_noise_per_class_area():
    g = README_CONFIGS["digits"]  # class areas start at x 0, 15, 30, ... and y 0, 14: 1-px and 2-px overlaps
    poster = initial_poster(g, 3, torch.Generator().manual_seed(0))
    assert poster.shape == (3, 30, 76)
    generator = torch.Generator().manual_seed(0)
    first, second = (t / t.norm() for t in (torch.randn(3, 16, 16, generator=generator) for _ in range(2)))
    # tile 0 (top-left) alone left of x 15; tile 1 sits below it from y 14: over the 2 shared rows the top
    # tile's weight falls 1 → 0 (endpoints included), so row 14 is tile 0's and row 15 is tile 1's row 1
    assert torch.allclose(poster[:, :15, :15], first[:, :15, :15])
    assert torch.allclose(poster[:, 15, :15], second[:, 1, :15])
    assert 8 < poster.pow(2).sum() < 10.5  # ten unit-norm tiles, a little energy lost in the cross-fades


# ---- the stage ----------------------------------------------------------------------------------------

TINY_PODD = {"podd": {"inner": {"width": 8, "depth": 2, "lr": 0.001}, "window": 2, "totwindow": 4,
                      "epochs": 2, "checkpoint_every": 3, "eval": {"runs": 2, "steps": 5}}}


def poster_args(out: str = "poster"):
    return ("--data", "data/digits", "--out", f"out/{out}/podd", "--stats", f"out/{out}/podd.json")


def test_poster_stage_writes_a_complete_shareable_set(prepared):
    from stages.data.distilled import load_set, read_labels

    folder = workdir(prepared, "podd_set", TINY_PODD)
    log = run_stage(folder, "poster", *poster_args()).stdout
    out = folder / "out" / "poster" / "podd"
    card, images = load_set(out, folder / "data" / "digits")
    assert card.method == "podd" and card.ipc == 0.8906 and card.num_images == 96 == len(images)
    assert card.synthesis["pixels"] == 2280 and card.synthesis["outer_steps"] == 12  # 2 x ceil(1437 / 256)
    labels, kind = read_labels(out, card, images)
    assert kind == "probabilities" and torch.equal(labels.argmax(1), images.labels)
    with Image.open(out / "poster.png") as poster:
        assert poster.size == (76, 30)
    order = json.loads((out / "class_order.json").read_text())
    assert order["method"] == "text" and sorted(sum(order["grid"], [])) == list(range(10))
    assert len(order["distance"]) == 10
    geometry = json.loads((out / "geometry.json").read_text())
    assert geometry["effective_ipc"] == 0.890625 and len(geometry["crop_starts_xy"]) == 96
    stats = json.loads((folder / "out" / "poster" / "podd.json").read_text())
    assert stats["podd_protocol"]["after"]["top1"] > 0 and "PoDD protocol top-1" in log
    assert len(stats["podd_protocol"]["random_real_ipc1"]["per_run"]) == 2  # the real-data reference, 10 images
    assert len((out / "training.csv").read_text().splitlines()) == 13
    assert not (out.parent / ".podd.resume").exists()  # cleared once the set is written
    warmups = pd.read_csv(out / "training.csv").warmup_steps.tolist()  # warmup_draw step: c redrawn every step
    assert len(set(warmups[:6])) > 1 and set(warmups) <= {0, 1, 2}  # U[minwindow 0, totwindow 4 - window 2]


def test_poster_with_learnable_labels_and_zca(prepared):
    from stages.data.distilled import load_set, read_labels

    folder = workdir(prepared, "podd_poddl", {**TINY_PODD, "podd": {**TINY_PODD["podd"], "train_y": True,
                                                                      "zca": True, "order": "identity",
                                                                      "warmup_draw": "epoch"}})
    run_stage(folder, "poster", *poster_args())
    out = folder / "out" / "poster" / "podd"
    warmups = pd.read_csv(out / "training.csv").warmup_steps.tolist()  # PoDD's code: one c per epoch of 6 steps
    assert len(warmups) == 12 and len(set(warmups[:6])) == 1 and len(set(warmups[6:])) == 1
    card, images = load_set(out, folder / "data" / "digits")
    labels, _ = read_labels(out, card, images)
    assert card.synthesis["label_vectors"] == 10  # (2, 5) label grid: one cell per class at comp_ipc 1
    assert not torch.equal(labels, labels.round())  # learned: no longer one-hot
    assert (out / "zca.safetensors").exists()


def test_poster_resumes_after_sigkill_to_the_same_bytes(prepared):
    settings = {"podd": {**TINY_PODD["podd"], "epochs": 4, "checkpoint_every": 4}}
    whole = workdir(prepared, "podd_whole", settings)
    run_stage(whole, "poster", *poster_args())
    killed = workdir(prepared, "podd_killed", settings)
    proc = subprocess.Popen([sys.executable, "-m", "stages.methods.podd.poster", *poster_args()], cwd=killed,
                            env=stage_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "out" / "poster" / ".podd.resume" / "state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists(), "no checkpoint appeared before the run ended"
    step = torch.load(state, weights_only=True)["step"]
    assert 0 < step < 24
    log = run_stage(killed, "poster", *poster_args()).stdout
    assert f"resuming at outer step {step}" in log
    for name in ("poster.safetensors", "labels.safetensors", "poster.png", "training.csv", "0/0000.png"):
        a, b = (f / "out" / "poster" / "podd" / name for f in (whole, killed))
        assert a.read_bytes() == b.read_bytes(), name


@pytest.mark.parametrize("override, message", [
    ({"poster_class_num_x": 3, "poster_class_num_y": 3}, "poster_class_num_x x poster_class_num_y = 3 x 3: "
                                                         "must equal the 10 classes"),
    ({"poster_width": 100, "poster_height": 40}, "is 1.562 IPC, but podd.ipc = 0.9"),
    ({"poster_width": 100}, "set both or neither"),
    ({"distill_batch_size": 200}, "distill_batch_size = 200: above the 96 crops"),
    ({"window": 50}, "podd.totwindow = 4: below minwindow + window = 0 + 50"),
    ({"augment": ["flip", "crop"]}, "podd.augment.1 = 'crop'"),
])
def test_poster_rejects_bad_params(prepared, override, message):
    folder = workdir(prepared, f"podd_bad_{abs(hash(str(override)))}", {"podd": override})
    result = run_stage(folder, "poster", *poster_args(), check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (folder / "out").exists()


@pytest.mark.slow  # a whole (tiny) poster in this process: ~1 min on 2 shared cores; the stage's CLI is tested above
def test_poster_run_is_a_typed_function_tests_call_in_process(prepared, monkeypatch):
    from stages.methods.podd import poster
    from stages.pipeline import params

    folder = workdir(prepared, "podd_in_process", TINY_PODD)
    monkeypatch.chdir(folder)
    p = params.load(folder / "params.yaml", folder / "data")
    stats = poster.run(p, Path("data/digits"), Path("out/poster/podd"), Path("out/poster/podd.json"))
    assert stats == json.loads((folder / "out" / "poster" / "podd.json").read_text())
    assert stats["outer_steps"] == 12 and stats["crops"] == 96
    assert (folder / "out" / "poster" / "podd" / "card.json").exists()
