"""One training loop for teachers and students: plans in, cosine-scheduled steps, periodic validation."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from stages.data.augment import EpochPlan, render
from stages.data.folder import ImageSet
from stages.models import as_input, predict
from stages.pipeline.distributed import World
from stages.pipeline.errors import ArtifactError, DivergedError, PipelineError
from stages.pipeline.progress import progress
from stages.pipeline.resume import Resume, fresh
from stages.models import accel

# A checkpoint is saved after an epoch once the time since the last one is at least this many times what
# saving costs: the overhead stays near 1/SAVE_COST_RATIO of the run whatever the epoch length (every epoch
# would double a tiny student's run; a fixed count of epochs fits no dataset size), and a kill loses about
# SAVE_COST_RATIO saves' worth of work. The first epoch is always saved (it measures the cost).
SAVE_COST_RATIO = 20


@dataclass
class Batch:
    x: torch.Tensor  # normalised, augmented, mixed
    labels: torch.Tensor
    partner_labels: torch.Tensor
    lam: float
    soft: torch.Tensor | None = None  # stored teacher logits (FKD) for exactly this batch

    def select(self, rows: slice, device: torch.device) -> "Batch":
        """These rows of the batch on `device` (under DDP a rank trains on its rows of every batch)."""
        return Batch(self.x[rows].to(device), self.labels[rows].to(device), self.partner_labels[rows].to(device),
                     self.lam, None if self.soft is None else self.soft[rows].to(device))


@dataclass
class Optim:
    name: str  # "sgd" | "adamw"
    lr: float
    weight_decay: float
    momentum: float = 0.9
    zeta: float = 1.0  # the cosine's period in runs: 1 ends at lr 0; EDC's smoothing schedule: ζ > 1 ends above it
    ema: float | None = None  # validate an EMA of the weights with this decay (EDC), not the weights themselves


@dataclass
class History:
    epochs: list[int] = field(default_factory=list)
    top1: list[float] = field(default_factory=list)
    top5: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    images_seen: int = 0

    def summary(self) -> dict:
        """Final and best values; each *_best is the max of its own metric over the validation points (top-5 at
        top-1's best point could sit below the final top-5); best_epoch is where top-1 peaked."""
        best = max(range(len(self.top1)), key=self.top1.__getitem__)
        return {"top1": self.top1[-1], "top5": self.top5[-1], "top1_best": self.top1[best],
                "top5_best": max(self.top5), "best_epoch": self.epochs[best], "train_seconds": self.seconds,
                "images_per_second": self.images_seen / max(self.seconds, 1e-9)}


def hard_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    if batch.lam == 1.0:
        return F.cross_entropy(logits, batch.labels)
    return batch.lam * F.cross_entropy(logits, batch.labels) + (1 - batch.lam) * F.cross_entropy(
        logits, batch.partner_labels)


def kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(student ‖ teacher) at temperature T, batch mean (SRe2L/RDED: no T² factor)."""
    return F.kl_div(F.log_softmax(logits / temperature, 1), F.softmax(teacher_logits.float() / temperature, 1),
                    reduction="batchmean")


def mse_ce_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, batch: Batch, ce_weight: float) -> torch.Tensor:
    """EDC's student loss (`mse_gt`): MSE between student and teacher logits plus ce_weight x cross-entropy on
    each slot's own label. As EDC's code does, the label is the slot's own even when cutmix pasted a partner in."""
    return F.mse_loss(logits, teacher_logits.float()) + ce_weight * F.cross_entropy(logits, batch.labels)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    logits = predict(model, images)
    top = logits.topk(min(5, logits.shape[1]), 1).indices
    top1 = (top[:, 0] == labels).float().mean().item()
    top5 = (top == labels[:, None]).any(1).float().mean().item()
    return top1, top5


def eval_epochs(epochs: int, points: int) -> set[int]:
    """`points` evenly spaced validation epochs (1-based), always including the last."""
    step = max(1, epochs // points)
    return set(range(step, epochs + 1, step)) | {epochs}


def cosine(optimizer: torch.optim.Optimizer, total_steps: int, zeta: float = 1.0) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate along half a cosine from its value, reaching 0 after zeta x `total_steps` steps: zeta 1 is
    the usual cosine to 0; EDC's smoothing schedule stretches it (zeta 2: the run ends at half the lr)."""
    span = max(1, total_steps) * zeta
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / span)))


class WeightAverage:
    """An exponential moving average of a model's parameters (EDC's EMA evaluation): updated after every step,
    swapped in for validation. BatchNorm's running statistics stay the model's own, as EDC's swap leaves them."""

    def __init__(self, model: nn.Module, decay: float):
        self.params = list(model.parameters())
        self.average = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1 - self.decay)

    @contextlib.contextmanager
    def swapped(self):
        """The averaged weights in the model for the duration (validation), the trained ones after."""
        with torch.no_grad():
            for p, a in zip(self.params, self.average):
                p.data, a.data = a.data, p.data
        try:
            yield
        finally:
            with torch.no_grad():
                for p, a in zip(self.params, self.average):
                    p.data, a.data = a.data, p.data


def averaged(average: "WeightAverage | None"):
    """Validation's weights: the average's when there is one."""
    return average.swapped() if average else contextlib.nullcontext()


def save_due(resume: Resume | None, first: bool, last_save: float, save_cost: float) -> bool:
    """Whether to checkpoint after this epoch: always after the first (it measures the cost), then once the
    time since the last save is SAVE_COST_RATIO times what saving costs."""
    return bool(resume and resume.enabled and (first or time.perf_counter() - last_save >= SAVE_COST_RATIO * save_cost))


def make_optimizer(model: nn.Module, cfg: Optim) -> torch.optim.Optimizer:
    # foreach: one multi-tensor update per step, not a Python loop over the parameters (torch picks it only on GPUs)
    if cfg.name == "sgd":
        return torch.optim.SGD(model.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               foreach=True)
    return torch.optim.AdamW(model.parameters(), cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def epoch_batches(data: ImageSet, plan: EpochPlan, logits: torch.Tensor | None, norm: tuple[list, list],
                  size: int):
    """One epoch's global batches on the host: rendered images, own and partner labels, λ and (FKD) the
    stored logits of each slot. benchmarks/evaluate.py times exactly this."""
    for batch_slice in plan.batches():
        labels = data.labels[torch.from_numpy(plan.order[batch_slice])]
        yield Batch(render(data.images, plan, batch_slice, *norm, size), labels,
                    labels[torch.from_numpy(plan.partner[batch_slice])], float(plan.lam[batch_slice][0]),
                    None if logits is None else logits[batch_slice])


def train(model: nn.Module, data: ImageSet, norm: tuple[list, list], epochs: int, batch_size: int,
          plans: Callable[[int], tuple[EpochPlan, torch.Tensor | None]],
          loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor], optim: Optim,
          val: tuple[torch.Tensor, torch.Tensor], eval_points: int, desc: str,
          on_eval: Callable[[int, dict], None] | None = None, world: World = World(),
          resume: Resume | None = None, state: str = "train", rng: np.random.Generator | None = None) -> History:
    """Train for `epochs`; `plans(e)` gives epoch e's plan and, for FKD, its stored logits.

    Under torchrun `model` is DDP-wrapped and each rank trains on its rows of every global batch, so the
    batch size and learning-rate recipe are those of one process.

    With `resume`, the run is checkpointed as `state` (weights, optimizer, schedule, history, torch's RNG and
    the generator `rng` that `plans` draws from) and a rerun continues after the last saved epoch, ending
    with the bytes an uninterrupted run ends with. A non-finite loss raises DivergedError at the end of its
    epoch (one check per epoch, no host sync per step).
    """
    size = data.images.shape[-1]
    smallest = len(data) % batch_size or batch_size
    if smallest < world.size:
        raise PipelineError(f"a batch of {smallest} images (of {len(data)} at batch size {batch_size}) cannot be "
                            f"split over {world.size} processes; use fewer processes or another batch size")
    device, bare = next(model.parameters()).device, getattr(model, "module", model)
    accel.prepare(bare, device)  # channels-last on CUDA (before the optimizer holds the weights)
    step_model = accel.compiled(model, device)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    optimizer = make_optimizer(model, optim)
    schedule = cosine(optimizer, epochs * steps_per_epoch, optim.zeta)
    average = WeightAverage(bare, optim.ema) if optim.ema else None
    checkpoints, history, first = eval_epochs(epochs, eval_points), History(), 0
    back = resumed(resume, state, lambda saved: restore(saved, bare, optimizer, schedule, rng, device, average))
    if back:
        first, history = back
        if world.main:
            print(f"{desc}: resumed from epoch {first} of {epochs} ({resume.folder})")
    bar = progress(range(first, epochs), desc=desc, unit="epoch", leave=False)
    start = last_save = time.perf_counter()
    save_cost = 0.0  # seconds the last checkpoint took
    for epoch in bar:
        plan, logits = plans(epoch)
        model.train()
        running = torch.zeros((), device=device)  # summed as a tensor: no host sync per step
        step_losses = []  # kept on the device, looked at only if the epoch's sum is not finite
        for batch in epoch_batches(data, plan, logits, norm, size):
            global_size = len(batch.labels)
            rows = world.rows(global_size)
            batch = batch.select(rows, device)
            with accel.autocast(device):  # bf16 forward on CUDA; the loss below is computed in fp32
                logits = step_model(as_input(bare, batch.x))
            loss = loss_fn(logits.float(), batch)
            optimizer.zero_grad(set_to_none=True)
            if world.size > 1:  # DDP averages rank gradients: weigh each by its share of the global batch
                (loss * ((rows.stop - rows.start) * world.size / global_size)).backward()
            else:
                loss.backward()
            optimizer.step()
            schedule.step()
            if average:
                average.update()
            running += loss.detach() * (rows.stop - rows.start)
            step_losses.append(loss.detach())
            history.images_seen += global_size
        summed = world.sum(running.clone())  # every rank sees the same sum, so all stop together
        if not torch.isfinite(summed):
            raise DivergedError(diverged(desc, epoch, step_losses, summed))
        if epoch + 1 in checkpoints:
            history.seconds += time.perf_counter() - start
            with averaged(average):
                top1, top5 = accuracy(bare, *val)
            start = time.perf_counter()
            history.epochs.append(epoch + 1)
            history.top1.append(top1)
            history.top5.append(top5)
            mean_loss = summed.item() / len(data)
            history.loss.append(mean_loss)
            bar.set_postfix(loss=f"{mean_loss:.3f}", top1=f"{top1:.3f}")
            if on_eval:
                on_eval(epoch + 1, {"loss": mean_loss, "top1": top1, "top5": top5})
        if save_due(resume, epoch == first, last_save, save_cost):
            now = time.perf_counter()
            resume.save(state, {"epoch": epoch + 1, "model": bare.state_dict(), "optimizer": optimizer.state_dict(),
                                "schedule": schedule.state_dict(), "history": dataclasses.asdict(history),
                                "average": average.average if average else None,
                                "rng": rng.bit_generator.state if rng else None, "torch_rng": torch.get_rng_state(),
                                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None})
            last_save = time.perf_counter()
            save_cost = last_save - now
    history.seconds += time.perf_counter() - start
    return history


def resumed(resume: Resume | None, state: str, put_back: Callable[[dict], tuple]) -> tuple | None:
    """`put_back(saved)` of the training state saved as `state` (None when there is none); a state this run
    cannot take (e.g. saved by another version of this code) is an ArtifactError naming the folder to delete."""
    saved = resume.load(state) if resume else None
    if not saved:
        return None
    try:
        return put_back(saved)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{resume.path(state)}.pt: not a training state this run can resume "
                            f"({str(e).splitlines()[0]}); delete {resume.folder} to start afresh") from None


def restore(saved: dict, model: nn.Module, optimizer: torch.optim.Optimizer, schedule, rng: np.random.Generator | None,
            device: torch.device, average: WeightAverage | None = None) -> tuple[int, History]:
    """Put a saved training state back; returns the next epoch and the history so far."""
    saved = fresh(saved)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    restore_average(saved, average)
    if rng is not None:
        rng.bit_generator.state = saved["rng"]
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(saved["cuda_rng"], device)
    return saved["epoch"], History(**saved["history"])


def restore_average(saved: dict, average: WeightAverage | None) -> None:
    """The weight average as saved (a state saved without one, or with one, cannot resume the other way)."""
    stored = saved.get("average")
    if (stored is None) != (average is None):
        raise ValueError("saved with another evaluate.ema setting")
    if average:
        with torch.no_grad():
            torch._foreach_copy_(average.average, [t.to(a.device) for t, a in zip(stored, average.average)])


def diverged(desc: str, epoch: int, step_losses: list[torch.Tensor], summed: torch.Tensor) -> str:
    """Where the loss first stopped being finite: epoch, and the step when this process saw it."""
    losses = torch.stack(step_losses).cpu() if step_losses else torch.zeros(0)
    bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
    where = f"epoch {epoch + 1}" + (f", step {bad[0] + 1} of {len(losses)}" if bad else "")
    value = losses[bad[0]].item() if bad else summed.item()
    return (f"{desc}: training loss is {value} at {where}; nothing was written - lower the learning rate "
            "or check the data")
