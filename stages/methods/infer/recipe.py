"""INFER's part in the recover stage: ipc_init real base images per class, plus one compensator per teacher
per base set - an additive image shared by all classes, optimised so that every base + compensator reads as
its own class (docs/methods/infer.md). The set ships the teachers' mean logits of every image as static labels."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from stages.data.distilled import write_labels
from stages.data.folder import load_imagefolder
from stages.data.prepared import open_images
from stages.methods.infer.budget import infer_budget
from stages.models import predict
from stages.pipeline.distributed import World
from stages.pipeline.errors import DivergedError
from stages.pipeline.params import Params
from stages.pipeline.progress import progress
from stages.pipeline.seeds import derive_seed
from stages.models.teachers import Teachers
from stages.recover_engine.driver import diverged, engine_config, expect_init, ipc_range
from stages.recover_engine.engine import batch_teacher, plan_groups, recover_compensators
from stages.recover_engine.finished import FinishedBatches, save_pixels, to_uint8
from stages.recover_engine.movement import assert_moved

LABELS = "labels.safetensors"
COMPENSATORS = "compensators.safetensors"
UNIT = "base sets"


def run_infer(p: Params, teachers: Teachers, train_dir: Path, classes: list[str], size: int, out: Path,
              world: World, finished: FinishedBatches) -> dict | None:
    """Bases (drawn from `train_dir`), compensators and static labels; returns the card's synthesis record
    (on rank 0; the other ranks only make their share of the compensators)."""
    cfg, C, M = engine_config(p.infer), len(classes), len(teachers.archs)
    ipc_init, per_set = infer_budget(p.ipc, C, M, p.infer.ipc_init)
    start, end = ipc_range("infer", p.infer, ipc_init, UNIT)

    train = open_images(train_dir, classes, size, desc="load train")
    rng = np.random.default_rng(derive_seed(p.seed, "infer", "bases"))
    picks = [rng.choice(np.flatnonzero(train.labels.numpy() == c), ipc_init, replace=False) for c in range(C)]
    base_index = torch.from_numpy(np.stack(picks, 1)[start:end])  # [sets, C] rows of train
    bases = train.normalised(teachers.mean, teachers.std)[base_index]  # [sets, C, 3, H, W]
    labels = torch.arange(C).repeat(end - start)
    set_ids = torch.arange(start, end).repeat_interleave(C)
    if world.main:  # the bases are saved unchanged: uint8 → normalised → uint8 round-trips exactly
        save_pixels(out, classes, labels, set_ids, to_uint8(bases.flatten(0, 1), teachers.mean, teachers.std))

    compensators, work, seconds = {}, 0, 0.0
    groups = plan_groups(start, end, p.infer.recover.ipc_per_batch)
    jobs = world.shard([(m, g) for m in range(per_set) for g in groups])
    names = {(m, g): f"{teachers.archs[m]}.batch{g.start:06d}" for m, g in jobs}
    saved = finished.load(list(names.values()), "recover infer")
    bar = progress(jobs, desc="recover infer", unit="batch")
    for m, group in bar:
        arch, teacher = teachers.archs[m], teachers.models[m].to(world.device)
        batch = bases[group.start - start:group.stop - start]
        if (job := saved.get(names[m, group])) is None:  # the job's own seed: independent of earlier jobs
            gen_rng = np.random.default_rng(derive_seed(p.seed, "infer", arch, group.start))
            began = time.perf_counter()
            on = batch.to(world.device)
            teacher = batch_teacher(teacher, on.flatten(0, 1), torch.arange(C, device=world.device).repeat(len(batch)),
                                    cfg, gen_rng)
            try:
                u, images = recover_compensators(teacher, on, cfg, teachers.mean, teachers.std, gen_rng,
                                                 where=f"teacher {arch}, base sets [{group.start}, {group.stop})")
            except DivergedError as e:
                raise diverged("infer", e) from None
            u, images = u.cpu(), images.cpu()
            # the compensator is what moved: its base set's composed images, together, against the bases
            pixels = to_uint8(images.flatten(0, 1), teachers.mean, teachers.std)
            sets = list(range(group.start, group.stop))
            assert_moved("infer", to_uint8(batch.flatten(0, 1), teachers.mean, teachers.std).view(len(sets), -1),
                         pixels.view(len(sets), -1), [f"teacher {arch}"] * len(sets), sets, what="base set")
            job = finished.keep(names[m, group], {
                "compensators": u, "pixels": pixels,
                "image_iterations": cfg.iterations * images.shape[0] * C, "seconds": time.perf_counter() - began})
        seconds += job["seconds"]
        work += job["image_iterations"]
        compensators[f"{arch}/{group.start}"] = job["compensators"]
        ids = torch.arange(group.start, group.stop).repeat_interleave(C) + ipc_init * (m + 1)
        save_pixels(out, classes, torch.arange(C).repeat(len(batch)), ids, job["pixels"])
        bar.set_postfix(img_it_per_s=f"{work / max(seconds, 1e-9):.0f}")
    # Each rank leaves its compensators in a hidden file (not an image); gathering is also the barrier.
    save_file(compensators or {"none": torch.zeros(0)}, out / f".compensators.rank{world.rank}.safetensors")
    work, seconds = map(sum, zip(*world.gather([work, seconds])))
    if not world.main:
        return None
    for rank in range(world.size):
        shard = out / f".compensators.rank{rank}.safetensors"
        compensators.update(load_file(shard))
        shard.unlink()
    by_arch = {teachers.archs[m]: torch.cat([compensators[f"{teachers.archs[m]}/{g.start}"] for g in groups])
               for m in range(per_set)}

    info = {"base_sets": [start, end], "layout": "one [3, H, W] compensator per base set, normalised space",
            "bases": [[train.paths[i] for i in row] for row in base_index.tolist()]}
    # One metadata key: safetensors stores metadata as a hash map, so several keys come out in any order.
    save_file({arch: us.contiguous() for arch, us in by_arch.items()} or {"none": torch.zeros(0)},
              out / COMPENSATORS, metadata={"ddpipe": json.dumps(info, sort_keys=True)})

    # Static labels: the mean logits of all M teachers on each un-augmented image (docs/methods/infer.md).
    saved = load_imagefolder(out, classes, size, desc="label")
    x = saved.normalised(teachers.mean, teachers.std)
    write_labels(out, LABELS, torch.stack([predict(t, x) for t in teachers.models]).mean(0), saved.paths)
    return {"ipc_init": ipc_init, "compensators_per_base_set": per_set, "base_sets": [start, end],
            "stored_images": ipc_init * (C + per_set), "budget_images": p.ipc * C,
            "image_iterations": work, "seconds": seconds}


class InferRecipe:
    unit = UNIT
    labels = LABELS

    def teacher_archs(self, section) -> list[str]:
        return list(section.teachers)

    def make(self, p, init: str, teachers, classes: list[str], size: int, out: Path, world, finished,
             data: Path) -> dict | None:
        return run_infer(p, teachers, expect_init("infer", init, "a train folder"), classes, size, out, world,
                         finished)

    def summary(self, record: dict, section) -> str:
        return ""


RECIPE = InferRecipe()
