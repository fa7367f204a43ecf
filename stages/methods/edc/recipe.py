"""EDC's part in the recover stage (docs/methods/edc.md): real train images (or RDED's set, `init: rded`), optimised
so that the observers (`edc.observers`, one per iteration in turn) classify them and see the real set's statistics.

The images are made in batches of `edc.batch_size` in class-major order (class 0's IPC indices, then class
1's, ...), as the reference's `turn_index` orders them. Batch b, iteration t runs observer (b x iterations + t)
mod M: the reference's counter, which runs on across batches, so a batch still depends only on its own index
and seed and a run resumes and shards exactly. Per iteration: one RandomResizedCrop box (area
[crop_min_scale, 1]) and one flip for the whole batch, loss = CE + r_loss x the matching sum
(stages/methods/edc/matching.py) [+ flatness_weight x KL(T = 4) against the images' EMA under the same view],
Adam(0.5, 0.9) with cosine lr, pixels clamped to [0, 1] after each step. The set is saved as the reference
saves it: the last iterate, through JPEG at `jpeg_quality` (null: lossless), as PNG files of those pixels.
"""
from __future__ import annotations

import functools
import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from stages.data.folder import normalise
from stages.data.prepared import open_images
from stages.methods.rded.patches import distil_class
from stages.methods.edc.statistics import load_statistics
from stages.methods.edc.matching import StatisticMatching
from stages.models import accel
from stages.pipeline.errors import DivergedError, PipelineError
from stages.pipeline.progress import progress
from stages.pipeline.seeds import derive_seed
from stages.recover_engine.driver import diverged, expect_init
from stages.recover_engine.engine import (Guard, RecoverConfig, augment, cosine_lr, frozen, log_losses,
                                          pixel_bounds)
from stages.recover_engine.finished import save_pixels, to_uint8
from stages.recover_engine.movement import assert_moved

FLATNESS_T = 4.0  # the reference's temperature of the flatness KL


def plan_batches(num_classes: int, ipc: int, batch_size: int) -> list[range]:
    """Slices of the class-major order of every (class, IPC index): item i is class i // ipc, index i % ipc."""
    total = num_classes * ipc
    return [range(a, min(a + batch_size, total)) for a in range(0, total, batch_size)]


def jpeg(pixels: torch.Tensor, quality: int | None) -> torch.Tensor:
    """uint8 N x H x W x 3 as the reference's saved JPEG files decode (PIL, `quality`); None: unchanged."""
    if quality is None:
        return pixels
    decoded = []
    for array in pixels.numpy():
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        decoded.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(decoded))


def start_rows(members: list[np.ndarray], labels: torch.Tensor, indices: torch.Tensor, distinct: bool, seed: int,
               rng: np.random.Generator) -> list[int]:
    """The train rows the images start from: each drawn independently from its class by the batch's `rng` (the
    reference's `random_img_sample`), or with `distinct` the k-th of a seeded permutation of its class (no
    class repeats a start, whichever batch holds each image)."""
    if not distinct:
        return [int(rng.choice(members[c])) for c in labels.tolist()]
    order = {c: np.random.default_rng(derive_seed(seed, "edc", "starts", c)).permutation(members[c])
             for c in set(labels.tolist())}
    return [int(order[c][k]) for c, k in zip(labels.tolist(), indices.tolist())]


def rded_class(p, observer, train, members: np.ndarray, label: int, name: str, size: int, teachers) -> torch.Tensor:
    """One class's ipc starts as RDED makes them (uint8 [ipc, 3, H, W]): its selection with `edc.rded`'s knobs,
    scored by that observer, at the seed the rded stage uses for the class (`rded` with the same knobs and
    observer makes the same images)."""
    if min(len(members), p.edc.rded.candidates) < p.ipc * p.edc.rded.factor ** 2:
        raise PipelineError(f"edc.rded: class {name!r} gives {min(len(members), p.edc.rded.candidates)} candidates, "
                            f"ipc x factor² = {p.ipc * p.edc.rded.factor ** 2} needed")
    rng = np.random.default_rng(derive_seed(p.seed, "rded", name))
    pixels, _ = distil_class(observer, train.images[torch.from_numpy(members)], label, p.edc.rded, p.ipc, size,
                             teachers.mean, teachers.std, rng)
    return pixels


def recover_batch(observers: list, matchings: list[StatisticMatching], start: torch.Tensor, labels: torch.Tensor,
                  first: int, e, mean: list[float], std: list[float], rng: np.random.Generator,
                  where: str) -> torch.Tensor:
    """One batch (normalised images `start`, their `labels`); observer (first + t) mod M runs iteration t."""
    low, high = (b.to(start.device) for b in pixel_bounds(mean, std))
    x = start.clone().requires_grad_(True)
    ema = start.clone()  # the flatness term's EMA of the images (the reference's EMA(initial_value=inputs))
    view = RecoverConfig(iterations=e.iterations, lr=e.lr, r_bn=0, first_bn_multiplier=0, r_var=0, jitter=0,
                         crop_min_scale=e.crop_min_scale, crop_schedule="fixed", flip=e.flip)
    optimizer = torch.optim.Adam([x], lr=e.lr, betas=(0.5, 0.9), eps=1e-8)
    for matching in matchings:
        matching.start(labels)
    with Guard(x, e.iterations, where) as guard:
        for t in range(e.iterations):
            lr = cosine_lr(optimizer, e.lr, t, e.iterations)
            k = (first + t) % len(observers)
            both = augment(torch.cat([x, ema]) if e.flatness else x, view, t, rng)  # one view for both
            seen, ema_seen = both[:len(x)], both[len(x):]
            with accel.autocast(x.device):
                logits = observers[k](seen).float()
            ce, reg = F.cross_entropy(logits, labels), matchings[k].loss()
            loss = ce + e.r_loss * reg
            if e.flatness:
                with torch.no_grad(), matchings[k].pause(), accel.autocast(x.device):
                    ema_logits = observers[k](ema_seen).float()
                ema = e.ema_alpha * ema + (1 - e.ema_alpha) * x.detach()
                # reduction "mean" over every element, as the reference's F.kl_div default
                loss = loss + e.flatness_weight * F.kl_div(torch.log_softmax(logits / FLATNESS_T, 1),
                                                           torch.softmax(ema_logits / FLATNESS_T, 1))
            log_losses(where, t, lr, ce, reg, loss)
            optimizer.zero_grad(set_to_none=True)
            guard.backward(t, loss)
            optimizer.step()
            with torch.no_grad():
                x.data = torch.maximum(torch.minimum(x.data, high), low)
            guard.after(t)
    return x.detach()


def run_edc(p, teachers, statistics_dir: Path, train_dir: Path, classes: list[str], size: int, out: Path, world,
            finished) -> dict:
    """Every batch of this rank (those not finished by an earlier run) into `out`; the synthesis record."""
    e, C = p.edc, len(classes)
    device = world.device
    observers = [frozen(m.to(device), device) for m in teachers.models]
    targets = [load_statistics(statistics_dir, arch, sha, device) for arch, sha in zip(teachers.archs, teachers.sha256)]
    train = open_images(train_dir, classes, size, desc="load train")
    members = [np.flatnonzero(train.labels.numpy() == c) for c in range(C)]
    if e.distinct_init and (small := [classes[c] for c in range(C) if len(members[c]) < p.ipc]):
        raise PipelineError(f"edc.distinct_init: classes {small} have fewer than ipc = {p.ipc} train images")
    # batches are class-major, so a class's RDED starts are needed by adjacent batches only: keep the classes one
    # batch spans (+1), not all of them (ImageNet at IPC 50 would hold every class's 224 px starts)
    rded_start = functools.lru_cache(maxsize=-(-e.batch_size // p.ipc) + 1)(
        lambda c: rded_class(p, observers[teachers.archs.index(e.rded.observer)], train, members[c], c, classes[c],
                             size, teachers))
    batches = world.shard(plan_batches(C, p.ipc, e.batch_size))
    names = {b.start: f"batch{b.start:07d}" for b in batches}
    saved = finished.load(list(names.values()), "recover edc")
    work, seconds, starts = 0, 0.0, {}
    bar = progress(batches, desc="recover edc", unit="batch")
    for b in bar:
        order = torch.tensor(list(b))
        labels, indices = order // p.ipc, order % p.ipc
        if (job := saved.get(names[b.start])) is None:
            rng = np.random.default_rng(derive_seed(p.seed, "edc", b.start))
            if e.init == "rded":
                rows = [-1] * len(labels)  # no one train image: RDED's stitched crops
                start = normalise(torch.stack([rded_start(c)[k] for c, k in zip(labels.tolist(), indices.tolist())])
                                  .float() / 255, teachers.mean, teachers.std)
            else:
                rows = start_rows(members, labels, indices, e.distinct_init, p.seed, rng)
                start = train.normalised(teachers.mean, teachers.std)[torch.tensor(rows)]
            if e.flip:  # the reference's init transform flips each start image at random
                start = torch.where(torch.from_numpy(rng.uniform(size=len(rows)) < 0.5).view(-1, 1, 1, 1),
                                    start.flip(3), start)
            matchings = [StatisticMatching(m, tg, e.momentum, e.first_multiplier, e.drop_rate, e.patch_swap, rng)
                         for m, tg in zip(observers, targets)]
            began = time.perf_counter()
            where = f"batch of images [{b.start}, {b.stop}) in class-major order"
            try:
                for m in matchings:
                    m.__enter__()
                images = recover_batch(observers, matchings, start.to(device), labels.to(device),
                                       (b.start // e.batch_size) * e.iterations, e, teachers.mean, teachers.std,
                                       rng, where).cpu()
            except DivergedError as err:
                raise diverged("edc", err) from None
            finally:
                for m in matchings:
                    m.__exit__(None, None, None)
            pixels = jpeg(to_uint8(images, teachers.mean, teachers.std), e.jpeg_quality)
            assert_moved("edc", to_uint8(start, teachers.mean, teachers.std), pixels,
                         [f"class {classes[y]}" for y in labels.tolist()], indices.tolist())
            job = finished.keep(names[b.start], {"pixels": pixels, "rows": torch.tensor(rows),
                                                 "image_iterations": e.iterations * len(rows),
                                                 "seconds": time.perf_counter() - began})
        save_pixels(out, classes, labels, indices, job["pixels"])
        starts.update({f"{classes[y]}/{k:03d}": train.paths[r] if r >= 0 else f"rded {k}" for y, k, r in
                       zip(labels.tolist(), indices.tolist(), job["rows"].tolist())})
        work, seconds = work + job["image_iterations"], seconds + job["seconds"]
        bar.set_postfix(img_it_per_s=f"{work / max(seconds, 1e-9):.0f}")
    gathered = world.gather([work, seconds, starts])
    return {"image_iterations": sum(g[0] for g in gathered), "seconds": sum(g[1] for g in gathered),
            "observers": list(teachers.archs), "starts": dict(sorted(kv for g in gathered for kv in g[2].items()))}


class EdcRecipe:
    unit = "images"
    labels = None  # the shared relabel grades it, as every set

    def teacher_archs(self, section) -> list[str]:
        return list(section.observers)

    def make(self, p, init: str, teachers, classes: list[str], size: int, out: Path, world, finished,
             data: Path) -> dict:
        statistics = expect_init("edc", init, "the statistics stage's folder (artifacts/<ds>/edc_statistics)")
        return run_edc(p, teachers, statistics, data / "train", classes, size, out, world, finished)

    def summary(self, record: dict, section) -> str:
        return f"; {len(record['observers'])} observers in turn"


RECIPE = EdcRecipe()
