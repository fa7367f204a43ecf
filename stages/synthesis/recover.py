"""The recover primitive shared by SRe2L, DELT and INFER (research/sre2l_family.md §0.3, §3.2).

Pixels (in the teacher's normalised space) are optimised so the frozen teacher classifies them as
their labels while the statistics of every BatchNorm input match the teacher's running statistics.
Adam(β = 0.5, 0.9), learning rate cosine from `lr` to 0, one random crop / flip / roll per iteration for
the whole batch (as the references' batched torchvision transforms do), pixels clamped to the valid
range after every step. EarlyLate: an image joins at its `join` iteration; before that it is outside
the forward pass, so its pixels, its Adam state and the batch's BN statistics ignore it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from stages.data.augment import crop_resize, sample_boxes
from stages.pipeline.errors import PipelineError
from stages.pipeline.seeds import derive_seed
from stages.synthesis.bn_matching import BNStatisticsLoss


@dataclass(frozen=True)
class RecoverConfig:
    iterations: int
    lr: float
    r_bn: float
    first_bn_multiplier: float
    r_var: float
    jitter: int  # max roll in pixels
    crop_min_scale: float  # 1.0 = no crop; < 1 with `crop_schedule`
    crop_schedule: str  # "fixed": area in [crop_min_scale, 1] throughout; "cosine": min decays 1 → crop_min_scale
    flip: bool


def crop_min(cfg: RecoverConfig, t: int) -> float:
    if cfg.crop_schedule == "fixed":
        return cfg.crop_min_scale
    return cfg.crop_min_scale + (1 - cfg.crop_min_scale) * 0.5 * (1 + math.cos(math.pi * t / cfg.iterations))


def augment(x: torch.Tensor, cfg: RecoverConfig, t: int, rng: np.random.Generator) -> torch.Tensor:
    """One crop box, one flip and one roll for the whole batch (the reference behaviour)."""
    low = crop_min(cfg, t)
    if low < 1.0:
        box = sample_boxes(1, rng, (low, 1.0))
        x = crop_resize(x, np.repeat(box, len(x), axis=0), x.shape[-1])
    if cfg.flip and rng.uniform() < 0.5:
        x = x.flip(3)
    if cfg.jitter:
        dx, dy = rng.integers(-cfg.jitter, cfg.jitter + 1, size=2).tolist()
        x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
    return x


def recover_batch(teacher: nn.Module, init: torch.Tensor, labels: torch.Tensor, join: torch.Tensor,
                  cfg: RecoverConfig, mean: list[float], std: list[float], rng: np.random.Generator) -> torch.Tensor:
    """Optimise one batch of normalised images; returns them (normalised, clamped)."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    low, high = (0 - mean_t) / std_t, (1 - mean_t) / std_t
    x = torch.maximum(torch.minimum(init, high), low).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=cfg.lr, betas=(0.5, 0.9), eps=1e-8)
    with BNStatisticsLoss(teacher, cfg.first_bn_multiplier, cfg.r_var) as bn:
        for t in range(cfg.iterations):
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * cfg.lr * (1 + math.cos(math.pi * t / cfg.iterations))
            active = join <= t
            if not active.any():
                continue
            logits = teacher(augment(x[active], cfg, t, rng))
            loss = F.cross_entropy(logits, labels[active]) + cfg.r_bn * bn.loss()
            if not torch.isfinite(loss):
                raise PipelineError(f"recover: loss is {loss.item()} at iteration {t}; lower recover.lr or r_bn")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                x.data = torch.maximum(torch.minimum(x.data, high), low)
    return x.detach()


@dataclass(frozen=True)
class Group:
    """One optimisation batch: every class, IPC indices [start, stop)."""

    start: int
    stop: int


def plan_groups(ipc_start: int, ipc_end: int, ipc_per_batch: int) -> list[Group]:
    """Batches of IPC indices aligned to absolute multiples of `ipc_per_batch`.

    Alignment is what makes sharding exact: a group's images, random stream and BN statistics depend
    only on the group, so [0, 10) in one process and [0, 4) + [4, 10) in two give the same images.
    """
    if not 0 <= ipc_start < ipc_end:
        raise PipelineError(f"recover: ipc_start = {ipc_start}, ipc_end = {ipc_end}: need 0 <= start < end")
    if ipc_start % ipc_per_batch:
        raise PipelineError(f"recover: ipc_start = {ipc_start}: must be a multiple of ipc_per_batch "
                            f"({ipc_per_batch}) so shards reproduce a single run exactly")
    return [Group(s, min(s + ipc_per_batch, ipc_end)) for s in range(ipc_start, ipc_end, ipc_per_batch)]


def group_members(group: Group, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, IPC indices) of a group's images, class-major."""
    indices = torch.arange(group.start, group.stop)
    labels = torch.arange(num_classes).repeat_interleave(len(indices))
    return labels, indices.repeat(num_classes)


@dataclass
class GroupResult:
    labels: torch.Tensor
    indices: torch.Tensor
    images: torch.Tensor  # normalised
    image_iterations: int
    seconds: float


def synthesize(teacher: nn.Module, num_classes: int, image_size: int, groups: list[Group], cfg: RecoverConfig,
               mean: list[float], std: list[float], seed: int,
               init: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor] | None = None,
               join: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[GroupResult]:
    """Recover every group; `init(labels, indices, gen)` gives starting images (default N(0, 1) noise in
    normalised space) and `join(indices)` each image's first iteration (default 0: all from the start)."""
    for group in groups:
        group_seed = derive_seed(seed, "recover", group.start)
        gen, rng = torch.Generator().manual_seed(group_seed), np.random.default_rng(group_seed)
        labels, indices = group_members(group, num_classes)
        start = init(labels, indices, gen) if init else torch.randn(len(labels), 3, image_size, image_size,
                                                                   generator=gen)
        joins = join(indices) if join else torch.zeros(len(labels), dtype=torch.long)
        began = time.perf_counter()
        images = recover_batch(teacher, start, labels, joins, cfg, mean, std, rng)
        work = int((cfg.iterations - joins.clamp(max=cfg.iterations)).sum())
        yield GroupResult(labels, indices, images, work, time.perf_counter() - began)
