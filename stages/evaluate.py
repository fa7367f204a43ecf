"""evaluate@<set>: train fresh students on a distilled set with the shared recipe; report val accuracy.

Protocols (evaluate.protocols): `fkd` replays relabel's stored crops and soft labels, `teacher`
distils the teacher online, `hard` is cross-entropy on each image's own label, `static` learns the
labels the set ships, mixed with the same λ as the images (skipped for a set that ships none):
logits by KD at evaluate.static_temperature (INFER's), probabilities as soft cross-entropy targets (PoDD's
learned labels); `noaug` distils the teacher's logits of each whole image with no crop, flip or mix (the
no-augmentation half of DD-Ranking's ARS). Every student architecture of `evaluate.students` trains
`evaluate.seeds` students per protocol, on the same plans and labels; metrics hold final and best top-1/top-5
as mean ± std. For baseline@random's draws, seed k trains on draw k with draw k's FKD labels.
Storage: the images' bytes, the bytes of the labels each protocol needs (FKD files as stored, shipped labels,
noaug's whole-image logits as float32, the teacher for online KD) and the full train set's bytes.
On the CPU the (protocol, seed) students train side by side, one per core on one thread each
(stages/pipeline/side_by_side.py); with evaluate.together (auto: on a GPU) the seeds of each (student,
protocol) train as one vmapped model (stages/training/together.py), equal to their separate runs within float
rounding. Under torchrun the students (or groups) are split over the ranks and rank 0 writes the metrics: the
same file as one process makes. Wall time goes to the run log
(stages/pipeline/runlog.py).
A killed run resumes from `.<metrics file>.resume/`: finished students are kept there, an unfinished one
continues from its last epoch.
"""
from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from stages.data.augment import Augment, EpochPlan, plain_epoch, plan_epoch, render
from stages.data.distilled import images_root, load_set, read_labels
from stages.data.folder import ImageSet, read_classes, renormalise
from stages.data.prepared import open_images, stored_bytes
from stages.models import build, load_checkpoint, predict
from stages.models.probes import teacher_view
from stages.pipeline.artifacts import read_data_meta, read_fkd_meta, read_json
from stages.pipeline import cli, distributed, params, runlog
from stages.pipeline.params import Params
from stages.pipeline.card import Card
from stages.pipeline.errors import DataError
from stages.pipeline.paths import inside
from stages.pipeline.outputs import dir_bytes, write_csv, write_json
from stages.pipeline.resume import Resume
from stages.pipeline.seeds import derive_seed
from stages.pipeline.side_by_side import jobs_at_once, map_side_by_side
from stages.training.loop import Batch, History, Optim, hard_loss, kd_loss, mse_ce_loss, train
from stages.training.params import Evaluate
from stages.training.recipe import eval_augment, eval_batch_size
from stages.training.soft_labels import epoch_file, read_checked_epoch
from stages.training.together import train_together
from stages.pipeline import outputs


def fkd_plans(labels_dir: Path, epochs: int, batch_size: int, num_images: int, num_classes: int):
    meta_path = labels_dir / "fkd.json"
    if not meta_path.exists():
        raise DataError(f"{meta_path}: missing; run relabel for this set first")
    meta = read_fkd_meta(labels_dir)
    if meta.epochs < epochs or meta.batch_size != batch_size or meta.num_images != num_images:
        raise DataError(f"{meta_path}: stored {meta.epochs} epochs x batch {meta.batch_size} for "
                        f"{meta.num_images} images; evaluate needs {epochs} x {batch_size} for {num_images}")
    record = meta.files or {}
    return lambda epoch: read_checked_epoch(epoch_file(labels_dir, epoch), num_images, num_classes, batch_size,
                                        record.get(epoch_file(labels_dir, epoch).name) if meta.files else None)


def static_labels(plan: EpochPlan, logits: torch.Tensor) -> torch.Tensor:
    """Each slot's shipped logits (or probabilities), mixed linearly with its partner's by the slot's λ
    (docs/methods/infer.md; for probabilities this is exactly the mixed label)."""
    slots = np.arange(len(plan.order))
    partner_slot = slots - slots % plan.batch_size + plan.partner
    lam = torch.from_numpy(plan.lam).unsqueeze(1)
    own = logits[torch.from_numpy(plan.order)]
    return lam * own + (1 - lam) * own[torch.from_numpy(partner_slot)]


def mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 6),
            "std": round(statistics.stdev(values), 6) if len(values) > 1 else 0.0}


@dataclass
class Students:
    """What every student run reads: the set's draws and labels, the recipe and the val data. One per evaluate
    run, shared by the side-by-side threads (read only, but for `whole_logits`, filled before they start)."""
    p: Params
    method: str
    num_classes: int
    size: int
    norm: tuple[list[float], list[float]]
    val: tuple
    draws: list[ImageSet]
    set_draws: int | None  # the card's draws (baseline@random), else None
    labels: Path
    epochs: int
    batch_size: int
    augment: Augment
    student_configs: dict[str, dict | None]
    shipped: torch.Tensor | None  # the labels the set ships (`static`)
    losses: dict[str, Callable[[torch.Tensor, Batch], torch.Tensor]]
    whole_logits: dict[int, torch.Tensor] = field(default_factory=dict)  # noaug: the teacher's logits, per draw
    # the initial weights come from torch's global generator, shared by the threads
    initialising: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cfg(self) -> Evaluate:
        return self.p.evaluate

    def labels_dir(self, s: int) -> Path:
        """Seed s's FKD files: a set of draws keeps each draw's in draw<k>/."""
        return self.labels / f"draw{s % self.set_draws}" if self.set_draws else self.labels


@dataclass
class Evaluation:
    """The set under evaluation, its teacher and what its students read."""
    card: Card
    teacher: torch.nn.Module
    teacher_norm: tuple[list[float], list[float]]  # a teacher sees images in its own normalisation
    students: Students

    @property
    def images(self) -> ImageSet:
        return self.students.draws[0]


def protocol_losses(cfg: Evaluate, teacher: torch.nn.Module, norm: tuple, teacher_norm: tuple,
                    kind: str | None) -> dict[str, Callable[[torch.Tensor, Batch], torch.Tensor]]:
    """Each protocol's loss; `static` depends on the `kind` of labels the set ships. Targets that are logits
    (fkd, teacher, noaug, shipped logits) take evaluate.loss: KL at a temperature, or EDC's MSE + CE."""
    def soft(target_logits, temperature):  # the recipe's loss on a batch whose targets are logits
        if cfg.loss == "mse_ce":
            return lambda logits, batch: mse_ce_loss(logits, target_logits(batch), batch, cfg.ce_weight)
        return lambda logits, batch: kd_loss(logits, target_logits(batch), temperature)

    online_kd = soft(lambda batch: predict(teacher, renormalise(batch.x, norm, teacher_norm)), cfg.temperature)
    stored_kd = soft(lambda batch: batch.soft, cfg.temperature)
    static_kd = soft(lambda batch: batch.soft, cfg.static_temperature)

    def soft_targets(logits, batch):
        return F.cross_entropy(logits, batch.soft)

    return {"fkd": stored_kd, "static": soft_targets if kind == "probabilities" else static_kd,
            "teacher": online_kd, "hard": hard_loss, "noaug": stored_kd}


def load_inputs(p: Params, set_dir: Path, labels: Path, teacher_dir: Path, data: Path, epochs: int) -> Evaluation:
    """The set (every draw), val, the teacher and the shipped labels, checked against the prepared data."""
    cfg = p.evaluate
    data_meta = read_data_meta(data)
    classes = read_classes(data)
    card, images = load_set(set_dir, data)
    size, norm = data_meta.image_size, (data_meta.mean, data_meta.std)
    valset = open_images(data / "val", classes, size)
    val = (valset.normalised(*norm), valset.labels)
    teacher, t_meta = load_checkpoint(teacher_dir, data_meta.classes_sha256)
    teacher_norm = (t_meta["mean"], t_meta["std"])
    draws = [images] + [load_set(set_dir, data, k)[1] for k in range(1, card.draws or 1)]
    batch_size = eval_batch_size(cfg, len(images), len(classes))
    augment = eval_augment(cfg, size)
    student_configs = {a: p.models[a].model_dump() if p.models.get(a) else None for a in cfg.students}
    shipped, kind = read_labels(set_dir, card, images) if card.labels else (None, None)
    students = Students(p, card.method, len(classes), size, norm, val, draws, card.draws, labels, epochs, batch_size,
                        augment, student_configs, shipped, protocol_losses(cfg, teacher, norm, teacher_norm, kind))
    return Evaluation(card, teacher, teacher_norm, students)


def runnable_protocols(cfg: Evaluate, ev: Evaluation) -> list[str]:
    """evaluate.protocols, less `static` for a set that ships no labels (said once)."""
    shipped = ev.students.shipped
    if "static" in cfg.protocols and shipped is None:
        print(f"evaluate {ev.card.method}: protocol static skipped (the set ships no labels)")
    return [pr for pr in cfg.protocols if pr != "static" or shipped is not None]


def label_bytes(ev: Evaluation, set_dir: Path, teacher_dir: Path, protocols: list[str]) -> dict[str, int | None]:
    """What each protocol needs besides the images, in bytes."""
    card, images = ev.card, ev.images
    return {"fkd": dir_bytes(ev.students.labels_dir(0)) if "fkd" in protocols else None, "hard": 0,
            "noaug": len(images) * ev.students.num_classes * 4,  # whole-image logits, float32 as sets ship labels
            "teacher": (teacher_dir / "model.safetensors").stat().st_size,
            "static": inside(set_dir, card.labels, "card labels").stat().st_size if card.labels else None}


def resume_settings(p: Params, students: Students) -> dict:
    """What decides a student, for the resume folder's key: the params this stage reads and its arguments."""
    cfg = p.evaluate
    return {"seed": p.seed, "evaluate": cfg.model_dump(exclude={"teacher", "protocols", "seeds", "epochs",
                                                                "full_epochs", "students"}),
            "student_configs": students.student_configs, "epochs": students.epochs}


def whole_image_logits(ev: Evaluation) -> dict[int, torch.Tensor]:
    """noaug: the teacher's logits of each whole image (no crop, flip or mix), per draw."""
    st = ev.students
    logits = {}
    for k, data in enumerate(st.draws):
        whole = plain_epoch(np.arange(len(data)), st.batch_size)
        logits[k] = torch.cat([predict(ev.teacher, render(data.images, whole, b, *ev.teacher_norm, st.size)).cpu()
                               for b in whole.batches()])
    return logits


def epoch_plans(st: Students, protocol: str, s: int, data: ImageSet, rng: np.random.Generator | None):
    """`plans(epoch)` for `train`: each epoch's augmentation plan and the labels it replays (None: the loss
    computes them). fkd reads relabel's stored plans and logits; the others draw from `rng`."""
    if protocol == "fkd":
        return fkd_plans(st.labels_dir(s), st.epochs, st.batch_size, len(data), st.num_classes)

    def plans(epoch):
        if protocol == "noaug":
            plan = plain_epoch(rng.permutation(len(data)), st.batch_size)
            return plan, static_labels(plan, st.whole_logits[s % len(st.draws)])
        plan = plan_epoch(len(data), st.batch_size, rng, st.augment)
        return plan, static_labels(plan, st.shipped) if protocol == "static" else None
    return plans


def recipe_optim(cfg: Evaluate) -> Optim:
    """The students' optimizer, schedule and weight average."""
    return Optim(cfg.optimizer, cfg.lr, cfg.weight_decay, zeta=cfg.zeta, ema=cfg.ema)


def student_name(cfg: Evaluate, arch: str, protocol: str, s: int) -> str:
    """A student's name in the resume folder; the first architecture's keep a single-student run's names."""
    return f"{protocol}-seed{s}" if arch == cfg.students[0] else f"{arch}-{protocol}-seed{s}"


def student_desc(st: Students, arch: str, protocol: str, s: int) -> str:
    """How the progress lines name a student: `<method> [<protocol> seed <s>( <arch>)]`."""
    return f"{st.method} [{protocol} seed {s}" + ("]" if arch == st.cfg.students[0] else f" {arch}]")


def new_student(st: Students, arch: str, protocol: str, s: int, device: torch.device):
    """Student s of (architecture, protocol): its initial weights, its draw and its augmentation generator."""
    with st.initialising:  # initial weights come from torch's global generator, shared by the threads
        torch.manual_seed(derive_seed(st.p.seed, "evaluate", protocol, s))
        student = build(arch, st.num_classes, st.size, st.student_configs[arch]).to(device)
    rng = None if protocol == "fkd" else \
        np.random.default_rng(derive_seed(st.p.seed, "evaluate", protocol, s, "augment"))
    return student, st.draws[s % len(st.draws)], rng


def finished(st: Students, arch: str, protocol: str, s: int, history: History, resume: Resume) -> dict:
    """A trained student's summary and curve, kept in the resume folder (a rerun after a kill skips it)."""
    summary = history.summary()
    print(f"evaluate {student_desc(st, arch, protocol, s)}: top-1 {summary['top1']:.4f} "
          f"(best {summary['top1_best']:.4f}), {summary['images_per_second']:.0f} img/s")
    curve = [{"method": st.method, "protocol": protocol, "seed": s, "epoch": e, "top1": round(t1, 6),
              "top5": round(t5, 6), "loss": round(loss, 6)}
             for e, t1, t5, loss in zip(history.epochs, history.top1, history.top5, history.loss)]
    resume.write_bytes(f"{student_name(st.cfg, arch, protocol, s)}.json",
                       json.dumps({"summary": summary, "curve": curve}).encode())
    return {"summary": summary, "curve": curve}


def kept(st: Students, arch: str, protocol: str, seeds: range | list[int], resume: Resume) -> list[dict] | None:
    """These students' results if a run before an interruption finished them all."""
    names = [student_name(st.cfg, arch, protocol, s) for s in seeds]
    if not all(resume.done(f"{name}.json") for name in names):
        return None
    for s in seeds:
        print(f"evaluate {student_desc(st, arch, protocol, s)}: finished before the interruption; resumed")
    return [read_json(resume.path(f"{name}.json"), hint=f"the progress folder {resume.folder} can be removed")
            for name in names]


def student_run(st: Students, arch: str, protocol: str, s: int, device: torch.device, resume: Resume) -> dict:
    """One student (architecture, protocol, seed) trained on its own and validated."""
    cfg, name = st.cfg, student_name(st.cfg, arch, protocol, s)
    if done := kept(st, arch, protocol, [s], resume):
        return done[0]
    student, data, rng = new_student(st, arch, protocol, s, device)
    history = train(student, data, st.norm, st.epochs, st.batch_size, epoch_plans(st, protocol, s, data, rng),
                    st.losses[protocol], recipe_optim(cfg), st.val, cfg.eval_points,
                    desc=f"evaluate {student_desc(st, arch, protocol, s)}", resume=resume, state=name, rng=rng)
    return finished(st, arch, protocol, s, history, resume)


def group_run(st: Students, arch: str, protocol: str, device: torch.device, resume: Resume) -> list[dict]:
    """Every seed's student of (architecture, protocol) trained together as one vmapped model
    (stages/training/together.py) and validated."""
    cfg, seeds = st.cfg, range(st.cfg.seeds)
    if done := kept(st, arch, protocol, seeds, resume):
        return done
    students, draws, rngs = zip(*(new_student(st, arch, protocol, s, device) for s in seeds))
    histories = train_together(list(students), list(draws), st.norm, st.epochs, st.batch_size,
                               [epoch_plans(st, protocol, s, d, r) for s, d, r in zip(seeds, draws, rngs)],
                               st.losses[protocol], recipe_optim(cfg), st.val,
                               cfg.eval_points, desc=f"evaluate {st.method} [{arch} {protocol} x{cfg.seeds}]",
                               resume=resume, state=f"{arch}-{protocol}-together", rngs=list(rngs))
    return [finished(st, arch, protocol, s, h, resume) for s, h in zip(seeds, histories)]


def together(cfg: Evaluate, device: torch.device) -> bool:
    """Whether the seeds of a (student, protocol) train as one model: evaluate.together, `auto` on a GPU
    (on this CPU it measured slower than students side by side: docs/performance.md)."""
    return device.type == "cuda" if cfg.together == "auto" else cfg.together


def train_students(world: distributed.World, st: Students, jobs: list[tuple[str, str, int]],
                   resume: Resume) -> dict[tuple[str, str, int], dict]:
    """Every (architecture, protocol, seed) student's run, keyed by job: this rank trains its share, its seeds
    together or its students side by side, and the ranks gather them all."""
    if together(st.cfg, world.device):  # jobs list each (architecture, protocol)'s seeds in a row
        groups = list(dict.fromkeys((arch, protocol) for arch, protocol, _ in jobs))
        mine = [result for group in world.shard(groups) for result in group_run(st, *group, world.device, resume)]
    else:
        share = world.shard(jobs)
        mine = map_side_by_side(lambda job: student_run(st, *job, world.device, resume), share,
                                jobs_at_once(world.device, len(share)))
    return dict(zip(jobs, (result for part in world.gather(mine) for result in part)))


def summarise(cfg: Evaluate, protocols: list[str], done: dict) -> dict[str, dict[str, dict]]:
    """Per student architecture and protocol: mean ± std over seeds, and each seed's top-1."""
    results = {arch: {} for arch in cfg.students}
    for arch in cfg.students:
        for protocol in protocols:
            runs = [done[arch, protocol, s]["summary"] for s in range(cfg.seeds)]
            results[arch][protocol] = {
                **{k: mean_std([r[k] for r in runs]) for k in ("top1", "top5", "top1_best", "top5_best")},
                "per_seed_top1": [round(r["top1"], 6) for r in runs],
            }
    return results


def metrics_record(ev: Evaluation, set_dir: Path, data: Path, protocols: list[str], label_bytes: dict,
                   results: dict) -> dict:
    """The metrics JSON: the set's size and storage, the teacher's view of it and every student's results."""
    st, card, images = ev.students, ev.card, ev.images
    cfg = st.cfg
    return {
        **teacher_view(ev.teacher.cpu(), images.normalised(*ev.teacher_norm), images.labels),
        "method": card.method, "dataset": card.dataset, "ipc": card.ipc, "images": len(images),
        "bytes": stored_bytes(images_root(set_dir, card)), "draws": card.draws,
        "label_bytes": {pr: label_bytes[pr] for pr in protocols},
        "train_bytes": stored_bytes(data / "train"),
        "pixels": (card.synthesis or {}).get("pixels", len(images) * st.size * st.size), "student": cfg.students[0],
        "epochs": st.epochs, "batch_size": st.batch_size, "seeds": cfg.seeds, "protocols": results[cfg.students[0]],
        "students": results,
        "note": "top1/top5 are after the last epoch; *_best are the max of each over validation points (optimistic); "
                "protocols: the first student's (students: every student's); bytes: one draw's images; "
                "label_bytes: what each protocol needs besides the images; train_bytes: the full train set; "
                "pixels: the budget per channel (images x h x w, or a poster's own pixel count); "
                "teacher_fidelity: the teacher's top-1 on the set's own images; intra_class_cosine: mean "
                "cosine similarity of same-class teacher penultimate features (lower = more diverse)",
    }


def run(p: Params, set_dir: Path, labels: Path, teacher_dir: Path, data: Path, epochs: int, out: Path,
        curves: Path | None = None) -> dict | None:
    """Train every (student, protocol, seed) on the set; write the metrics JSON `out` (and the first student's
    `curves` CSV). Returns the metrics on rank 0, None on the other ranks."""
    outputs.claim("evaluate", {"--out": (out, outputs.json_kind("evaluate's metrics", protocols=None)),
                               "--curves": (curves, outputs.file_kind("student curves", ".csv"))},
                  {"--set": set_dir, "--labels": labels, "--teacher": teacher_dir, "--data": data})
    cfg = p.evaluate
    started = time.perf_counter()
    ev = load_inputs(p, set_dir, labels, teacher_dir, data, epochs)
    protocols = runnable_protocols(cfg, ev)
    jobs = [(student, protocol, s) for student in cfg.students for protocol in protocols for s in range(cfg.seeds)]
    needs = label_bytes(ev, set_dir, teacher_dir, protocols)
    settings, inputs = resume_settings(p, ev.students), [set_dir, labels, teacher_dir, data]

    with distributed.world() as world:  # the students are independent: each rank trains its share
        resume = Resume.shared(world, out, settings, inputs)
        ev.teacher.to(world.device)
        if "noaug" in protocols:
            ev.students.whole_logits.update(whole_image_logits(ev))
        done = train_students(world, ev.students, jobs, resume)
    if not world.main:
        return None
    results = summarise(cfg, protocols, done)
    metrics = metrics_record(ev, set_dir, data, protocols, needs, results)
    write_json(out, metrics)
    runlog.record("evaluate", out, time.perf_counter() - started, method=ev.card.method, students=len(jobs),
                  train_seconds=round(sum(done[job]["summary"]["train_seconds"] for job in jobs), 2),
                  images_per_second=round(statistics.fmean(done[job]["summary"]["images_per_second"]
                                                           for job in jobs), 1))
    if curves:  # the curves plot draws one line per set and protocol: the first student's
        write_csv(curves, [row for job in jobs if job[0] == cfg.students[0] for row in done[job]["curve"]])
    resume.clear()
    first = results[cfg.students[0]]
    print(" | ".join(f"{k}: {v['top1']['mean']:.4f}±{v['top1']['std']:.4f}" for k, v in first.items()))
    return metrics


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--set", required=True, type=Path, help="distilled set folder (with card.json)")
    parser.add_argument("--labels", required=True, type=Path, help="relabel output (FKD soft labels) of this set")
    parser.add_argument("--teacher", required=True, type=Path, help="teacher folder, for the `teacher` protocol")
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument("--curves", type=Path, help="CSV to write: val top-1/top-5 and train loss per validation "
                                                    "point, protocol and seed (the student curves of `dvc plots show`)")
    args = parser.parse_args()
    run(params.load(), args.set, args.labels, args.teacher, args.data, args.epochs, args.out, args.curves)


if __name__ == "__main__":
    cli.run(main)
