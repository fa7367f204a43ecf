"""The recover engine's driver: what every method on the engine shares around `engine.synthesize`: its
teachers, its shard of the IPC range, resuming finished batches, the movement guard, the set's card. A
method's recipe (stages/methods/<name>/recipe.py) decides where images start and how long each one runs."""
from __future__ import annotations

from pathlib import Path

from stages.data.prepared import manifest_of
from stages.models.teachers import Teachers
from stages.pipeline.card import EVALUATION_NOTE, write_card
from stages.pipeline.distributed import World
from stages.pipeline.errors import DivergedError, PipelineError
from stages.pipeline.params import Params
from stages.pipeline.progress import progress
from stages.pipeline.seeds import derive_seed
from stages.recover_engine.engine import RecoverConfig, plan_class_groups, plan_groups, synthesize
from stages.recover_engine.finished import FinishedBatches, save_pixels, to_uint8
from stages.recover_engine.movement import assert_moved


def engine_config(section) -> RecoverConfig:
    r = section.recover
    return RecoverConfig(iterations=r.iterations, lr=r.lr, r_bn=r.r_bn, first_bn_multiplier=r.first_bn_multiplier,
                         r_var=r.r_var, jitter=r.jitter, crop_min_scale=r.crop_min_scale,
                         crop_schedule=r.crop_schedule, flip=r.flip, dwa_steps=r.dwa_steps, dwa_rho=r.dwa_rho,
                         roll=r.roll, clamp_start=r.clamp_start)


def diverged(method: str, e: DivergedError) -> DivergedError:
    return DivergedError(f"recover {method}: {e}; nothing was saved - lower {method}.recover.lr or r_bn")


def ipc_range(method: str, section, end_default: int, unit: str = "IPC indices") -> tuple[int, int]:
    """The shard [ipc_start, ipc_end) this run makes (of `unit`: IPC indices, or INFER's base sets)."""
    r = section.recover
    end = end_default if r.ipc_end is None else r.ipc_end
    if end > end_default:
        raise PipelineError(f"params.yaml: {method}.recover.ipc_end = {end}: above the {end_default} "
                            f"{unit} to make")
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
                            derive_seed(seed, method), init, span, world.device):
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


def expect_init(method: str, init: str, what: str) -> Path:
    if init == "noise" or not (Path(init).is_dir() or manifest_of(init)):
        raise PipelineError(f"recover {method}: --init {init}: expected {what} (a folder)")
    return Path(init)


def recover_images(p: Params, method: str, teachers: Teachers, classes: list[str], size: int, out: Path,
                   world: World, finished: FinishedBatches, start=None, span=None) -> dict:
    """`method`'s images through the engine, from noise or from `start(labels, indices, gen)`, each over its
    `span(labels, indices)` (join, stop) iterations or all of them; the synthesis record, with the work saved
    against SRe2L (every image, every iteration) at the same iterations."""
    section = getattr(p, method)
    cfg = engine_config(section)
    work, seconds = run_engine(method, section, cfg, teachers, classes, size, p.ipc, p.seed, out, world, finished,
                               start, span)
    sre2l_work = cfg.iterations * sum(1 for _ in out.rglob("*.png"))  # SRe2L: every image, every iteration
    return {"ipc_range": list(ipc_range(method, section, p.ipc)), "image_iterations": work, "seconds": seconds,
            "sre2l_image_iterations": sre2l_work, "saving_vs_sre2l": round(1 - work / sre2l_work, 6)}


def write_set_card(tmp: Path, p: Params, method: str, classes: list[str], teachers: Teachers,
                   record: dict, labels: str | None) -> tuple[int, int, float]:
    """The set's card.json (its synthesis record without the timing); (images, image-iterations, seconds)."""
    section = getattr(p, method)
    work, seconds = record.pop("image_iterations"), record.pop("seconds")
    images = sum(1 for _ in tmp.rglob("*.png"))
    record["image_iterations"] = work
    write_card(tmp, method=method, dataset=p.dataset, ipc=p.ipc, classes=classes, num_images=images,
               params={"ipc": p.ipc, "seed": p.seed, method: section.model_dump()},
               teacher=teachers.card(), evaluation=EVALUATION_NOTE, synthesis=record,
               labels=labels)
    return images, work, seconds
