"""relabel@<set>: FKD soft labels for a distilled set, one Parquet file per evaluation epoch.

For each epoch the evaluation recipe's augmentation plan is drawn (image order, crop box, flip, mix
partner, λ, cutmix box), the teacher labels exactly those augmented batches, and plan + fp16 logits
are stored (or, with relabel.topk = k, each crop's k largest logits, their classes and one logit for the
rest: stages/training/soft_labels.py). evaluate's `fkd` protocol replays the files: same crops, stored logits, no
teacher.
With relabel.teachers (EDC's multi-teacher relabel) each crop's logits are the mean of those teachers' logits,
each teacher reading the crop in its own normalisation; null keeps evaluate.teacher alone.
Under torchrun every rank draws every epoch's plan (cheap) and labels its own block of epochs, so the
files are the ones a single process writes. Each finished epoch is also kept in `.<out>.resume/`, so a
killed run relabels only the epochs it had not finished (their plans are drawn again: same stream).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.data.augment import Augment, plan_epoch, render
from stages.data.distilled import load_set
from stages.data.folder import ImageSet, read_classes
from stages.models import load_checkpoint, predict
from stages.pipeline.artifacts import fkd_files, read_data_meta
from stages.pipeline import cli, distributed, params
from stages.pipeline.card import Card
from stages.pipeline.errors import ParamsError
from stages.pipeline.outputs import sha256_file, write_json
from stages.pipeline.params import Params
from stages.pipeline.progress import progress
from stages.pipeline.resume import Resume
from stages.pipeline.seeds import derive_seed
from stages.training.recipe import eval_augment, eval_batch_size
from stages.training.soft_labels import epoch_file, write_epoch
from stages.pipeline import outputs


@dataclass
class Labelling:
    """What labelling a draw reads: the set, the teacher and the evaluation recipe whose plans it labels."""
    p: Params
    card: Card
    teachers: list[torch.nn.Module]  # one (evaluate.teacher), or relabel.teachers whose logits are averaged
    t_meta: list[dict]
    teacher_dirs: list[Path]
    size: int
    norms: list[tuple[list[float], list[float]]]  # each teacher's own normalisation
    batch_size: int
    augment: Augment
    epochs: int

    @property
    def topk(self) -> int | None:
        return self.p.relabel.topk

    def logits(self, images: torch.Tensor, plan, batch) -> torch.Tensor:
        """The crops of one planned batch as each teacher sees them, labelled: the teachers' mean logits."""
        crops = {}  # rendered once per normalisation: teachers that share one (the usual case) share the crops
        for norm in self.norms:
            crops.setdefault(str(norm), render(images, plan, batch, *norm, self.size))
        each = [predict(t, crops[str(norm)]) for t, norm in zip(self.teachers, self.norms)]
        return each[0] if len(each) == 1 else torch.stack(each).mean(0)


def teacher_dirs(p: Params, teacher_dir: Path, teachers_root: Path | None) -> list[Path]:
    """The labelling teachers' folders: evaluate.teacher's (`--teacher`), or relabel.teachers' under `--teachers`."""
    if p.relabel.teachers is None:
        return [teacher_dir]
    if teachers_root is None:
        raise ParamsError(f"relabel.teachers = {p.relabel.teachers}: the stage needs --teachers, the folder of "
                          "teacher folders (dvc.yaml passes artifacts/<dataset>/teachers)")
    return [teachers_root / arch for arch in p.relabel.teachers]


def load_inputs(p: Params, set_dir: Path, dirs: list[Path], data: Path, epochs: int) -> tuple[Labelling, ImageSet]:
    """The set (draw 0), the teachers and the recipe; relabel.topk checked against the class count."""
    data_meta = read_data_meta(data)
    card, images = load_set(set_dir, data)
    teachers, t_meta = zip(*(load_checkpoint(d, data_meta.classes_sha256) for d in dirs))
    size, norms = images.images.shape[-1], [(m["mean"], m["std"]) for m in t_meta]
    classes = read_classes(data)
    batch_size = eval_batch_size(p.evaluate, len(images), len(classes))
    augment = eval_augment(p.evaluate, size)
    topk = p.relabel.topk
    if topk is not None and topk > len(classes):
        raise ParamsError(f"relabel.topk = {topk}: more than the {len(classes)} classes of {data}")
    return Labelling(p, card, list(teachers), list(t_meta), dirs, size, norms, batch_size, augment, epochs), images


def resume_settings(p: Params) -> dict:
    """What decides the labels, for the resume folder's key: the params this stage reads (an epoch's file does
    not depend on --epochs: a run asked for more epochs reuses the ones it has)."""
    return {"seed": p.seed, "evaluate": p.evaluate.model_dump(include={"batch_size", "crop_scale", "flip", "mix",
                                                                       "mix_alpha"}),
            "topk": p.relabel.topk, **({} if p.relabel.teachers is None else {"teachers": p.relabel.teachers})}


def label_epochs(lab: Labelling, images: ImageSet, folder: Path, prefix: str, key: tuple, mine: set[int],
                 resume: Resume) -> None:
    """Every epoch's plan drawn from the draw's stream (by every rank: one stream), and this rank's epochs
    labelled by the teacher into `folder` (or copied from the resume folder, where `prefix` names the draw)."""
    rng = np.random.default_rng(derive_seed(lab.p.seed, "relabel", *key))
    kept = [e for e in sorted(mine) if resume.done(prefix + epoch_file(Path(), e).name)]
    if kept:
        print(f"relabel {lab.card.method}: resumed - {len(kept)} of {len(mine)} epochs kept in {resume.folder}")
    for epoch in progress(range(lab.epochs), desc=f"relabel {lab.card.method}", unit="epoch"):
        plan = plan_epoch(len(images), lab.batch_size, rng, lab.augment)
        if epoch not in mine:
            continue
        out = epoch_file(folder, epoch)
        if epoch in kept:
            shutil.copyfile(resume.path(prefix + out.name), out)
            continue
        logits = torch.cat([lab.logits(images.images, plan, s) for s in plan.batches()])
        write_epoch(out, plan, logits, lab.topk)
        resume.write_bytes(prefix + out.name, out.read_bytes())  # atomically: a kill leaves whole epochs only


def teacher_record(lab: Labelling) -> dict:
    """fkd.json's teacher: the one (evaluate.teacher), or the teachers whose mean logits label the crops."""
    made = [{"arch": m["arch"], "sha256": sha256_file(d / "model.safetensors")}
            for m, d in zip(lab.t_meta, lab.teacher_dirs)]
    if lab.p.relabel.teachers is None:
        return {"teacher": made[0]}
    return {"teachers": made, "logits_of": "the mean of the teachers' raw logits (EDC's multi-teacher relabel)"}


def fkd_record(lab: Labelling, images: ImageSet, draw: int | None, key: tuple) -> dict:
    """A draw's fkd.json, less the content record of its epoch files (made once every rank wrote its own)."""
    augment, topk = lab.augment, lab.topk
    return {
        "epochs": lab.epochs, "batch_size": lab.batch_size, "num_images": len(images),
        "augment": {"crop_scale": list(augment.crop_scale), "flip": augment.flip, "mix": augment.mix,
                    "mix_alpha": augment.mix_alpha, "image_size": lab.size},
        **teacher_record(lab),
        "set": {"method": lab.card.method, "paths": images.paths, **({} if draw is None else {"draw": draw})},
        "seed": derive_seed(lab.p.seed, "relabel", *key), "topk": topk,
        "logits": "raw teacher logits, fp16" if topk is None else
                  f"top-{topk} raw teacher logits and their classes, fp16; the rest as one logit",
    }


def run(p: Params, set_dir: Path, teacher_dir: Path, data: Path, epochs: int, out: Path,
        teachers_root: Path | None = None) -> None:
    """Label `epochs` evaluation epochs of the set (each draw of baseline@random in its own draw<k>/) into the
    folder `out`, with an fkd.json per labelled folder. `teachers_root` holds relabel.teachers' folders."""
    outputs.claim("relabel", {"--out": (out, outputs.FKD)},
                  {"--set": set_dir, "--teacher": teacher_dir, "--data": data, "--teachers": teachers_root})
    dirs = teacher_dirs(p, teacher_dir, teachers_root)
    lab, images = load_inputs(p, set_dir, dirs, data, epochs)
    inputs = [set_dir, *dirs, data]
    with distributed.world() as world, distributed.shared_dir(world, out) as tmp:
        resume = Resume.shared(world, out, resume_settings(p), inputs)
        for teacher in lab.teachers:
            teacher.to(world.device)
        mine = set(world.shard(range(epochs)))
        # baseline@random's draws: each its own labels in draw<k>/ (draw 0 keeps the stream a single set has)
        records = []
        for draw in range(lab.card.draws) if lab.card.draws else [None]:
            if draw is not None:
                _, images = load_set(set_dir, data, draw)
            folder, prefix, key = (tmp, "", ()) if draw is None else \
                (tmp / f"draw{draw}", f"draw{draw}-", (draw,) * (draw > 0))
            folder.mkdir(exist_ok=True)
            label_epochs(lab, images, folder, prefix, key, mine, resume)
            records.append((folder, fkd_record(lab, images, draw, key)))
        world.barrier()  # every rank's epochs are on disk before the record of them is made
        if not world.main:
            return
        for folder, record in records:  # "files": the content record evaluate checks each epoch against
            write_json(folder / "fkd.json", {**record, "files": fkd_files(folder)})
    resume.clear()
    print(f"relabel {lab.card.method}: {epochs} epochs x {len(images)} images (batch {lab.batch_size}) → {out}")


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--set", required=True, type=Path, help="distilled set folder (with card.json)")
    parser.add_argument("--teacher", required=True, type=Path,
                        help="evaluate.teacher's folder (model.safetensors + meta.json): it labels the crops")
    parser.add_argument("--teachers", type=Path,
                        help="the folder of teacher folders, where relabel.teachers are read (their mean logits)")
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--epochs", type=int, required=True, help="evaluation epochs to store")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    run(params.load(), args.set, args.teacher, args.data, args.epochs, args.out, args.teachers)


if __name__ == "__main__":
    cli.run(main)
