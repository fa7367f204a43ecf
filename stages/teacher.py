"""teacher@<arch>: train a classifier on the prepared train set (SGD, cosine, crop/flip), or import its
weights from outside (teacher.source: torchvision, timm or a file; stages/models/pretrained.py).

Writes model.safetensors, meta.json (arch, config, class-order hash, normalisation, input size),
metrics.json (val top-1/top-5) and dvclive curves under live/; with --curves, the same curves as one CSV
(the plot dvc.yaml declares per teacher). Under torchrun: DDP, every rank trains on
its rows of each global batch (same batch size and lr recipe); rank 0 writes the outputs.
Training checkpoints to `.<arch>.resume/` beside the output; a killed run continues from its last epoch.
An imported teacher's folder is the same (no live/): meta.json adds `source` (type, weights, file, sha256
and the class mapping), metrics.json its val top-1/top-5 on this dataset.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch
from dvclive import Live

from stages.data.augment import Augment, plan_epoch
from stages.data.folder import read_classes
from stages.data.prepared import open_images
from stages.models import build, save_checkpoint
from stages.pipeline.artifacts import DataMeta, read_data_meta
from stages.models.pretrained import import_teacher
from stages.pipeline import cli, distributed, params, runlog
from stages.pipeline.params import Params
from stages.pipeline.outputs import atomic_dir, atomic_file, write_json
from stages.pipeline.resume import Resume
from stages.pipeline.seeds import derive_seed
from stages.training.loop import History, Optim, accuracy, hard_loss, train
from stages.pipeline import outputs


def run(p: Params, arch: str, data: Path, out: Path, curves: Path | None = None) -> dict | None:
    """The teacher stage: train `arch` on the prepared train set (or import it, teacher.source) and write its
    folder. Returns the metrics written to metrics.json (None on a torchrun rank other than 0)."""
    source = p.teacher.source.get(arch, "train")
    outputs.claim("teacher", {"--out": (out, outputs.TEACHER)},
                  {"--data": data, f"teacher.source.{arch}.weights":
                   Path(source.weights) if source != "train" and source.type == "file" else None})
    data_meta = read_data_meta(data)
    classes = read_classes(data)
    config = p.models[arch].model_dump() if p.models.get(arch) else None
    valset = open_images(data / "val", classes, data_meta.image_size)
    if p.teacher.source[arch] != "train":
        metrics = imported(arch, p.teacher.source[arch], out, classes, data_meta, config, valset)
        if curves is not None and metrics is not None:
            write_curves(curves, History())  # no training: the header alone
        return metrics
    trained = train_teacher(p, arch, data, out, classes, data_meta, config, valset)
    if trained is None:
        return None
    model, history, resume = trained
    summary = history.summary()
    metrics = write_teacher(out, model, history, summary, arch, config, len(classes), data_meta, p.teacher.epochs)
    if curves is not None:
        write_curves(curves, history)
    resume.clear()
    runlog.record("teacher", out, summary["train_seconds"], arch=arch,
                  images_per_second=round(summary["images_per_second"], 1))
    print(f"teacher {arch}: val top-1 {summary['top1']:.4f} (best {summary['top1_best']:.4f} at epoch "
          f"{summary['best_epoch']}), {summary['images_per_second']:.0f} img/s → {out}")
    return metrics


def train_teacher(p: Params, arch: str, data: Path, out: Path, classes: list[str], data_meta: DataMeta,
                  config: dict | None, valset) -> tuple[torch.nn.Module, History, Resume] | None:
    """SGD with the crop/flip recipe of `teacher`, resuming from `.<arch>.resume/`; (model, history, resume)
    on rank 0, None on the other torchrun ranks."""
    t = p.teacher
    size, norm = data_meta.image_size, (data_meta.mean, data_meta.std)
    trainset = open_images(data / "train", classes, size)

    torch.manual_seed(derive_seed(p.seed, "teacher", arch))
    rng = np.random.default_rng(derive_seed(p.seed, "teacher", arch, "augment"))
    augment = Augment(tuple(t.crop_scale), t.flip, "none", 1.0, size)

    with distributed.world() as world:
        # keyed by what decides the weights: the params this stage reads and the data it trains on
        resume = Resume(out, {"seed": p.seed, "arch": arch, "model": config,
                              "teacher": t.model_dump(exclude={"archs", "source"})}, [data], enabled=world.main)
        model = build(arch, len(classes), size, config).to(world.device)
        # Every rank draws the same plans (same seed), so they agree on each global batch.
        history = train(world.ddp(model), trainset, norm, t.epochs, t.batch_size,
                        lambda epoch: (plan_epoch(len(trainset), t.batch_size, rng, augment), None),
                        hard_loss, Optim("sgd", t.lr, t.weight_decay, t.momentum),
                        (valset.normalised(*norm), valset.labels), eval_points=t.epochs,
                        desc=f"teacher {arch}", world=world, resume=resume, rng=rng)
    if not world.main:
        return None
    return model, history, resume


def write_teacher(out: Path, model: torch.nn.Module, history: History, summary: dict, arch: str,
                  config: dict | None, num_classes: int, data_meta: DataMeta, epochs: int) -> dict:
    """The teacher folder: dvclive curves, model.safetensors with meta.json, metrics.json (returned)."""
    metrics = {k: round(v, 6) if isinstance(v, float) else v
               for k, v in summary.items() if k not in ("train_seconds", "images_per_second")}
    with atomic_dir(out) as tmp:
        with Live(str(tmp / "live"), dvcyaml=False, save_dvc_exp=False) as live:
            for epoch, loss, top1, top5 in zip(history.epochs, history.loss, history.top1, history.top5):
                live.step = epoch
                live.log_metric("train/loss", loss)
                live.log_metric("val/top1", top1)
                live.log_metric("val/top5", top5)
        save_checkpoint(model.cpu(), tmp, {
            "arch": arch, "config": config, "num_classes": num_classes, "image_size": data_meta.image_size,
            "mean": data_meta.mean, "std": data_meta.std, "classes_sha256": data_meta.classes_sha256,
            "epochs": epochs, "val_top1": summary["top1"],
        })
        write_json(tmp / "metrics.json", metrics)
    return metrics


def write_curves(path: Path, history: History) -> None:
    """The training curves as one CSV (epoch, train_loss, val_top1, val_top5) beside the teacher folder: dvc.yaml
    declares it as the teacher stage's plot, so `dvc plots show` draws one per arch in teacher.archs."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["epoch", "train_loss", "val_top1", "val_top5"])
        rows.writerows(zip(history.epochs, history.loss, history.top1, history.top5))


def imported(arch: str, spec, out: Path, classes: list[str], data_meta: DataMeta, config: dict | None,
             valset) -> dict | None:
    """Import external weights as this arch's teacher, narrowed to the data's classes; measure it on val.
    Returns the metrics written (None on a torchrun rank other than 0)."""
    start = time.perf_counter()
    with distributed.world() as world:
        if not world.main:  # one process imports; under torchrun the others just wait
            return None
        size, norm = data_meta.image_size, (data_meta.mean, data_meta.std)
        teacher = import_teacher(arch, spec, classes, size, config, norm)
        top1, top5 = accuracy(teacher.model.to(world.device), valset.normalised(teacher.mean, teacher.std),
                              valset.labels)
        metrics = {"top1": round(top1, 6), "top5": round(top5, 6)}
        with atomic_dir(out) as tmp:
            save_checkpoint(teacher.model.cpu(), tmp, {
                "arch": arch, "config": config, "num_classes": len(classes), "image_size": size,
                "mean": teacher.mean, "std": teacher.std, "classes_sha256": data_meta.classes_sha256,
                "epochs": 0, "val_top1": top1, "source": teacher.record,
                **({"timm": spec.weights} if spec.type == "timm" else {}),
            })
            write_json(tmp / "metrics.json", metrics)
    runlog.record("teacher", out, time.perf_counter() - start, arch=arch, source=spec.type)
    print(f"teacher {arch}: imported {spec.type} weights {spec.weights}, val top-1 {top1:.4f} on "
          f"{len(valset)} images → {out}")
    return metrics


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path, help="artifacts/<dataset>/teachers/<arch>")
    parser.add_argument("--curves", type=Path, help="the training curves CSV to write (dvc.yaml's teacher plot)")
    args = parser.parse_args()
    run(params.load(), args.arch, args.data, args.out, args.curves)


if __name__ == "__main__":
    cli.run(main)
