"""relabel.topk: bytes per stored FKD epoch and the student's accuracy, dense logits against top-k.

Digits: a random real IPC set (baseline@random's draw), labelled by the teacher through relabel's own
functions (plan_epoch, render, predict, write_epoch with topk = k), then one student per seed trained on
the stored epochs by evaluate's loop and loss (stages.training.loop.train + kd_loss at evaluate.temperature,
from the same initial weights for every k); val top-1 after the last epoch, mean over seeds. k = classes
stores every class and must give the dense top-1 exactly (same rebuilt logits, bit for bit).

1000-class stand-in (bytes only): 1000 classes x --standin-ipc images of noise labelled with synthetic
logits (normal, sd 2, the true class +8: no model reads 1000-class noise meaningfully), one epoch written
dense and at each k. fp16 logits are near-incompressible either way, so bytes per crop carry over to
ImageNet-1K; the last lines multiply them out for IPC 50 (50,000 images) x 300 epochs.

    python benchmarks/topk.py [--teacher artifacts/digits/teachers/convnet] [--data data/digits] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: bars garble tables
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.relabel import ipc_subset, prepared_data  # noqa: E402
from stages.data.augment import plan_epoch, render  # noqa: E402
from stages.data.folder import load_imagefolder, read_classes  # noqa: E402
from stages.evaluate import fkd_plans  # noqa: E402
from stages.models import build, load_checkpoint, predict  # noqa: E402
from stages.pipeline import params  # noqa: E402
from stages.pipeline.outputs import write_json  # noqa: E402
from stages.pipeline.seeds import derive_seed  # noqa: E402
from stages.training.loop import Optim, kd_loss, train  # noqa: E402
from stages.training.recipe import eval_augment, eval_batch_size  # noqa: E402
from stages.training.soft_labels import epoch_file, write_epoch  # noqa: E402

IMAGENET_IMAGES, IMAGENET_EPOCHS = 50 * 1000, 300  # IPC 50 of ImageNet-1K, SRe2L/RDED's 300 evaluation epochs


def ks(classes: int, wanted=(None, 50, 10, 5, 1)) -> tuple[list, list]:
    """The k to run (None = dense) and the ones skipped for having more than `classes`."""
    return [k for k in wanted if k is None or k <= classes], [k for k in wanted if k is not None and k > classes]


def name(k) -> str:
    return "dense" if k is None else f"top-{k}"


def store(folder: Path, images, labeller, epochs: int, batch_size: int, augment, seed: int, k) -> int:
    """`epochs` epochs written as relabel writes them (same plans for every k); mean bytes per epoch."""
    folder.mkdir(parents=True)
    rng, sizes = np.random.default_rng(seed), []
    for e in range(epochs):
        plan = plan_epoch(len(images), batch_size, rng, augment)
        write_epoch(epoch_file(folder, e), plan, torch.cat([labeller(plan, s) for s in plan.batches()]), k)
        sizes.append(epoch_file(folder, e).stat().st_size)
    write_json(folder / "fkd.json", {"epochs": epochs, "batch_size": batch_size, "num_images": len(images)})
    return round(statistics.fmean(sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="artifacts/digits/teachers/convnet",
                        help="teacher folder; a fresh ConvNet (params.yaml models.convnet) if it does not exist")
    parser.add_argument("--data", default="data/digits", type=Path, help="prepared digits (temp copy if absent)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--epochs", type=int, help="evaluate epochs stored and trained (default evaluate.epochs)")
    parser.add_argument("--seeds", type=int, default=2, help="students per k")
    parser.add_argument("--standin-ipc", type=int, default=5, help="images per class of the 1000-class stand-in")
    parser.add_argument("--quick", action="store_true", help="5 epochs, one seed, a 1-image-per-class stand-in")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("DDPIPE_THREADS", os.cpu_count() or 1)))
    p, cfg = params.load(), params.load().evaluate
    epochs = 5 if args.quick else (args.epochs or cfg.epochs)
    seeds = 1 if args.quick else args.seeds
    standin_ipc = 1 if args.quick else args.standin_ipc

    with tempfile.TemporaryDirectory(prefix="bench-topk-") as scratch:
        scratch = Path(scratch)
        data, data_source = prepared_data(args.data, scratch)
        meta, classes = json.loads((data / "meta.json").read_text()), read_classes(data)
        size, norm = meta["image_size"], (meta["mean"], meta["std"])
        images = ipc_subset(load_imagefolder(data / "train", classes, size), args.ipc, derive_seed(p.seed, "baseline"))
        valset = load_imagefolder(data / "val", classes, size)
        val = (valset.normalised(*norm).tensor(), valset.labels)
        if (Path(args.teacher) / "meta.json").exists():
            teacher, t_meta = load_checkpoint(args.teacher, meta["classes_sha256"])
            t_norm, teacher_source = (t_meta["mean"], t_meta["std"]), f"{args.teacher} ({t_meta['arch']})"
        else:
            torch.manual_seed(p.seed)
            teacher = build("convnet", len(classes), size, p.models["convnet"].model_dump()).eval()
            t_norm, teacher_source = norm, f"fresh ConvNet with random weights ({args.teacher} absent)"
        batch_size = eval_batch_size(cfg, len(images), len(classes))
        augment = eval_augment(cfg, size)
        student_arch = cfg.students[0]  # the report's first student column
        config = p.models[student_arch].model_dump() if student_arch in p.models else None
        run, skipped = ks(len(classes))

        print(f"teacher: {teacher_source}; data: {data_source}")
        print(f"digits IPC {args.ipc}: {len(images)} images x {len(classes)} classes, batch {batch_size}, {epochs} "
              f"epochs, {seeds} student seed(s), student {student_arch}, T {cfg.temperature}, mix {cfg.mix}"
              + (f"; skipped k > {len(classes)} classes: {skipped}" if skipped else ""))
        print(f"{'labels':>8} {'B/epoch':>9} {'B/crop':>8} {'vs dense':>9} {'top-1 mean':>11} {'per seed':>20}")
        dense_bytes, rows = None, {}
        for k in run:
            folder = scratch / f"digits-{name(k)}"
            stored = store(folder, images, lambda plan, s: predict(teacher, render(images.images, plan, s, *t_norm,
                                                                                  size)),
                           epochs, batch_size, augment, derive_seed(p.seed, "relabel"), k)
            dense_bytes = dense_bytes or stored
            top1 = []
            for seed in range(seeds):
                torch.manual_seed(derive_seed(p.seed, "evaluate", "fkd", seed))
                student = build(student_arch, len(classes), size, config)
                history = train(student, images, norm, epochs, batch_size,
                                fkd_plans(folder, epochs, batch_size, len(images), len(classes)),
                                lambda logits, batch: kd_loss(logits, batch.soft, cfg.temperature),
                                Optim(cfg.optimizer, cfg.lr, cfg.weight_decay), val, 1, desc=name(k))
                top1.append(history.summary()["top1"])
            rows[k] = top1
            print(f"{name(k):>8} {stored:>9} {stored / len(images):>8.1f} {dense_bytes / stored:>8.2f}x "
                  f"{statistics.fmean(top1):>11.4f} {' '.join(f'{t:.4f}' for t in top1):>20}")
        if len(classes) in rows:
            same = rows[len(classes)] == rows[None]
            print(f"top-{len(classes)} (every class) gives the dense top-1 exactly: {same}")

        # The 1000-class stand-in: bytes only.
        n_classes = 1000
        n = n_classes * standin_ipc
        labels = torch.arange(n_classes).repeat_interleave(standin_ipc)
        gen = torch.Generator().manual_seed(p.seed)
        logits_of = torch.randn(n, n_classes, generator=gen) * 2
        logits_of[torch.arange(n), labels] += 8
        crops = lambda plan, s: logits_of[torch.from_numpy(plan.order[s])]  # noqa: E731 (synthetic teacher)
        fake = type("Images", (), {"__len__": lambda self: n})()
        standin_batch = eval_batch_size(cfg, IMAGENET_IMAGES, n_classes)  # the batch ImageNet IPC 50 would get
        print(f"\n1000-class stand-in: {n} images (IPC {standin_ipc}), batch {standin_batch} (ImageNet IPC 50's), "
              "one epoch, synthetic logits (bytes only)")
        print(f"{'labels':>8} {'B/epoch':>10} {'B/crop':>8} {'vs dense':>9} {'ImageNet-1K IPC 50 x 300 epochs':>32}")
        per_crop = {}
        for k in ks(n_classes)[0]:
            stored = store(scratch / f"standin-{name(k)}", fake, crops, 1, standin_batch, augment,
                           derive_seed(p.seed, "relabel"), k)
            per_crop[k] = stored / n
            total = per_crop[k] * IMAGENET_IMAGES * IMAGENET_EPOCHS
            print(f"{name(k):>8} {stored:>10} {per_crop[k]:>8.1f} {per_crop[None] / per_crop[k]:>8.2f}x "
                  f"{total / 1e9:>29.2f} GB")
        print(f"ratio dense / top-10 bytes per crop at 1000 classes: {per_crop[None] / per_crop[10]:.2f}x "
              f"({per_crop[None]:.1f} vs {per_crop[10]:.1f} B: ImageNet-1K IPC 50, 300 epochs = "
              f"{per_crop[None] * IMAGENET_IMAGES * IMAGENET_EPOCHS / 1e9:.1f} GB vs "
              f"{per_crop[10] * IMAGENET_IMAGES * IMAGENET_EPOCHS / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
