"""Same-shaped students as one model: their weights stacked on a leading axis, every forward one vmapped call.

`torch.func.stack_module_state` stacks S models' parameters and buffers; `vmap(functional_call)` runs the S
models on S batches at once (a convolution of S students becomes one grouped convolution, a linear layer one
batched matmul). Each student keeps its own arithmetic: its initial weights, its batches, its loss (the summed
loss's gradient on a student's weights is its own loss's gradient), its BatchNorm statistics and its AdamW state
(AdamW acts elementwise, so on stacked tensors it is S separate AdamWs). Only the kernels differ, so a student's
numbers match its separate run within float rounding; what changes is S small kernels becoming one large one,
which on small students is most of a step's time on a CPU and on a GPU.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from stages.data.augment import EpochPlan
from stages.data.folder import ImageSet
from stages.models import accel
from stages.pipeline.errors import DivergedError
from stages.pipeline.progress import progress
from stages.pipeline.resume import Resume, fresh
from stages.training.loop import Batch, History, Optim, WeightAverage, averaged, cosine, diverged, epoch_batches, \
    eval_epochs, make_optimizer, restore_average, resumed, save_due


def _flat(name: str) -> str:
    return name.replace(".", "__")  # a registered tensor's name cannot hold a dot


class Together(nn.Module):
    """S models of one architecture; forward takes [S, B, ...] (each its own batch) and returns [S, B, classes]."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("Together needs at least one model")
        params, buffers = stack_module_state(models)
        self.size = len(models)
        self.param_names = list(params)
        self.buffer_names = list(buffers)
        for name, value in params.items():
            self.register_parameter(_flat(name), nn.Parameter(value.detach()))
        for name, value in buffers.items():
            self.register_buffer(_flat(name), value)
        # the architecture without weights; a tuple, so nn.Module does not register it (or its weights) as ours
        self._shape = (copy.deepcopy(models[0]).to("meta"),)

    def train(self, mode: bool = True) -> "Together":
        super().train(mode)
        self._shape[0].train(mode)  # functional_call runs the skeleton's BatchNorms in its mode
        return self

    def _state(self) -> tuple[dict, dict]:
        return ({n: getattr(self, _flat(n)) for n in self.param_names},
                {n: getattr(self, _flat(n)) for n in self.buffer_names})

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """Every student on its own batch (x: [S, B, ...]), or with `shared` all on the same batch (x: [B, ...])."""
        def one(params, buffers, batch):
            return functional_call(self._shape[0], (params, buffers), (batch,))

        return vmap(one, in_dims=(0, 0, None if shared else 0))(*self._state(), x)

    def members(self) -> list[nn.Module]:
        """Each student as a model of its own, holding a copy of its current weights."""
        params, buffers = self._state()
        out = []
        for i in range(self.size):
            model = copy.deepcopy(self._shape[0]).to_empty(device=next(self.parameters()).device)
            model.load_state_dict({n: t[i].detach().clone() for n, t in {**params, **buffers}.items()})
            out.append(model.train(self.training))
        return out


@torch.no_grad()
def accuracies(model: Together, images: torch.Tensor, labels: torch.Tensor,
               batch_size: int = 512) -> list[tuple[float, float]]:
    """Each student's (top-1, top-5) on the same images, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    hits1 = torch.zeros(model.size)
    hits5 = torch.zeros(model.size)
    for i in range(0, len(images), batch_size):
        chunk, truth = images[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
        logits = model(chunk, shared=True).float()  # [S, B, classes]
        top = logits.topk(min(5, logits.shape[-1]), -1).indices
        hits1 += (top[..., 0] == truth).sum(-1).cpu()
        hits5 += (top == truth[:, None]).any(-1).sum(-1).cpu()
    return [(h1 / len(images), h5 / len(images)) for h1, h5 in zip(hits1.tolist(), hits5.tolist())]


def train_together(models: list[nn.Module], draws: list[ImageSet], norm: tuple[list, list], epochs: int,
                   batch_size: int, plans: list[Callable[[int], tuple[EpochPlan, torch.Tensor | None]]],
                   loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor], optim: Optim,
                   val: tuple[torch.Tensor, torch.Tensor], eval_points: int, desc: str,
                   resume: Resume | None = None, state: str = "train",
                   rngs: list[np.random.Generator | None] | None = None) -> list[History]:
    """`train` for S students at once: student i trains on `draws[i]` with `plans[i]` (its own generator
    `rngs[i]`), all with one loss and recipe, as one Together model. Returns each student's History; with
    `resume` the group is checkpointed as `state` and a rerun continues after its last saved epoch."""
    n = len(draws[0])
    if any(len(d) != n for d in draws) or not len(models) == len(draws) == len(plans):
        raise ValueError(f"{desc}: students train together on draws of one size, one draw and plan each")
    rngs = rngs or [None] * len(models)
    size, device = draws[0].images.shape[-1], next(models[0].parameters()).device
    group = Together(models).to(device)
    optimizer = make_optimizer(group, optim)
    schedule = cosine(optimizer, epochs * math.ceil(n / batch_size), optim.zeta)
    average = WeightAverage(group, optim.ema) if optim.ema else None  # elementwise: each student's own average
    checkpoints, histories, first = eval_epochs(epochs, eval_points), [History() for _ in models], 0
    back = resumed(resume, state, lambda saved: restore_group(saved, group, optimizer, schedule, rngs, device, average))
    if back:
        first, histories = back
        print(f"{desc}: resumed from epoch {first} of {epochs} ({resume.folder})")
    bar = progress(range(first, epochs), desc=desc, unit="epoch", leave=False)
    start = last_save = time.perf_counter()
    save_cost, seconds, seen = 0.0, 0.0, 0
    for epoch in bar:
        epoch_plans = [p(epoch) for p in plans]
        group.train()
        running = torch.zeros(group.size, device=device)  # summed as tensors: no host sync per step
        step_losses = []
        streams = [epoch_batches(d, plan, logits, norm, size) for d, (plan, logits) in zip(draws, epoch_plans)]
        for batches in zip(*streams):
            batches = [b.select(slice(None), device) for b in batches]
            with accel.autocast(device):
                logits = group(torch.stack([b.x for b in batches]))
            losses = torch.stack([loss_fn(logits[i].float(), b) for i, b in enumerate(batches)])
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # each student's weights get its own loss's gradient
            optimizer.step()
            schedule.step()
            if average:
                average.update()
            running += losses.detach() * len(batches[0].labels)
            step_losses.append(losses.detach())
            seen += len(batches[0].labels)
        if not torch.isfinite(running).all():
            bad = int((~torch.isfinite(running)).nonzero()[0])
            raise DivergedError(diverged(f"{desc} (student {bad + 1} of {group.size})", epoch,
                                         [step[bad] for step in step_losses], running[bad]))
        if epoch + 1 in checkpoints:
            seconds += time.perf_counter() - start
            with averaged(average):
                accs = accuracies(group, *val)
            start = time.perf_counter()
            for history, (top1, top5), loss in zip(histories, accs, (running / n).tolist()):
                history.epochs.append(epoch + 1)
                history.top1.append(top1)
                history.top5.append(top5)
                history.loss.append(loss)
            bar.set_postfix(top1="/".join(f"{t1:.3f}" for t1, _ in accs))
        if save_due(resume, epoch == first, last_save, save_cost):
            now = time.perf_counter()
            for history in histories:  # the time and images so far, so a resumed run's rates stay whole-run rates
                history.seconds += seconds + now - start
                history.images_seen += seen
            seconds, seen, start = 0.0, 0, now
            resume.save(state, {"epoch": epoch + 1, "model": group.state_dict(), "optimizer": optimizer.state_dict(),
                                "schedule": schedule.state_dict(),
                                "history": [dataclasses.asdict(h) for h in histories],
                                "average": average.average if average else None,
                                "rng": [r.bit_generator.state if r else None for r in rngs],
                                "torch_rng": torch.get_rng_state(),
                                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None})
            last_save = time.perf_counter()
            save_cost = last_save - now
    seconds += time.perf_counter() - start
    for history in histories:  # the students trained at once: each took the whole wall time
        history.seconds += seconds
        history.images_seen += seen
    return histories


def restore_group(saved: dict, group: Together, optimizer: torch.optim.Optimizer, schedule,
                  rngs: list[np.random.Generator | None], device: torch.device,
                  average: WeightAverage | None = None) -> tuple[int, list[History]]:
    """Put a saved group state back; returns the next epoch and each student's history so far."""
    saved = fresh(saved)
    if len(saved["history"]) != group.size:
        raise ValueError(f"saved for {len(saved['history'])} students, this run trains {group.size}")
    group.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    restore_average(saved, average)
    for rng, state in zip(rngs, saved["rng"]):
        if rng is not None:
            rng.bit_generator.state = state
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(saved["cuda_rng"], device)
    return saved["epoch"], [History(**h) for h in saved["history"]]
