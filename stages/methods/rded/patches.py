"""RDED's selection (Sun et al., CVPR 2024; docs/methods/rded.md): per class, random square crops of candidate real
images scored by an observer's cross-entropy on the true class, the lowest-loss ones stitched factor x factor.
Used by the rded stage (realistic_crops.py) and by EDC's RDED starts (`edc.init: rded`); imports no stage code,
so a method that borrows it does not depend on RDED's stage."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stages.data.augment import crop_resize, sample_boxes
from stages.data.folder import normalise
from stages.models import predict


def candidate_patches(images: torch.Tensor, crops: int, patch: int, scale: tuple[float, float],
                      rng: np.random.Generator) -> torch.Tensor:
    """uint8 [M, 3, H, W] → float [M, crops, 3, patch, patch] in [0, 1]: square random crops of each image."""
    m = len(images)
    boxes = sample_boxes(m * crops, rng, scale, ratio=(1.0, 1.0))
    source = images.float().div(255).repeat_interleave(crops, 0)  # row j*crops + c: crop c of image j
    return crop_resize(source, boxes, patch).view(m, crops, 3, patch, patch)


def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre a patch in a size x size frame of zeros (the reference pads the normalised patch)."""
    dh, dw = size - x.shape[-2], size - x.shape[-1]
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def patch_losses(observer: torch.nn.Module, patches: torch.Tensor, label: int, mean, std, size: int) -> torch.Tensor:
    """Cross-entropy of the observer on the true class for every patch: [M, crops]."""
    m, crops = patches.shape[:2]
    x = pad_to(normalise(patches.flatten(0, 1), mean, std), size)
    logits = predict(observer, x)
    return F.cross_entropy(logits, torch.full((len(x),), label), reduction="none").view(m, crops)


def select_patches(losses: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each candidate's lowest-loss crop, then the n candidates whose kept crop has the lowest loss
    (ties by candidate order): (candidate index, crop index), best first."""
    if n > len(losses):
        raise ValueError(f"{n} patches wanted from {len(losses)} candidates")
    best, crop = losses.min(1)
    order = torch.sort(best, stable=True).indices[:n]
    return order, crop[order]


def stitch(patches: torch.Tensor, ipc: int, factor: int, size: int) -> torch.Tensor:
    """[ipc x factor², 3, p, p] best first → [ipc, 3, size, size]: image i, cell k (row-major) = patch k·ipc + i.
    When size is not a multiple of factor the first size % factor rows and columns are a pixel taller/wider."""
    side, extra = divmod(size, factor)
    heights = [side + (i < extra) for i in range(factor)]
    out = torch.zeros(ipc, patches.shape[1], size, size, dtype=patches.dtype)
    k, top = 0, 0
    for h in heights:
        left = 0
        for w in heights:
            part = patches[k * ipc:(k + 1) * ipc]
            if part.shape[-2:] != (h, w):
                part = F.interpolate(part, size=(h, w), mode="nearest")
            out[:, :, top:top + h, left:left + w] = part
            left, k = left + w, k + 1
        top += h
    return out


def distil_class(observer, images: torch.Tensor, label: int, cfg, ipc: int, size: int, mean, std,
                 rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
    """The ipc stitched images of one class (uint8) and what was scored."""
    n = ipc * cfg.factor ** 2
    chosen = rng.permutation(len(images))[:min(cfg.candidates, len(images))]
    patches = candidate_patches(images[torch.from_numpy(chosen)], cfg.crops, size // cfg.factor,
                                tuple(cfg.crop_scale), rng)
    losses = patch_losses(observer, patches, label, mean, std, size)
    index, crop = select_patches(losses, n)
    stitched = stitch(patches[index, crop], ipc, cfg.factor, size)
    pixels = stitched.mul(255).round().clamp(0, 255).to(torch.uint8)
    return pixels, {"candidates": len(chosen), "kept_loss_mean": float(losses.min(1).values[index].mean())}
