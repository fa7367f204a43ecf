"""Batched augmentation driven by an explicit per-epoch plan.

A plan fixes, for one epoch, the image order, each slot's crop box and flip, and each batch's mix
partner, λ and cutmix box. Teacher training, online-KD, hard-label training and FKD relabelling all
draw plans from the same function; FKD stores them in Parquet, so replaying an epoch rebuilds the
exact crops the teacher saw. Rendering works on a whole batch at once (one roi_align call), never on
PIL images one by one.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.machinery
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.data.folder import normalise


@dataclass(frozen=True)
class Augment:
    crop_scale: tuple[float, float]  # area fraction of RandomResizedCrop boxes; (1, 1) = no crop
    flip: bool
    mix: str  # "cutmix" | "mixup" | "none"
    mix_alpha: float
    image_size: int


@dataclass
class EpochPlan:
    batch_size: int
    mix: str
    order: np.ndarray  # int64 [N] image index of each slot
    boxes: np.ndarray  # float32 [N, 4] crop (top, left, height, width) as fractions of the image
    flips: np.ndarray  # bool [N]
    partner: np.ndarray  # int64 [N] in-batch position of the slot's mix partner
    lam: np.ndarray  # float32 [N] weight of the slot's own image (one value per batch)
    cut: np.ndarray  # int64 [N, 4] cutmix box y0, y1, x0, x1 in output pixels (one per batch)

    def batches(self) -> list[slice]:
        n = len(self.order)
        return [slice(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]


def sample_boxes(n: int, rng: np.random.Generator, scale: tuple[float, float],
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """RandomResizedCrop boxes (top, left, height, width) as fractions: area in `scale`, aspect in `ratio`
    (RDED's patches are square: ratio (1, 1), which draws the same random numbers)."""
    area = rng.uniform(*scale, size=n)
    ratio = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=n))
    width = np.minimum(np.sqrt(area * ratio), 1.0)
    height = np.minimum(np.sqrt(area / ratio), 1.0)
    top = rng.uniform(size=n) * (1 - height)
    left = rng.uniform(size=n) * (1 - width)
    return np.stack([top, left, height, width], 1).astype(np.float32)


def crop_resize(x: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """Each image's box resized bilinearly to size x size in one roi_align call.

    One sample per output pixel, at the pixel centres, so a full-image box is the identity (as in
    torchvision's RandomResizedCrop, which only ever upsamples here).
    """
    _, _, h, w = x.shape
    top, left, bh, bw = torch.from_numpy(boxes).unbind(1)
    rois = torch.stack([torch.arange(len(x), dtype=torch.float32), left * w, top * h,
                        (left + bw) * w, (top + bh) * h], 1).to(device=x.device, dtype=x.dtype)
    kernel = roi_align_kernel(differentiable=torch.is_grad_enabled() and x.requires_grad)
    return kernel(x, rois, 1.0, size, size, 1, True)  # spatial scale, out h, w, sampling ratio, aligned


@functools.cache
def roi_align_kernel(differentiable: bool = True):
    """torchvision's compiled roi_align, the kernel `torchvision.ops.roi_align` calls on the CPU and GPU.

    Its backward is registered by torchvision's Python package (`torchvision._autograd_registrations`), so
    wherever a gradient must flow through a crop (recover) the package is imported. Importing it also imports
    torch._dynamo (seconds at a stage's start), which a stage that only augments without gradients (relabel)
    never needs: there the ops library is loaded on its own, and where that fails, the package loads it.
    """
    if differentiable:
        import torchvision  # noqa: F401 (registers roi_align's autograd kernel)
        return torch.ops.torchvision.roi_align
    folder = Path(importlib.util.find_spec("torchvision").origin).parent
    libraries = [folder / f"{name}{suffix}" for name in ("_C_stable", "_C")
                 for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    for library in filter(Path.exists, libraries):
        with contextlib.suppress(OSError):
            torch.ops.load_library(str(library))
            break
    if not hasattr(torch.ops.torchvision, "roi_align"):
        import torchvision.ops  # noqa: F401 (registers the ops)
    return torch.ops.torchvision.roi_align


def plan_epoch(n: int, batch_size: int, rng: np.random.Generator, aug: Augment) -> EpochPlan:
    order = rng.permutation(n)
    boxes = sample_boxes(n, rng, aug.crop_scale)
    flips = rng.uniform(size=n) < 0.5 if aug.flip else np.zeros(n, bool)

    partner, lam, cut = np.arange(n), np.ones(n, np.float32), np.zeros((n, 4), np.int64)
    size = aug.image_size
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        if aug.mix == "none":
            partner[s:e] = np.arange(e - s)
            continue
        partner[s:e] = rng.permutation(e - s)
        weight = rng.beta(aug.mix_alpha, aug.mix_alpha)
        if aug.mix == "cutmix":  # box of area (1 - λ), then λ corrected to the clipped box
            side = math.sqrt(1 - weight)
            cy, cx = rng.integers(size, size=2)
            h, w = int(size * side), int(size * side)
            y0, y1 = np.clip([cy - h // 2, cy + h // 2], 0, size)
            x0, x1 = np.clip([cx - w // 2, cx + w // 2], 0, size)
            cut[s:e] = (y0, y1, x0, x1)
            weight = 1 - (y1 - y0) * (x1 - x0) / size ** 2
        lam[s:e] = weight
    return EpochPlan(batch_size, aug.mix, order, boxes, flips, partner, lam, cut)


def plain_epoch(order: np.ndarray, batch_size: int) -> EpochPlan:
    """An epoch without augmentation: every image whole, unflipped and unmixed, in `order`."""
    n = len(order)
    return EpochPlan(batch_size, "none", order, np.tile(np.array([0, 0, 1, 1], np.float32), (n, 1)),
                     np.zeros(n, bool), np.arange(n) % batch_size, np.ones(n, np.float32), np.zeros((n, 4), np.int64))


def render(images, plan: EpochPlan, batch: slice, mean, std, size: int) -> torch.Tensor:
    """The normalised, cropped, flipped and mixed float batch for one slice of a plan.

    `images`: the uint8 N x 3 x H x W tensor, a streamed LazyImages (stages/data/stream.py), or the source
    files of a dataset prepared without copies, whose `crops` cut each box from the source image itself
    (stages/data/prepared.py)."""
    from_source = hasattr(images, "crops")
    if from_source:
        x = images.crops(plan.order[batch], plan.boxes[batch], size)
    else:
        src = images[torch.from_numpy(plan.order[batch])].float().div_(255)
    if hasattr(images, "prefetch"):  # streamed set: decode the same slice of the next batch while this one trains
        ahead = plan.order[batch.start + plan.batch_size:batch.stop + plan.batch_size]
        if len(ahead):
            images.prefetch(ahead)
    if not from_source:
        x = crop_resize(src, plan.boxes[batch], size)
    flips = torch.from_numpy(plan.flips[batch]).view(-1, 1, 1, 1)
    x = normalise(torch.where(flips, x.flip(3), x), mean, std)
    if plan.mix == "none":
        return x
    partner = torch.from_numpy(plan.partner[batch])
    if plan.mix == "mixup":
        lam = float(plan.lam[batch][0])
        return lam * x + (1 - lam) * x[partner]
    y0, y1, x0, x1 = (int(v) for v in plan.cut[batch][0])
    x[:, :, y0:y1, x0:x1] = x[partner][:, :, y0:y1, x0:x1]
    return x
