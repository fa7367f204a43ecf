"""PoDD's differentiable augmentation (docs/methods/podd.md#rat-bptt): one op per batch, drawn from `ops`.

flip: each image mirrored with p = 0.5. rotate: each image turned by an angle uniform in ±15°
(bilinear, zero padding). Both are differentiable in the images, so the poster learns through them.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

OPS = ("flip", "rotate")
MAX_DEGREES = 15.0


def augment(images: torch.Tensor, ops: list[str], generator: torch.Generator) -> torch.Tensor:
    if not ops:
        return images
    op = ops[int(torch.randint(len(ops), (), generator=generator))]
    n = len(images)
    if op == "flip":  # random draws on the CPU generator whatever the device: the same stream everywhere
        mirrored = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        return torch.where(mirrored.view(n, 1, 1, 1), images.flip(-1), images)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(MAX_DEGREES)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros(n)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
