"""teacher@<arch>: train a classifier on the prepared train set (SGD, cosine, crop/flip), or import its
weights from outside (teacher.source: torchvision, timm or a file; stages/models/pretrained.py).

Writes model.safetensors, meta.json (arch, config, class-order hash, normalisation, input size),
metrics.json (val top-1/top-5) and dvclive curves under live/. Under torchrun: DDP, every rank trains on
its rows of each global batch (same batch size and lr recipe); rank 0 writes the outputs.
Training checkpoints to `.<arch>.resume/` beside the output; a killed run continues from its last epoch.
An imported teacher's folder is the same (no live/): meta.json adds `source` (type, weights, file, sha256
and the class mapping), metrics.json its val top-1/top-5 on this dataset.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from dvclive import Live

from stages.data.augment import Augment, plan_epoch
from stages.data.folder import read_classes
from stages.data.prepared import open_images
from stages.models import build, save_checkpoint
from stages.pipeline.artifacts import read_data_meta
from stages.models.pretrained import import_teacher
from stages.pipeline import cli, distributed, params, runlog
from stages.pipeline.outputs import atomic_dir, write_json
from stages.pipeline.resume import Resume
from stages.pipeline.seeds import derive_seed
from stages.training.loop import Optim, accuracy, hard_loss, train


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--data", required=True, help="data/<dataset>")
    parser.add_argument("--out", required=True, help="artifacts/<dataset>/teachers/<arch>")
    args = parser.parse_args()
    p = params.load()
    t = p.teacher
    data_meta = read_data_meta(args.data)
    classes = read_classes(args.data)
    size, norm = data_meta.image_size, (data_meta.mean, data_meta.std)
    config = p.models[args.arch].model_dump() if p.models.get(args.arch) else None
    valset = open_images(Path(args.data) / "val", classes, size)
    if t.source[args.arch] != "train":
        return imported(args, t.source[args.arch], classes, data_meta, config, valset)
    trainset = open_images(Path(args.data) / "train", classes, size)

    torch.manual_seed(derive_seed(p.seed, "teacher", args.arch))
    rng = np.random.default_rng(derive_seed(p.seed, "teacher", args.arch, "augment"))
    augment = Augment(tuple(t.crop_scale), t.flip, "none", 1.0, size)

    with distributed.world() as world:
        # keyed by what decides the weights: the params this stage reads and the data it trains on
        resume = Resume(args.out, {"seed": p.seed, "arch": args.arch, "model": config,
                                   "teacher": t.model_dump(exclude={"archs", "source"})}, [args.data],
                        enabled=world.main)
        model = build(args.arch, len(classes), size, config).to(world.device)
        # Every rank draws the same plans (same seed), so they agree on each global batch.
        history = train(world.ddp(model), trainset, norm, t.epochs, t.batch_size,
                        lambda epoch: (plan_epoch(len(trainset), t.batch_size, rng, augment), None),
                        hard_loss, Optim("sgd", t.lr, t.weight_decay, t.momentum),
                        (valset.normalised(*norm), valset.labels), eval_points=t.epochs,
                        desc=f"teacher {args.arch}", world=world, resume=resume, rng=rng)
    if not world.main:
        return
    summary = history.summary()
    with atomic_dir(args.out) as tmp:
        with Live(str(tmp / "live"), dvcyaml=False, save_dvc_exp=False) as live:
            for epoch, loss, top1, top5 in zip(history.epochs, history.loss, history.top1, history.top5):
                live.step = epoch
                live.log_metric("train/loss", loss)
                live.log_metric("val/top1", top1)
                live.log_metric("val/top5", top5)
        save_checkpoint(model.cpu(), tmp, {
            "arch": args.arch, "config": config, "num_classes": len(classes), "image_size": size,
            "mean": norm[0], "std": norm[1], "classes_sha256": data_meta.classes_sha256,
            "epochs": t.epochs, "val_top1": summary["top1"],
        })
        write_json(tmp / "metrics.json", {k: round(v, 6) if isinstance(v, float) else v
                                          for k, v in summary.items() if k not in ("train_seconds",
                                                                                   "images_per_second")})
    resume.clear()
    runlog.record("teacher", args.out, summary["train_seconds"], arch=args.arch,
                  images_per_second=round(summary["images_per_second"], 1))
    print(f"teacher {args.arch}: val top-1 {summary['top1']:.4f} (best {summary['top1_best']:.4f} at epoch "
          f"{summary['best_epoch']}), {summary['images_per_second']:.0f} img/s → {args.out}")


def imported(args, spec, classes: list[str], data_meta: dict, config: dict | None, valset) -> None:
    """Import external weights as this arch's teacher, narrowed to the data's classes; measure it on val."""
    start = time.perf_counter()
    with distributed.world() as world:
        if not world.main:  # one process imports; under torchrun the others just wait
            return
        size, norm = data_meta.image_size, (data_meta.mean, data_meta.std)
        teacher = import_teacher(args.arch, spec, classes, size, config, norm)
        top1, top5 = accuracy(teacher.model.to(world.device), valset.normalised(teacher.mean, teacher.std),
                              valset.labels)
        with atomic_dir(args.out) as tmp:
            save_checkpoint(teacher.model.cpu(), tmp, {
                "arch": args.arch, "config": config, "num_classes": len(classes), "image_size": size,
                "mean": teacher.mean, "std": teacher.std, "classes_sha256": data_meta.classes_sha256,
                "epochs": 0, "val_top1": top1, "source": teacher.record,
                **({"timm": spec.weights} if spec.type == "timm" else {}),
            })
            write_json(tmp / "metrics.json", {"top1": round(top1, 6), "top5": round(top5, 6)})
    runlog.record("teacher", args.out, time.perf_counter() - start, arch=args.arch, source=spec.type)
    print(f"teacher {args.arch}: imported {spec.type} weights {spec.weights}, val top-1 {top1:.4f} on "
          f"{len(valset)} images → {args.out}")


if __name__ == "__main__":
    cli.run(main)
