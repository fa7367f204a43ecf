"""recover@<method>: SRe2L, DELT and INFER, three recipes over one recover engine (stages/synthesis).

sre2l  images start as N(0, 1) noise and are optimised against one teacher (docs/methods/sre2l.md).
delt   images start as the real images `select` picked; EarlyLate: rank k joins in round
       join(k) of iterations/round_iterations, so late joiners get fewer updates (docs/methods/delt.md#earlylate).
infer  ipc_init real base images per class, plus one compensator per teacher per base set: an
       additive image shared by all classes, optimised so that every base + compensator reads as its
       own class (docs/methods/infer.md). The set ships the teachers' mean logits of every image as static labels.

Writes the set (<class>/<k>.png, lossless, k = IPC index) with card.json, and `--stats` (image-
iterations; DELT's saving against SRe2L at the same iterations); wall time and rate go to the run log. Under
torchrun each rank recovers its block of the batches (INFER: of the (teacher, base-set batch) jobs) into one
temporary folder and rank 0 finishes the card and stats: the images are those of a single process.

Interrupted runs resume (stages/synthesis/finished.py): every finished batch (INFER: (teacher, batch) job,
with its compensator, the one thing that crosses jobs) is kept in `.<out>.resume/`, keyed by the method's
params and inputs, and a rerun recovers only the rest. A batch depends on its own seed alone, so the set
is the same bytes however often the run stopped; DELT's rounds need no saving (every image's (join, stop)
comes from the params). A non-finite loss stops the run with DivergedError; nothing is saved as images.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from stages.data.distilled import write_labels
from stages.data.folder import load_imagefolder, normalise, read_classes
from stages.data.prepared import inputs_of, manifest_of, open_images
from stages.models import load_checkpoint, predict
from stages.pipeline.artifacts import DataMeta, read_data_meta
from stages.pipeline import cli, distributed, params, runlog
from stages.pipeline.params import Params
from stages.pipeline.card import EVALUATION_NOTE, write_card
from stages.pipeline.distributed import World
from stages.pipeline.errors import DataError, DivergedError, PipelineError
from stages.pipeline.outputs import sha256_file, write_json
from stages.pipeline.progress import progress
from stages.pipeline.seeds import derive_seed
from stages.synthesis.finished import FinishedBatches, save_pixels, to_uint8
from stages.synthesis.movement import assert_moved
from stages.synthesis.recover import (RecoverConfig, batch_teacher, plan_class_groups, plan_groups,
                                      recover_compensators, synthesize)
from stages.synthesis.schedules import class_rounds, infer_budget, join_rounds

LABELS = "labels.safetensors"
COMPENSATORS = "compensators.safetensors"


def engine_config(section) -> RecoverConfig:
    r = section.recover
    return RecoverConfig(iterations=r.iterations, lr=r.lr, r_bn=r.r_bn, first_bn_multiplier=r.first_bn_multiplier,
                         r_var=r.r_var, jitter=r.jitter, crop_min_scale=r.crop_min_scale,
                         crop_schedule=r.crop_schedule, flip=r.flip, dwa_steps=r.dwa_steps, dwa_rho=r.dwa_rho,
                         roll=r.roll)


class Teachers:
    """The teachers a method reads, from artifacts/<ds>/teachers/<arch>, checked against the data."""

    def __init__(self, root: Path, archs: list[str], data_meta: DataMeta):
        self.models, self.meta, self.sha256 = [], [], []
        for arch in archs:
            model, meta = load_checkpoint(root / arch, data_meta.classes_sha256)
            if meta["image_size"] != data_meta.image_size:
                raise PipelineError(f"{root / arch / 'meta.json'}: image_size = {meta['image_size']}, data is "
                                    f"{data_meta.image_size} px; retrain the teacher")
            self.models.append(model)
            self.meta.append(meta)
            self.sha256.append(sha256_file(root / arch / "model.safetensors"))
        norms = {(tuple(m["mean"]), tuple(m["std"])) for m in self.meta}
        if len(norms) > 1:  # one image file must mean the same pixels to every teacher
            raise PipelineError(f"teachers {archs} use different normalisations {sorted(norms)}")
        self.archs, self.mean, self.std = archs, self.meta[0]["mean"], self.meta[0]["std"]

    def card(self) -> dict:
        return {"archs": self.archs, "sha256": self.sha256}


def diverged(method: str, e: DivergedError) -> DivergedError:
    return DivergedError(f"recover {method}: {e}; nothing was saved - lower {method}.recover.lr or r_bn")


def ipc_range(method: str, section, end_default: int) -> tuple[int, int]:
    """The shard [ipc_start, ipc_end) this run makes (IPC indices; INFER: base sets)."""
    r = section.recover
    end = end_default if r.ipc_end is None else r.ipc_end
    if end > end_default:
        raise PipelineError(f"params.yaml: {method}.recover.ipc_end = {end}: above the {end_default} "
                            f"{'base sets' if method == 'infer' else 'IPC indices'} to make")
    return r.ipc_start, end


def run_engine(method: str, section, cfg: RecoverConfig, teachers: Teachers, classes: list[str], size: int,
               ipc: int, seed: int, out: Path, world: World, finished: FinishedBatches, init=None,
               span=None) -> tuple[int, float]:
    """Synthesise this rank's groups of the IPC range (those not finished by an earlier run) with a
    progress bar; returns the world's (image-iterations, seconds) summed over ranks."""
    start, end = ipc_range(method, section, ipc)
    per_batch = section.recover.ipc_per_batch
    groups = world.shard(plan_class_groups(len(classes), ipc, per_batch) if getattr(section, "batch_order", "ipc")
                         == "class" else plan_groups(start, end, per_batch))
    saved = finished.load([g.name for g in groups], f"recover {method}")
    for batch in saved.values():
        save_pixels(out, classes, batch["labels"], batch["indices"], batch["pixels"])
    work, seconds = sum(b["image_iterations"] for b in saved.values()), sum(b["seconds"] for b in saved.values())
    todo = [g for g in groups if g.name not in saved]
    bar = progress(total=len(groups), initial=len(saved), desc=f"recover {method}", unit="batch")
    try:
        for r in synthesize(teachers.models[0], len(classes), size, todo, cfg, teachers.mean, teachers.std,
                            derive_seed(seed, method), init, span):
            pixels = to_uint8(r.images, teachers.mean, teachers.std)
            assert_moved(method, to_uint8(r.start, teachers.mean, teachers.std), pixels,
                         [f"class {classes[y]}" for y in r.labels.tolist()], r.indices.tolist(), r.optimised)
            finished.keep(r.group.name, {"labels": r.labels, "indices": r.indices, "pixels": pixels,
                                         "image_iterations": r.image_iterations, "seconds": r.seconds})
            save_pixels(out, classes, r.labels, r.indices, pixels)
            work, seconds = work + r.image_iterations, seconds + r.seconds
            bar.update()
            bar.set_postfix(img_it_per_s=f"{work / max(seconds, 1e-9):.0f}")
    except DivergedError as e:
        raise diverged(method, e) from None
    bar.close()
    work, seconds = map(sum, zip(*world.gather([work, seconds])))
    return work, seconds


def delt_init(init_dir: Path, classes: list[str], ipc: int, size: int, mean, std):
    """init(labels, indices, gen) → the selected real image of rank k (file prefix k) per class."""
    init = open_images(init_dir, classes, size, desc="load init")
    by_class = [[i for i, y in enumerate(init.labels.tolist()) if y == c] for c in range(len(classes))]
    for c, members in enumerate(by_class):
        if len(members) < ipc:
            raise DataError(f"{init_dir / classes[c]}: {len(members)} init images, ipc = {ipc}; rerun select")
    table = torch.stack([torch.stack([init.images[i] for i in members[:ipc]]) for members in by_class])
    return lambda labels, indices, gen: normalise(table[labels, indices].float() / 255, mean, std)


def delt_span(p: Params, num_classes: int):
    """span(labels, indices) → EarlyLate (join, stop) iterations of each image.

    A class runs its own R_c rounds (R_c = R unless min_iterations draws fewer) and its IPC is spread over
    those R_c rounds, as the reference does: every rank joins before its class stops."""
    d, total = p.delt, p.delt.recover.iterations
    rng = np.random.default_rng(derive_seed(p.seed, "delt", "min_iterations"))
    rounds = class_rounds(num_classes, total, d.round_iterations, d.min_iterations or total, rng)
    joins = torch.tensor([join_rounds(p.ipc, r) for r in rounds]) * d.round_iterations  # [class, rank]
    stops = torch.tensor(rounds) * d.round_iterations
    return lambda labels, indices: (joins[labels, indices], stops[labels])


def run_infer(p: Params, teachers: Teachers, train_dir: Path, classes: list[str], size: int, out: Path,
              world: World, finished: FinishedBatches) -> dict | None:
    """Bases (drawn from `train_dir`), compensators and static labels; returns the card's synthesis record
    (on rank 0; the other ranks only make their share of the compensators)."""
    cfg, C, M = engine_config(p.infer), len(classes), len(teachers.archs)
    ipc_init, per_set = infer_budget(p.ipc, C, M, p.infer.ipc_init)
    start, end = ipc_range("infer", p.infer, ipc_init)

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
        arch, teacher = teachers.archs[m], teachers.models[m]
        batch = bases[group.start - start:group.stop - start]
        if (job := saved.get(names[m, group])) is None:  # the job's own seed: independent of earlier jobs
            gen_rng = np.random.default_rng(derive_seed(p.seed, "infer", arch, group.start))
            began = time.perf_counter()
            teacher = batch_teacher(teacher, batch.flatten(0, 1), torch.arange(C).repeat(len(batch)), cfg, gen_rng)
            try:
                u, images = recover_compensators(teacher, batch, cfg, teachers.mean, teachers.std, gen_rng,
                                                 where=f"teacher {arch}, base sets [{group.start}, {group.stop})")
            except DivergedError as e:
                raise diverged("infer", e) from None
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


def expect_init(method: str, init: str, what: str) -> Path:
    if init == "noise" or not (Path(init).is_dir() or manifest_of(init)):
        raise PipelineError(f"recover {method}: --init {init}: expected {what} (a folder)")
    return Path(init)


def run(p: Params, method: str, teachers_dir: Path, init: str, data: Path, out: Path, stats: Path) -> dict | None:
    """The recover stage: `method`'s images (and INFER's labels) from its teachers into the set `out`, resuming
    finished batches; writes the card and `stats` and returns the stats (None on a torchrun rank other than 0).
    `init` is `noise` (sre2l), the select stage's init set (delt) or the train folder of the bases (infer)."""
    section = getattr(p, method)
    data_meta = read_data_meta(data)
    classes, size = read_classes(data), data_meta.image_size
    archs = section.teachers if method == "infer" else [section.teacher]
    teachers = Teachers(teachers_dir, archs, data_meta)
    cfg = engine_config(section)
    # what decides the images: the method's params and its inputs (teacher weights by hash, the init or
    # train folder by listing, the data's meta.json), so other params or inputs start afresh
    settings = {"method": method, "ipc": p.ipc, "seed": p.seed, method: section.model_dump(),
                "teachers": teachers.card()}
    inputs = [data / "meta.json"] + ([inputs_of(init)] if init != "noise" else [])

    with distributed.world() as world, distributed.shared_dir(world, out) as tmp:
        finished = FinishedBatches(world, out, settings, inputs)
        if method == "infer":
            record = run_infer(p, teachers, expect_init(method, init, "a train folder"), classes, size, tmp, world,
                               finished)
        else:
            record = run_sre2l_or_delt(p, method, init, cfg, teachers, classes, size, tmp, world, finished)
        if not world.main:
            return None
        images, work, seconds = write_set_card(tmp, p, method, classes, teachers, record)
    rate = work / max(seconds, 1e-9)
    stats_json = {"method": method, "images": images, "image_iterations": work,
                  **{k: record[k] for k in ("sre2l_image_iterations", "saving_vs_sre2l") if k in record}}
    write_json(stats, stats_json)
    finished.clear()
    runlog.record("recover", out, seconds, method=method, images=images, image_iterations=work,
                  image_iterations_per_second=round(rate, 1))
    saving = (f"; vs {record['sre2l_image_iterations']:,} for SRe2L at the same {cfg.iterations} iterations: "
              f"{100 * record['saving_vs_sre2l']:.1f} % fewer") if method == "delt" else ""
    print(f"recover {method}: {images} images, {work:,} image-iterations in {seconds:.1f} s "
          f"({rate:.0f}/s){saving} → {out}")
    return stats_json


def run_sre2l_or_delt(p: Params, method: str, init: str, cfg: RecoverConfig, teachers: Teachers, classes: list[str],
                      size: int, out: Path, world: World, finished: FinishedBatches) -> dict:
    """SRe2L from noise, or DELT from the init set with EarlyLate's (join, stop) spans, through the engine;
    the synthesis record with the saving against SRe2L at the same iterations."""
    section = getattr(p, method)
    start = span = None
    if method == "sre2l" and init != "noise":
        raise PipelineError(f"recover sre2l: --init {init}: SRe2L starts from noise (--init noise)")
    if method == "delt":
        start = delt_init(expect_init(method, init, "the select stage's init set"), classes, p.ipc, size,
                          teachers.mean, teachers.std)
        span = delt_span(p, len(classes))
    work, seconds = run_engine(method, section, cfg, teachers, classes, size, p.ipc, p.seed, out, world, finished,
                               start, span)
    sre2l_work = cfg.iterations * sum(1 for _ in out.rglob("*.png"))  # SRe2L: every image, every iteration
    return {"ipc_range": list(ipc_range(method, section, p.ipc)), "image_iterations": work, "seconds": seconds,
            "sre2l_image_iterations": sre2l_work, "saving_vs_sre2l": round(1 - work / sre2l_work, 6)}


def write_set_card(tmp: Path, p: Params, method: str, classes: list[str], teachers: Teachers,
                   record: dict) -> tuple[int, int, float]:
    """The set's card.json (its synthesis record without the timing); (images, image-iterations, seconds)."""
    section = getattr(p, method)
    work, seconds = record.pop("image_iterations"), record.pop("seconds")
    images = sum(1 for _ in tmp.rglob("*.png"))
    record["image_iterations"] = work
    write_card(tmp, method=method, dataset=p.dataset, ipc=p.ipc, classes=classes, num_images=images,
               params={"ipc": p.ipc, "seed": p.seed, method: section.model_dump()},
               teacher=teachers.card(), evaluation=EVALUATION_NOTE, synthesis=record,
               labels=LABELS if method == "infer" else None)
    return images, work, seconds


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=["sre2l", "delt", "infer"])
    parser.add_argument("--teachers", required=True, type=Path, help="artifacts/<ds>/teachers")
    parser.add_argument("--init", required=True, help="starting images: `noise` (sre2l), the select stage's "
                        "init set (delt), or the real train folder the bases are drawn from (infer)")
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path, help="distilled set folder")
    parser.add_argument("--stats", required=True, type=Path, help="synthesis stats JSON (work done) to write")
    args = parser.parse_args()
    run(params.load(), args.method, args.teachers, args.init, args.data, args.out, args.stats)


if __name__ == "__main__":
    cli.run(main)
