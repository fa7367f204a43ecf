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
(stages/pipeline/side_by_side.py); under torchrun they are split over the ranks and rank 0 writes the
metrics: the same file as one process makes. Wall time goes to the run log
(stages/pipeline/runlog.py).
A killed run resumes from `.<metrics file>.resume/`: finished students are kept there, an unfinished one
continues from its last epoch.
"""
from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from stages.data.augment import EpochPlan, plain_epoch, plan_epoch, render
from stages.data.distilled import images_root, load_set, read_labels
from stages.data.folder import read_classes, renormalise
from stages.data.prepared import open_images, stored_bytes
from stages.models import build, load_checkpoint, predict
from stages.models.probes import teacher_view
from stages.pipeline.artifacts import read_data_meta, read_fkd_meta, read_json
from stages.pipeline import cli, distributed, params, runlog
from stages.pipeline.errors import DataError
from stages.pipeline.paths import inside
from stages.pipeline.outputs import dir_bytes, write_csv, write_json
from stages.pipeline.resume import Resume
from stages.pipeline.seeds import derive_seed
from stages.pipeline.side_by_side import jobs_at_once, map_side_by_side
from stages.training.loop import Optim, hard_loss, kd_loss, train
from stages.training.recipe import eval_augment, eval_batch_size
from stages.training.soft_labels import epoch_file, read_checked_epoch


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


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--set", required=True, help="distilled set folder (with card.json)")
    parser.add_argument("--labels", required=True, help="relabel output (FKD soft labels) of this set")
    parser.add_argument("--teacher", required=True, help="teacher folder, for the `teacher` protocol")
    parser.add_argument("--data", required=True, help="data/<dataset>")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--curves", help="CSV to write: val top-1/top-5 and train loss per validation point, "
                                         "protocol and seed (the student curves of `dvc plots show`)")
    args = parser.parse_args()
    p = params.load()
    cfg = p.evaluate
    started = time.perf_counter()
    data_meta = read_data_meta(args.data)
    classes = read_classes(args.data)
    card, images = load_set(args.set, args.data)
    size, norm = data_meta.image_size, (data_meta.mean, data_meta.std)
    valset = open_images(Path(args.data) / "val", classes, size)
    val = (valset.normalised(*norm), valset.labels)
    teacher, t_meta = load_checkpoint(args.teacher, data_meta.classes_sha256)
    teacher_norm = (t_meta["mean"], t_meta["std"])  # a teacher sees images in its own normalisation
    draws = [images] + [load_set(args.set, args.data, k)[1] for k in range(1, card.draws or 1)]
    batch_size = eval_batch_size(cfg, len(images), len(classes))
    augment = eval_augment(cfg, size)
    student_configs = {a: p.models[a].model_dump() if p.models.get(a) else None for a in cfg.students}

    def labels_dir(s: int) -> Path:  # a set of draws keeps each draw's FKD files in draw<k>/
        return Path(args.labels) / f"draw{s % card.draws}" if card.draws else Path(args.labels)

    def online_kd(logits, batch):
        return kd_loss(logits, predict(teacher, renormalise(batch.x, norm, teacher_norm)), cfg.temperature)

    def stored_kd(logits, batch):
        return kd_loss(logits, batch.soft, cfg.temperature)

    def static_kd(logits, batch):
        return kd_loss(logits, batch.soft, cfg.static_temperature)

    def soft_targets(logits, batch):
        return F.cross_entropy(logits, batch.soft)

    shipped, kind = read_labels(args.set, card, images) if card.labels else (None, None)
    losses = {"fkd": stored_kd, "static": soft_targets if kind == "probabilities" else static_kd,
              "teacher": online_kd, "hard": hard_loss, "noaug": stored_kd}
    if "static" in cfg.protocols and shipped is None:
        print(f"evaluate {card.method}: protocol static skipped (the set ships no labels)")
    protocols = [pr for pr in cfg.protocols if pr != "static" or shipped is not None]
    jobs = [(student, protocol, s) for student in cfg.students for protocol in protocols for s in range(cfg.seeds)]
    label_bytes = {"fkd": dir_bytes(labels_dir(0)) if "fkd" in protocols else None, "hard": 0,
                   "noaug": len(images) * len(classes) * 4,  # whole-image logits, float32 as sets ship labels
                   "teacher": (Path(args.teacher) / "model.safetensors").stat().st_size,
                   "static": inside(args.set, card.labels, "card labels").stat().st_size if card.labels else None}

    # keyed by what decides a student: the params this stage reads, its arguments and its inputs
    settings = {"seed": p.seed, "evaluate": cfg.model_dump(exclude={"teacher", "protocols", "seeds", "epochs",
                                                                         "full_epochs", "students"}),
                "student_configs": student_configs, "epochs": args.epochs}
    inputs = [args.set, args.labels, args.teacher, args.data]

    initialising = threading.Lock()
    whole_logits = {}  # noaug: the teacher's logits of each whole image, per draw

    def student_run(arch: str, protocol: str, s: int, device: torch.device, resume: Resume) -> dict:
        # the first student keeps the names (and resume files) a single-student run has
        name = f"{protocol}-seed{s}" if arch == cfg.students[0] else f"{arch}-{protocol}-seed{s}"
        desc = f"{card.method} [{protocol} seed {s}" + ("]" if arch == cfg.students[0] else f" {arch}]")
        if resume.done(f"{name}.json"):
            print(f"evaluate {desc}: finished before the interruption; resumed")
            return read_json(resume.path(f"{name}.json"), hint=f"the progress folder {resume.folder} can be removed")
        with initialising:  # the initial weights come from torch's global generator, shared by the threads
            torch.manual_seed(derive_seed(p.seed, "evaluate", protocol, s))
            student = build(arch, len(classes), size, student_configs[arch]).to(device)
        rng, data = None, draws[s % len(draws)]
        if protocol == "fkd":
            plans = fkd_plans(labels_dir(s), args.epochs, batch_size, len(data), len(classes))
        else:
            rng = np.random.default_rng(derive_seed(p.seed, "evaluate", protocol, s, "augment"))
            def plans(epoch, rng=rng, static=protocol == "static"):
                if protocol == "noaug":
                    plan = plain_epoch(rng.permutation(len(data)), batch_size)
                    return plan, static_labels(plan, whole_logits[s % len(draws)])
                plan = plan_epoch(len(data), batch_size, rng, augment)
                return plan, static_labels(plan, shipped) if static else None
        history = train(student, data, norm, args.epochs, batch_size, plans, losses[protocol],
                        Optim(cfg.optimizer, cfg.lr, cfg.weight_decay), val, cfg.eval_points,
                        desc=f"evaluate {desc}", resume=resume, state=name, rng=rng)
        summary = history.summary()
        print(f"evaluate {desc}: top-1 {summary['top1']:.4f} "
              f"(best {summary['top1_best']:.4f}), {summary['images_per_second']:.0f} img/s")
        curve = [{"method": card.method, "protocol": protocol, "seed": s, "epoch": e, "top1": round(t1, 6),
                  "top5": round(t5, 6), "loss": round(loss, 6)}
                 for e, t1, t5, loss in zip(history.epochs, history.top1, history.top5, history.loss)]
        resume.write_bytes(f"{name}.json", json.dumps({"summary": summary, "curve": curve}).encode())
        return {"summary": summary, "curve": curve}

    with distributed.world() as world:  # the students are independent: each rank trains its share
        # rank 0 keys (or resets) the resume folder first; then every rank keeps its own students there
        resume = Resume(args.out, settings, inputs) if world.main else None
        world.barrier()
        resume = resume or Resume(args.out, settings, inputs)
        teacher.to(world.device)
        if "noaug" in protocols:
            for k, data in enumerate(draws):
                whole = plain_epoch(np.arange(len(data)), batch_size)
                whole_logits[k] = torch.cat([predict(teacher, render(data.images, whole, b, *teacher_norm, size)).cpu()
                                             for b in whole.batches()])
        share = world.shard(jobs)
        mine = map_side_by_side(lambda job: student_run(*job, world.device, resume), share,
                                jobs_at_once(world.device, len(share)))
        done = dict(zip(jobs, (run for share in world.gather(mine) for run in share)))
    if not world.main:
        return
    results = {arch: {} for arch in cfg.students}
    # the curves plot draws one line per set and protocol: the first student's
    curves = [row for job in jobs if job[0] == cfg.students[0] for row in done[job]["curve"]]
    for arch in cfg.students:
        for protocol in protocols:
            runs = [done[arch, protocol, s]["summary"] for s in range(cfg.seeds)]
            results[arch][protocol] = {
                **{k: mean_std([r[k] for r in runs]) for k in ("top1", "top5", "top1_best", "top5_best")},
                "per_seed_top1": [round(r["top1"], 6) for r in runs],
            }
    write_json(args.out, {
        **teacher_view(teacher.cpu(), images.normalised(*teacher_norm), images.labels),
        "method": card.method, "dataset": card.dataset, "ipc": card.ipc, "images": len(images),
        "bytes": stored_bytes(images_root(Path(args.set), card)), "draws": card.draws,
        "label_bytes": {pr: label_bytes[pr] for pr in protocols},
        "train_bytes": stored_bytes(Path(args.data) / "train"),
        "pixels": (card.synthesis or {}).get("pixels", len(images) * size * size), "student": cfg.students[0],
        "epochs": args.epochs, "batch_size": batch_size, "seeds": cfg.seeds, "protocols": results[cfg.students[0]],
        "students": results,
        "note": "top1/top5 are after the last epoch; *_best are the max of each over validation points (optimistic); "
                "protocols: the first student's (students: every student's); bytes: one draw's images; "
                "label_bytes: what each protocol needs besides the images; train_bytes: the full train set; "
                "pixels: the budget per channel (images x h x w, or a poster's own pixel count); "
                "teacher_fidelity: the teacher's top-1 on the set's own images; intra_class_cosine: mean "
                "cosine similarity of same-class teacher penultimate features (lower = more diverse)",
    })
    runlog.record("evaluate", args.out, time.perf_counter() - started, method=card.method, students=len(jobs),
                  train_seconds=round(sum(done[job]["summary"]["train_seconds"] for job in jobs), 2),
                  images_per_second=round(statistics.fmean(done[job]["summary"]["images_per_second"]
                                                           for job in jobs), 1))
    if args.curves:
        write_csv(args.curves, curves)
    resume.clear()
    first = results[cfg.students[0]]
    print(" | ".join(f"{k}: {v['top1']['mean']:.4f}±{v['top1']['std']:.4f}" for k, v in first.items()))


if __name__ == "__main__":
    cli.run(main)
