"""relabel@<set>: FKD soft labels for a distilled set, one Parquet file per evaluation epoch.

For each epoch the evaluation recipe's augmentation plan is drawn (image order, crop box, flip, mix
partner, λ, cutmix box), the teacher labels exactly those augmented batches, and plan + fp16 logits
are stored (or, with relabel.topk = k, each crop's k largest logits, their classes and one logit for the
rest: stages/training/soft_labels.py). evaluate's `fkd` protocol replays the files: same crops, stored logits, no
teacher.
Under torchrun every rank draws every epoch's plan (cheap) and labels its own block of epochs, so the
files are the ones a single process writes. Each finished epoch is also kept in `.<out>.resume/`, so a
killed run relabels only the epochs it had not finished (their plans are drawn again: same stream).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from stages.data.augment import plan_epoch, render
from stages.data.distilled import load_set
from stages.data.folder import read_classes
from stages.models import load_checkpoint, predict
from stages.pipeline.artifacts import fkd_files, read_data_meta
from stages.pipeline import cli, distributed, params
from stages.pipeline.errors import ParamsError
from stages.pipeline.outputs import sha256_file, write_json
from stages.pipeline.progress import progress
from stages.pipeline.resume import Resume
from stages.pipeline.seeds import derive_seed
from stages.training.recipe import eval_augment, eval_batch_size
from stages.training.soft_labels import epoch_file, write_epoch


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--set", required=True, help="distilled set folder (with card.json)")
    parser.add_argument("--teacher", required=True, help="teacher folder (model.safetensors + meta.json)")
    parser.add_argument("--data", required=True, help="data/<dataset>")
    parser.add_argument("--epochs", type=int, required=True, help="evaluation epochs to store")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    p = params.load()
    data_meta = read_data_meta(args.data)
    card, images = load_set(args.set, args.data)
    teacher, t_meta = load_checkpoint(args.teacher, data_meta.classes_sha256)
    size, norm = images.images.shape[-1], (t_meta["mean"], t_meta["std"])
    classes = read_classes(args.data)
    batch_size = eval_batch_size(p.evaluate, len(images), len(classes))
    augment = eval_augment(p.evaluate, size)
    topk = p.relabel.topk
    if topk is not None and topk > len(classes):
        raise ParamsError(f"relabel.topk = {topk}: more than the {len(classes)} classes of {args.data}")

    # keyed by what decides the labels: the params this stage reads and its inputs (an epoch's file does not
    # depend on --epochs: a run asked for more epochs reuses the ones it has)
    settings = {"seed": p.seed, "evaluate": p.evaluate.model_dump(include={"batch_size", "crop_scale", "flip", "mix",
                                                                           "mix_alpha"}),
                "topk": topk}
    inputs = [args.set, args.teacher, args.data]
    with distributed.world() as world, distributed.shared_dir(world, args.out) as tmp:
        # rank 0 keys (or resets) the resume folder first; then every rank keeps its own epochs there
        resume = Resume(args.out, settings, inputs) if world.main else None
        world.barrier()
        resume = resume or Resume(args.out, settings, inputs)
        teacher.to(world.device)
        mine = set(world.shard(range(args.epochs)))
        # baseline@random's draws: each its own labels in draw<k>/ (draw 0 keeps the stream a single set has)
        records = []
        for draw in range(card.draws) if card.draws else [None]:
            if draw is not None:
                _, images = load_set(args.set, args.data, draw)
            folder, prefix, key = (tmp, "", ()) if draw is None else \
                (tmp / f"draw{draw}", f"draw{draw}-", (draw,) * (draw > 0))
            folder.mkdir(exist_ok=True)
            rng = np.random.default_rng(derive_seed(p.seed, "relabel", *key))
            kept = [e for e in sorted(mine) if resume.done(prefix + epoch_file(Path(), e).name)]
            if kept:
                print(f"relabel {card.method}: resumed - {len(kept)} of {len(mine)} epochs kept in {resume.folder}")
            for epoch in progress(range(args.epochs), desc=f"relabel {card.method}", unit="epoch"):
                plan = plan_epoch(len(images), batch_size, rng, augment)  # drawn by every rank: one stream
                if epoch not in mine:
                    continue
                out = epoch_file(folder, epoch)
                if epoch in kept:
                    shutil.copyfile(resume.path(prefix + out.name), out)
                    continue
                logits = torch.cat([predict(teacher, render(images.images, plan, s, *norm, size))
                                    for s in plan.batches()])
                write_epoch(out, plan, logits, topk)
                resume.write_bytes(prefix + out.name, out.read_bytes())  # atomically: a kill leaves whole epochs only
            records.append((folder, {
                    "epochs": args.epochs, "batch_size": batch_size, "num_images": len(images),
                    "augment": {"crop_scale": list(augment.crop_scale), "flip": augment.flip, "mix": augment.mix,
                                "mix_alpha": augment.mix_alpha, "image_size": size},
                    "teacher": {"arch": t_meta["arch"],
                                "sha256": sha256_file(Path(args.teacher) / "model.safetensors")},
                    "set": {"method": card.method, "paths": images.paths, **({} if draw is None else {"draw": draw})},
                    "seed": derive_seed(p.seed, "relabel", *key), "topk": topk,
                    "logits": "raw teacher logits, fp16" if topk is None else
                              f"top-{topk} raw teacher logits and their classes, fp16; the rest as one logit",
            }))
        world.barrier()  # every rank's epochs are on disk before the record of them is made
        if not world.main:
            return
        for folder, record in records:  # "files": the content record evaluate checks each epoch against
            write_json(folder / "fkd.json", {**record, "files": fkd_files(folder)})
    resume.clear()
    print(f"relabel {card.method}: {args.epochs} epochs x {len(images)} images (batch {batch_size}) → {args.out}")


if __name__ == "__main__":
    cli.run(main)
