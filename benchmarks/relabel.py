"""FKD soft labels: bytes per stored epoch, and replaying stored epochs against computing them online.

Storage: one epoch as relabel writes it (stages.training.soft_labels.write_epoch: the plan + fp16 teacher
logits, zstd Parquet) for a digits IPC 10 set (a random real subset, 100 images) and for the full train set
(1,437), beside the raw size: n x classes float32 logits + the plan's arrays as they sit in memory.
Replay: the same evaluate epochs (same plans: relabel's seed) two ways, in one process:
  fkd      read_epoch(stored file) + render of the stored crops; targets softmax(stored logits / T)
  teacher  plan_epoch + render + teacher forward at temperature T (evaluate's `teacher` protocol)
first the data-and-label path alone, then end to end with the student's training steps
(stages.training.loop.train, as evaluate runs it). Each side's best of --repeats runs, the sides alternating.
Faster = more images/s; ratio = fkd / teacher (above 1: replaying stored labels beats computing them).

    python benchmarks/relabel.py [--teacher artifacts/digits/teachers/convnet] [--data data/digits] [--quick]

The evaluate recipe (batch size, crops, cutmix, T, student) comes from ./params.yaml. Without --data's
meta.json the digits are prepared into a temp folder by `python -m stages.prepare`; without the teacher
folder a fresh ConvNet from params.yaml's `models.convnet` (random weights) labels the crops.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (it reads TQDM_* then): bars garble tables

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.nn import functional as F

from stages.data.augment import plan_epoch, render
from stages.data.folder import ImageSet, load_imagefolder, read_classes, renormalise
from stages.evaluate import fkd_plans
from stages.models import build, load_checkpoint, predict
from stages.pipeline import params
from stages.pipeline.outputs import write_json
from stages.pipeline.seeds import derive_seed
from stages.training.loop import Optim, kd_loss, train
from stages.training.recipe import eval_augment, eval_batch_size
from stages.training.soft_labels import epoch_file, read_epoch, write_epoch


def prepared_data(data: Path, scratch: Path) -> tuple[Path, str]:
    if (data / "meta.json").exists():
        return data, str(data)
    out = scratch / "digits"
    subprocess.run([sys.executable, "-m", "stages.prepare", "--out", str(out)], check=True, capture_output=True)
    return out, f"digits prepared into a temp folder ({data} has no meta.json)"


def ipc_subset(train: ImageSet, ipc: int, seed: int) -> ImageSet:
    """A random real subset, `ipc` images per class (what baseline@random stores)."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(train.labels.numpy() == c), ipc, replace=False)
                          for c in range(int(train.labels.max()) + 1)])
    idx_t = torch.from_numpy(idx)
    return ImageSet(train.images[idx_t], train.labels[idx_t], [train.paths[i] for i in idx])


def parquet_split(path: Path) -> dict:
    meta = pq.ParquetFile(path).metadata
    columns = {}
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            column = meta.row_group(g).column(c)
            name = column.path_in_schema.split(".")[0]
            columns[name] = columns.get(name, 0) + column.total_compressed_size
    logits = columns.pop("logits")
    plan = sum(columns.values())
    return {"logits": logits, "plan": plan, "other": path.stat().st_size - logits - plan}


class Bench:
    """One labelled set: the stored epochs (written once, as relabel does) and the two ways to replay them."""

    def __init__(self, name, images: ImageSet, classes: int, p, teacher, norm, t_norm, folder: Path):
        self.name, self.images, self.teacher, self.norm, self.t_norm = name, images, teacher, norm, t_norm
        self.size, self.cfg = images.images.shape[-1], p.evaluate
        self.batch_size = eval_batch_size(p.evaluate, len(images), classes)
        self.augment = eval_augment(p.evaluate, self.size)
        self.seed = derive_seed(p.seed, "relabel")
        self.folder = folder

    def relabel(self, epochs: int) -> tuple[int, int, dict]:
        """Write `epochs` epochs through relabel's functions; (mean stored bytes, raw bytes) per epoch and the
        last file's split: logits column, plan columns, the rest (Parquet footer, schema, page headers)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        rng, sizes = np.random.default_rng(self.seed), []
        for e in range(epochs):
            plan = plan_epoch(len(self.images), self.batch_size, rng, self.augment)
            logits = torch.cat([predict(self.teacher, render(self.images.images, plan, s, *self.t_norm, self.size))
                                for s in plan.batches()])  # stages/relabel.py's labelling line
            write_epoch(epoch_file(self.folder, e), plan, logits)
            sizes.append(epoch_file(self.folder, e).stat().st_size)
        plan_bytes = sum(a.nbytes for a in (plan.order, plan.boxes, plan.flips, plan.partner, plan.lam, plan.cut))
        write_json(self.folder / "fkd.json", {"epochs": epochs, "batch_size": self.batch_size,
                                               "num_images": len(self.images)})  # what fkd_plans checks
        return round(float(np.mean(sizes))), logits.numel() * 4 + plan_bytes, parquet_split(epoch_file(self.folder, e))

    def fkd_epoch(self, epoch: int):
        plan, logits = read_epoch(epoch_file(self.folder, epoch))
        for s in plan.batches():
            yield (render(self.images.images, plan, s, *self.norm, self.size),
                   F.softmax(logits[s].float() / self.cfg.temperature, 1))

    def online_epoch(self, rng: np.random.Generator):
        plan = plan_epoch(len(self.images), self.batch_size, rng, self.augment)
        for s in plan.batches():
            x = render(self.images.images, plan, s, *self.norm, self.size)
            yield x, F.softmax(predict(self.teacher, renormalise(x, self.norm, self.t_norm)) / self.cfg.temperature, 1)

    def check_same_work(self) -> float:
        """Both sides give the same batches and (up to fp16 logits) the same targets; returns the largest
        target difference."""
        worst = 0.0
        for (xa, ta), (xb, tb) in zip(self.fkd_epoch(0), self.online_epoch(np.random.default_rng(self.seed)),
                                      strict=True):
            assert xa.shape == xb.shape and xa.dtype == xb.dtype and torch.equal(xa, xb), "different batches"
            assert ta.shape == tb.shape and ta.dtype == tb.dtype
            worst = max(worst, (ta - tb).abs().max().item())
        assert worst < 1e-2, f"stored and online targets differ by {worst}"
        return worst

    def label_path(self, side: str, epochs: int) -> float:
        """images/s of one side over `epochs` epochs (the same plans either way): data and targets, no student."""
        rng, seen = np.random.default_rng(self.seed), 0
        began = time.perf_counter()
        for e in range(epochs):
            for _x, target in (self.fkd_epoch(e) if side == "fkd" else self.online_epoch(rng)):
                seen += len(target)
        rate = seen / (time.perf_counter() - began)
        assert seen == epochs * len(self.images)
        return rate

    def end_to_end(self, side: str, epochs: int, p, classes: int, val) -> dict:
        """evaluate's training loop (stages.training.loop.train) on one protocol from a fixed student init."""
        cfg, temperature = self.cfg, self.cfg.temperature
        arch = cfg.students[0]
        config = p.models[arch].model_dump() if arch in p.models else None
        if side == "fkd":
            plans = fkd_plans(self.folder, epochs, self.batch_size, len(self.images), classes)
            loss = lambda logits, batch: kd_loss(logits, batch.soft, temperature)  # noqa: E731 (evaluate's stored_kd)
        else:
            rng = np.random.default_rng(self.seed)
            plans = lambda epoch: (plan_epoch(len(self.images), self.batch_size, rng, self.augment), None)  # noqa: E731
            loss = lambda logits, batch: kd_loss(logits, predict(self.teacher, renormalise(  # noqa: E731 (online_kd)
                batch.x, self.norm, self.t_norm)), temperature)
        torch.manual_seed(0)
        student = build(arch, classes, self.size, config)
        history = train(student, self.images, self.norm, epochs, self.batch_size, plans, loss,
                        Optim(cfg.optimizer, cfg.lr, cfg.weight_decay), val, 1, desc=f"{side} {self.name}")
        assert history.images_seen == epochs * len(self.images)
        return history.summary()


def best_of(repeats: int, run) -> dict[str, float]:
    """Each side's best images/s over `repeats` runs, the sides alternating: a burst of load from other
    processes hits one run, not one side."""
    best = {"fkd": 0.0, "teacher": 0.0}
    for _ in range(repeats):
        for side in best:
            best[side] = max(best[side], run(side))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="artifacts/digits/teachers/convnet",
                        help="teacher folder; a fresh ConvNet (params.yaml models.convnet) if it does not exist")
    parser.add_argument("--data", default="data/digits", type=Path, help="prepared digits (temp copy if absent)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20, help="replayed epochs of the IPC set")
    parser.add_argument("--full-epochs", type=int, default=3, help="replayed epochs of the full train set")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs per side (best counts)")
    parser.add_argument("--quick", action="store_true", help="3 epochs of the IPC set only, one run per side")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("DDPIPE_THREADS", os.cpu_count() or 1)))
    p = params.load()

    with tempfile.TemporaryDirectory(prefix="bench-relabel-") as scratch:
        scratch = Path(scratch)
        data, data_source = prepared_data(args.data, scratch)
        meta, classes = json.loads((data / "meta.json").read_text()), read_classes(data)
        train_set = load_imagefolder(data / "train", classes, meta["image_size"])
        valset = load_imagefolder(data / "val", classes, meta["image_size"])
        norm = (meta["mean"], meta["std"])
        val = (valset.normalised(*norm).tensor(), valset.labels)
        if (Path(args.teacher) / "meta.json").exists():
            teacher, t_meta = load_checkpoint(args.teacher, meta["classes_sha256"])
            t_norm, teacher_source = (t_meta["mean"], t_meta["std"]), f"{args.teacher} ({t_meta['arch']})"
        else:
            config = p.models["convnet"].model_dump()
            torch.manual_seed(p.seed)  # the same random teacher every run: the same stored bytes
            teacher = build("convnet", len(classes), meta["image_size"], config).eval()
            t_norm = norm
            teacher_source = (f"fresh ConvNet {config} with random weights ({args.teacher} absent): "
                              "its logits compress differently from a trained teacher's")
        benches = [Bench(f"IPC {args.ipc}", ipc_subset(train_set, args.ipc, derive_seed(p.seed, "baseline")),
                         len(classes), p, teacher, norm, t_norm, scratch / "ipc"),
                   Bench("full train", train_set, len(classes), p, teacher, norm, t_norm, scratch / "full")]
        epochs = {benches[0].name: 3 if args.quick else args.epochs, benches[1].name: args.full_epochs}
        args.repeats = 1 if args.quick else args.repeats
        replayed = benches[:1] if args.quick else benches

        print(f"teacher: {teacher_source}; data: {data_source}")
        print(f"machine: {torch.get_num_threads()} threads of {os.cpu_count()} cores, device cpu, torch "
              f"{torch.__version__}; evaluate recipe from params.yaml: batch {p.evaluate.batch_size}, crop "
              f"{p.evaluate.crop_scale}, mix {p.evaluate.mix}, T {p.evaluate.temperature}, "
              f"student {p.evaluate.students[0]}")
        print("\nbytes per stored epoch (Parquet, zstd: plan + fp16 logits) vs raw (float32 logits + plan arrays)")
        for b in benches:
            stored, raw, split = b.relabel(max(epochs[b.name], 1) if b in replayed else 1)
            print(f"  {b.name:>10}: {len(b.images):5d} images x {len(classes)} classes, batch {b.batch_size:3d}: "
                  f"{stored:8d} B stored vs {raw:8d} B raw ({raw / stored:.2f}x smaller; "
                  f"{stored / len(b.images):.1f} B/image; x {p.evaluate.epochs} evaluate epochs = "
                  f"{stored * p.evaluate.epochs / 1e6:.1f} MB)")
            print(f"  {'':>10}  of which logits {split['logits']} B (fp16 raw {len(b.images) * len(classes) * 2}), "
                  f"plan columns {split['plan']} B, footer and headers {split['other']} B")

        warm = replayed[0]  # first-call costs (roi_align, kernel choice, Parquet reader) on neither clock
        worst = warm.check_same_work()
        for side in ("fkd", "teacher"):
            warm.end_to_end(side, 1, p, len(classes), val)
        print(f"\nreplay (same plans both sides; largest stored-vs-online target difference {worst:.1e}, fp16 "
              f"logits; best of {args.repeats} alternating runs per side)")
        for b in replayed:
            n = epochs[b.name]
            rate = best_of(args.repeats, lambda side: b.label_path(side, n))
            print(f"  {b.name:>10}, {n} epochs, data + labels:   fkd {rate['fkd']:9.0f} images/s, teacher "
                  f"{rate['teacher']:9.0f} images/s")
            print(f"ratio fkd / teacher ({b.name}, data + labels): {rate['fkd'] / rate['teacher']:.2f}x")
            top1 = {}

            def student(side):
                summary = b.end_to_end(side, n, p, len(classes), val)
                top1[side] = summary["top1"]
                return summary["images_per_second"]

            rate = best_of(args.repeats, student)
            print(f"  {b.name:>10}, end to end with the student: fkd {rate['fkd']:9.0f} images/s, teacher "
                  f"{rate['teacher']:9.0f} images/s (student top-1 {top1['fkd']:.3f} vs {top1['teacher']:.3f})")
            print(f"ratio fkd / teacher ({b.name}, end to end): {rate['fkd'] / rate['teacher']:.2f}x")

if __name__ == "__main__":
    main()
