"""The recover primitive shared by SRe2L, DELT and INFER (docs/methods/sre2l.md#the-recover-engine).

Pixels (in the teacher's normalised space) are optimised so the frozen teacher classifies them as
their labels while the statistics of every BatchNorm input match the teacher's running statistics.
Adam(β = 0.5, 0.9), learning rate cosine from `lr` to 0, one random crop / flip / roll per iteration for
the whole batch (as the references' batched torchvision transforms do), pixels clamped to the valid
range after every step. EarlyLate: an image joins at its `join` iteration; before that it is outside
the forward pass, so its pixels, its Adam state and the batch's BN statistics ignore it.

A batch depends only on its own seed and inputs (nothing carries over from earlier batches), so a run
can stop after any batch and resume with the rest. A non-finite loss is recorded on the device (first
bad iteration and value) and checked every CHECK_EVERY iterations and at the end, not synchronised
with the host every iteration; it raises DivergedError and the batch's pixels are never returned.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from stages.data.augment import crop_resize, sample_boxes
from stages.data.folder import normalise
from stages.pipeline.errors import DivergedError, NotOptimisedError, PipelineError
from stages.pipeline.seeds import derive_seed
from stages.recover_engine.bn_matching import BNStatisticsLoss
from stages.models import accel

CHECK_EVERY = 50  # iterations between host-side checks for a non-finite loss (bounds the work wasted after one)
# PyTorch's warning when a backward passes through an op with no autograd kernel: the gradient behind it is
# silently missing (how a crop once left DELT's late ranks unoptimised), so the engine treats it as an error
NO_AUTOGRAD = ".*an autograd kernel was not registered"
LOSS_COLUMNS = ("batch", "iteration", "lr", "ce", "bn", "total")  # bn: the weighted BN sum before r_bn
_loss_writers: list[Callable[..., None]] = []  # the active per-iteration loss log (opt-in, `recover --losses`)


@contextlib.contextmanager
def logging_losses(path: Path) -> Iterator[None]:
    """While active, every recover iteration appends one CSV row (LOSS_COLUMNS) to `path`. Opt-in and for
    reading only (the parity harness, docs/parity.md): the values are read from the same tensors the
    optimiser uses, so the images are the same bytes with or without it; it costs one host sync per iteration."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LOSS_COLUMNS)

        def write(where: str, t: int, lr: float, ce: torch.Tensor, bn: torch.Tensor, total: torch.Tensor) -> None:
            writer.writerow([where, t, f"{lr:.8g}", f"{ce.item():.8g}", f"{bn.item():.8g}", f"{total.item():.8g}"])

        _loss_writers.append(write)
        try:
            yield
        finally:
            _loss_writers.remove(write)


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
    dwa_steps: int = 0  # DWA: gradient-ascent steps on a teacher copy per batch (0 = off)
    dwa_rho: float = 0.0  # DWA: total weight displacement (L2)
    roll: str = "symmetric"  # roll offsets in [-jitter, jitter]; "positive": [0, jitter] (the references)
    clamp_start: bool = False  # clamp before the first forward; False: after the first step (SRe2L's reference)


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
        low = 0 if cfg.roll == "positive" else -cfg.jitter
        dx, dy = rng.integers(low, cfg.jitter + 1, size=2).tolist()
        x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
    return x


def log_losses(where: str, t: int, lr: float, ce: torch.Tensor, reg: torch.Tensor, total: torch.Tensor) -> None:
    """One row of the opt-in loss log (`logging_losses`), when one is active; reg: the weighted statistics sum."""
    if _loss_writers:
        _loss_writers[-1](where, t, lr, ce, reg, total)


class Guard:
    """What every recover loop checks around its steps, without waiting for the host each iteration: the first
    non-finite loss (kept on the device, checked every CHECK_EVERY iterations and at the end: DivergedError
    naming `where`, the iteration and the loss), non-finite pixels after finite losses, and a backward that
    passes through an op with no autograd kernel (NotOptimisedError: no gradient reaches the pixels)."""

    def __init__(self, param: torch.Tensor, iterations: int, where: str):
        self.param, self.iterations, self.where = param, iterations, where
        self.never = iterations  # "no bad iteration yet"
        self.first_bad = torch.tensor(iterations, device=param.device)
        self.bad_loss = torch.zeros((), device=param.device)

    def __enter__(self) -> "Guard":
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.filterwarnings("error", message=NO_AUTOGRAD, category=UserWarning)
        return self

    def __exit__(self, *exc) -> None:
        self.warnings.__exit__(*exc)

    def backward(self, t: int, loss: torch.Tensor) -> None:
        first = ~torch.isfinite(loss.detach()) & (self.first_bad == self.never)
        self.first_bad = torch.where(first, t, self.first_bad)
        self.bad_loss = torch.where(first, loss.detach(), self.bad_loss)
        try:
            loss.backward()
        except UserWarning as e:
            reason = str(e).split('. ')[0]
            raise NotOptimisedError(f"{self.where}: no gradient reaches the pixels ({reason})") from None

    def after(self, t: int) -> None:
        if (t + 1) % CHECK_EVERY and t + 1 != self.iterations:
            return
        if (bad := int(self.first_bad)) != self.never:  # the host sync, once per CHECK_EVERY iterations
            raise DivergedError(f"{self.where}: loss = {self.bad_loss.item()} at iteration {bad} (the first "
                                f"non-finite one)")
        if not torch.isfinite(self.param.detach()).all():  # a finite loss with an inf/NaN gradient
            raise DivergedError(f"{self.where}: non-finite pixels after iteration {t} with finite losses")


def cosine_lr(optimizer: torch.optim.Optimizer, lr: float, t: int, iterations: int) -> float:
    """The references' schedule: lr · ½(1 + cos(π t / iterations)), set on every group; returns it."""
    for group in optimizer.param_groups:
        group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * t / iterations))
    return optimizer.param_groups[0]["lr"]


def frozen(model: nn.Module, device: torch.device) -> nn.Module:
    """A teacher in eval mode, on the device's fast path, its weights out of autograd."""
    model.eval()
    accel.prepare(model, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _optimise(teacher: nn.Module, param: torch.Tensor, batch_at: Callable[[int], tuple | None],
              cfg: RecoverConfig, rng: np.random.Generator, after_step: Callable[[], None], where: str) -> None:
    """The recover loop: Adam(0.5, 0.9) on `param`, cosine lr to 0, loss = CE + r_bn · BN loss on the
    augmented batch `batch_at(t)` returns as (images, labels), or None when nothing is active."""
    frozen(teacher, param.device)
    optimizer = torch.optim.Adam([param], lr=cfg.lr, betas=(0.5, 0.9), eps=1e-8)
    with BNStatisticsLoss(teacher, cfg.first_bn_multiplier, cfg.r_var) as bn, \
            Guard(param, cfg.iterations, where) as guard:
        for t in range(cfg.iterations):
            lr = cosine_lr(optimizer, cfg.lr, t, cfg.iterations)
            batch = batch_at(t)
            if batch is not None:
                images, labels = batch
                with accel.autocast(param.device):  # bf16 teacher forward on CUDA; BN statistics and loss in fp32
                    logits = teacher(augment(images, cfg, t, rng))
                ce, bn_loss = F.cross_entropy(logits.float(), labels), bn.loss()
                loss = ce + cfg.r_bn * bn_loss
                log_losses(where, t, lr, ce, bn_loss, loss)
                optimizer.zero_grad(set_to_none=True)
                guard.backward(t, loss)
                optimizer.step()
                after_step()
            guard.after(t)


def pixel_bounds(mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid range [0, 1] of every channel, in normalised space."""
    return normalise(torch.zeros(1, 3, 1, 1), mean, std), normalise(torch.ones(1, 3, 1, 1), mean, std)


def recover_batch(teacher: nn.Module, init: torch.Tensor, labels: torch.Tensor, join: torch.Tensor,
                  cfg: RecoverConfig, mean: list[float], std: list[float], rng: np.random.Generator,
                  stop: torch.Tensor | None = None, where: str = "recover") -> torch.Tensor:
    """Optimise one batch of normalised images; returns them (normalised, clamped).

    Image i takes part in iterations [join[i], stop[i]) (stop defaults to the end): outside them it is
    not in the forward pass, so neither the loss nor the batch's BN statistics see it.
    """
    low, high = (bound.to(init.device) for bound in pixel_bounds(mean, std))
    # SRe2L's reference feeds raw N(0, 1) noise to its first forward and clamps after each step (clamp_start: false)
    x = (torch.maximum(torch.minimum(init, high), low) if cfg.clamp_start else init.clone()).requires_grad_(True)
    stop = torch.full_like(join, cfg.iterations) if stop is None else stop

    def batch_at(t: int):
        active = (join <= t) & (t < stop)
        return (x[active], labels[active]) if active.any() else None

    def clamp() -> None:
        with torch.no_grad():
            x.data = torch.maximum(torch.minimum(x.data, high), low)

    _optimise(teacher, x, batch_at, cfg, rng, clamp, where)
    return x.detach()


def recover_compensators(teacher: nn.Module, bases: torch.Tensor, cfg: RecoverConfig, mean: list[float],
                         std: list[float], rng: np.random.Generator, where: str = "recover"
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """INFER's universal feature compensators (docs/methods/infer.md).

    `bases` [G, C, 3, H, W]: G base sets of one real image per class (normalised). Each set gets one
    additive compensator u (init 0), shared by its C classes and optimised so every clamp(base + u)
    is classified as its own class while the batch matches the teacher's BN statistics. Returns the
    compensators [G, 3, H, W] and the composed images [G, C, 3, H, W] (normalised, clamped).
    """
    groups, classes = bases.shape[:2]
    low, high = (bound.to(bases.device) for bound in pixel_bounds(mean, std))
    u = torch.zeros(groups, 1, *bases.shape[2:], device=bases.device, requires_grad=True)
    labels = torch.arange(classes, device=bases.device).repeat(groups)

    def composed() -> torch.Tensor:  # what the teacher sees is exactly what is saved
        return torch.clamp(bases + u, low.unsqueeze(0), high.unsqueeze(0)).flatten(0, 1)

    _optimise(teacher, u, lambda t: (composed(), labels), cfg, rng, lambda: None, where)
    with torch.no_grad():
        return u.detach().squeeze(1), composed().view_as(bases)


def directed_weight_adjustment(teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int,
                               rho: float) -> nn.Module:
    """DWA (docs/methods/sre2l.md#dwa): a copy of the teacher moved by `steps` normalised
    gradient-ascent steps of size rho/steps on the batch's cross-entropy (total move ≤ rho). BN running
    statistics are buffers and stay; the original teacher is untouched, so perturbations never
    accumulate across batches."""
    perturbed = copy.deepcopy(teacher).eval()
    weights = list(perturbed.parameters())
    for p in weights:
        p.requires_grad_(True)
    for _ in range(steps):
        grads = torch.autograd.grad(F.cross_entropy(perturbed(images), labels), weights)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        with torch.no_grad():
            for p, g in zip(weights, grads):
                p.add_(g, alpha=rho / steps / (norm.item() + 1e-12))
    for p in weights:
        p.requires_grad_(False)
    return perturbed


def batch_teacher(teacher: nn.Module, start: torch.Tensor, labels: torch.Tensor, cfg: RecoverConfig,
                  rng: np.random.Generator) -> nn.Module:
    """The teacher one batch recovers against: the teacher itself, or with DWA a copy perturbed on the
    batch's first augmented view (DWA adjusts once, at iteration 0)."""
    if not cfg.dwa_steps:
        return teacher
    return directed_weight_adjustment(teacher, augment(start, cfg, 0, rng), labels, cfg.dwa_steps, cfg.dwa_rho)


@dataclass(frozen=True)
class Group:
    """One optimisation batch: every class (or classes [c0, c1) when class-major), IPC indices [start, stop)."""

    start: int
    stop: int
    classes: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        """The batch's key in the resume folder."""
        return f"batch{self.start:06d}" if self.classes is None else f"classes{self.classes[0]:06d}"

    def seed(self, seed: int) -> int:
        return derive_seed(seed, "recover", self.start) if self.classes is None else \
            derive_seed(seed, "recover", "classes", self.classes[0])

    def describe(self) -> str:
        where = f"batch of IPC indices [{self.start}, {self.stop})"
        return where if self.classes is None else f"{where}, classes [{self.classes[0]}, {self.classes[1]})"


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


def plan_class_groups(num_classes: int, ipc: int, ipc_per_batch: int) -> list[Group]:
    """DELT's reference batches: class-major, ipc_per_batch x classes images each, so a batch holds whole
    classes (all IPC indices of ⌊ipc_per_batch · C / ipc⌋ classes, at least one). Where that is every class
    (ipc <= ipc_per_batch) the batches are plan_groups' own."""
    per_batch = max(1, ipc_per_batch * num_classes // ipc)
    if per_batch >= num_classes:
        return plan_groups(0, ipc, ipc_per_batch)
    return [Group(0, ipc, (c, min(c + per_batch, num_classes))) for c in range(0, num_classes, per_batch)]


def group_members(group: Group, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, IPC indices) of a group's images, class-major."""
    first, last = group.classes or (0, num_classes)
    indices = torch.arange(group.start, group.stop)
    labels = torch.arange(first, last).repeat_interleave(len(indices))
    return labels, indices.repeat(last - first)


@dataclass
class GroupResult:
    labels: torch.Tensor
    indices: torch.Tensor
    images: torch.Tensor  # normalised
    image_iterations: int
    seconds: float
    start: torch.Tensor  # the initialisation, normalised (the stage checks every image moved from it)
    optimised: torch.Tensor  # bool: the image ran at least one iteration (its [join, stop) is not empty)
    group: Group


def synthesize(teacher: nn.Module, num_classes: int, image_size: int, groups: list[Group], cfg: RecoverConfig,
               mean: list[float], std: list[float], seed: int,
               init: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor] | None = None,
               span: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
               device: torch.device | str = "cpu") -> Iterator[GroupResult]:
    """Recover every group on `device`. `init(labels, indices, gen)` gives the starting images (default N(0, 1)
    noise in normalised space, drawn on the CPU so every device starts from the same pixels); `span(labels,
    indices)` each image's (join, stop) iterations (default: the whole run). With `cfg.dwa_steps`, each group
    runs against its own DWA-perturbed teacher copy. Results come back on the CPU."""
    teacher = teacher.to(device)
    for group in groups:
        group_seed = group.seed(seed)
        gen, rng = torch.Generator().manual_seed(group_seed), np.random.default_rng(group_seed)
        labels, indices = group_members(group, num_classes)
        start = init(labels, indices, gen) if init else torch.randn(len(labels), 3, image_size, image_size,
                                                                   generator=gen)
        join, stop = span(labels, indices) if span else (torch.zeros(len(labels), dtype=torch.long),
                                                         torch.full((len(labels),), cfg.iterations))
        # a batch whose classes all stop early runs only as long as its last one (DELT drops the empty
        # rounds): the learning-rate and crop schedules span the iterations that are run
        run = dataclasses.replace(cfg, iterations=max(1, min(cfg.iterations, int(stop.max()))))
        began = time.perf_counter()
        on = [t.to(device) for t in (start, labels, join, stop)]
        model = batch_teacher(teacher, on[0], on[1], run, rng)
        images = recover_batch(model, on[0], on[1], on[2], run, mean, std, rng, on[3], where=group.describe()).cpu()
        steps = (stop.clamp(max=run.iterations) - join).clamp(min=0)
        yield GroupResult(labels, indices, images, int(steps.sum()), time.perf_counter() - began, start, steps > 0,
                          group)
