"""Evaluate's student-training data path: in-memory batched augmentation against ImageFolder + DataLoader + PIL.

Ours is what `evaluate` runs for the `hard` protocol: the train set decoded once into one uint8 tensor
(stages/data/folder.py), then per epoch a plan (`plan_epoch`) and per batch one roi_align crop/resize of
the whole batch, flip, cutmix and normalisation (`render`), assembled with labels by
stages.training.loop.epoch_batches - the very functions `train` calls. The FKD replay path (Parquet plan
+ stored logits read back per epoch, then the same rendering) is timed too.
The baseline is the plain torchvision loop over the same PNG files: `ImageFolder` + `DataLoader` (same
batch size, shuffled) + per-image PIL transforms (RandomResizedCrop with the recipe's area range and ratio
3/4..4/3, ToTensor, Normalize) + `v2.CutMix` on each batch. Both sides produce the same batches (count,
shape, dtype): the script asserts it.

Two measurements, each side by side in this process with the same torch thread count:
1. the data path alone, no model: images/s over the epochs; ours "with decode" counts the one-time decode
   (amortised over the epochs), "steady state" leaves it out; the baseline's time includes building its
   ImageFolder and DataLoader (and starting its workers);
2. end-to-end epochs: the same plus a student ConvNet-3 (width 64) forward/backward/optimizer step
   (evaluate.optimizer) per batch; ours through stages.training.loop.train itself (validation excluded,
   as in its images/s; each run pays the decode once); whole runs of the sides take turns; the student
   runs on CUDA when there is one (the data path stays on the host on both sides, as in evaluate).
The baseline runs with num_workers=0 (the plain loop, one process: the headline ratio) and with
num_workers=<threads> (persistent workers, its best case on this many cores).
"Faster" = more images per second; the ratio line is ours / baseline (target >= 10x for the data path).

    python benchmarks/evaluate.py [--data data/digits] [--epochs N] [--e2e-epochs 2] [--rounds 3] [--quick]

Threads: DDPIPE_THREADS (default all cores). If data/digits is missing it is prepared into a temporary
folder by `python -m stages.prepare`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.transforms import v2

# the checkout this script is in, not whichever `stages` the environment has installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.data.augment import plan_epoch  # noqa: E402 (after the path fix above)
from stages.data.folder import load_imagefolder, read_classes
from stages.models import build
from stages.pipeline import params
from stages.training.loop import Optim, epoch_batches, hard_loss, make_optimizer, train
from stages.training.recipe import eval_augment, eval_batch_size
from stages.training.soft_labels import epoch_file, read_epoch, write_epoch

STUDENT = ("convnet", {"width": 64, "depth": 3, "norm": "batch"})


def shapes_of(batches) -> list[tuple]:
    """Consume one epoch's batches; their (shape, dtype), to check both sides did the same work."""
    return [(tuple(x.shape), x.dtype) for x in batches]


def our_epoch(data, plan, norm, size: int) -> list[tuple]:
    return shapes_of(b.x for b in epoch_batches(data, plan, None, norm, size))


def fkd_epoch(data, path: Path, norm, size: int) -> list[tuple]:
    """evaluate's fkd protocol data path: read the epoch's Parquet (plan + logits), render its batches."""
    plan, logits = read_epoch(path)
    batches = list(epoch_batches(data, plan, logits, norm, size))
    assert all(b.soft.shape[0] == b.x.shape[0] for b in batches)
    return shapes_of(b.x for b in batches)


def torchvision_loader(root: Path, classes: list[str], size: int, norm, batch_size: int, augment, workers: int):
    steps = [transforms.RandomResizedCrop(size, scale=augment.crop_scale, ratio=(3 / 4, 4 / 3))]
    if augment.flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(*norm)]
    folder = datasets.ImageFolder(str(root), transform=transforms.Compose(steps))
    # equal labels on both sides: torchvision orders classes by sorted folder name, ours by classes.json
    assert folder.classes == classes, f"{root}: folder order {folder.classes} differs from classes.json {classes}"
    loader = DataLoader(folder, batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    mix = {"cutmix": v2.CutMix, "mixup": v2.MixUp}.get(augment.mix)
    mixer = mix(num_classes=len(classes), alpha=augment.mix_alpha) if mix else (lambda x, y: (x, y))
    return loader, mixer


def baseline_epoch(loader, mixer) -> list[tuple]:
    return shapes_of(mixer(x, y)[0] for x, y in loader)


def timed(fn, *args):
    began = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - began, out


def data_path(root, classes, size, norm, batch_size, augment, epochs: int, worker_counts: list[int], scratch: Path):
    """Seconds per side: ours' decode and epochs, fkd replay epochs, each baseline's setup + epochs. The sides
    take turns epoch by epoch, so a change in the machine's load falls on all of them alike."""
    decode, data = timed(lambda: load_imagefolder(root, classes, size, desc="decode (ours)"))
    rng = np.random.default_rng(0)
    for epoch in range(epochs):  # stored as relabel stores them (outside the clocks; logit values do not matter)
        write_epoch(epoch_file(scratch, epoch), plan_epoch(len(data), batch_size, rng, augment),
                    torch.randn(len(data), len(classes)))
    read_epoch(epoch_file(scratch, 0))  # warm-up: pyarrow's first read sets up its readers
    seconds = {"ours": [decode], "fkd": [], **{w: [] for w in worker_counts}}
    loaders = {}
    for w in worker_counts:  # building the ImageFolder (a directory scan) counts for the baseline
        spent, loaders[w] = timed(torchvision_loader, root, classes, size, norm, batch_size, augment, w)
        seconds[w].append(spent)
    for epoch in range(epochs):
        spent, ours = timed(lambda: our_epoch(data, plan_epoch(len(data), batch_size, rng, augment), norm, size))
        seconds["ours"].append(spent)
        spent, replayed = timed(fkd_epoch, data, epoch_file(scratch, epoch), norm, size)
        seconds["fkd"].append(spent)
        for w in worker_counts:  # the first epoch of a worker loader includes starting its workers
            spent, theirs = timed(baseline_epoch, *loaders[w])
            seconds[w].append(spent)
            # the same work: as many batches, of the same shape and dtype
            assert theirs == ours == replayed, f"batches differ: ours {ours[:2]}.., torchvision (workers={w}) " \
                                               f"{theirs[:2]}.., fkd {replayed[:2]}.."
    return seconds, data


def baseline_train(model, root, classes, size, norm, batch_size, augment, epochs: int, workers: int, optim: Optim):
    """The plain training loop: same optimizer and cosine schedule; CutMix's mixed one-hot targets give the
    same loss as ours (λ CE(own) + (1 - λ) CE(partner)) for cutmix and mixup."""
    device = next(model.parameters()).device
    began = time.perf_counter()
    loader, mixer = torchvision_loader(root, classes, size, norm, batch_size, augment, workers)
    optimizer = make_optimizer(model, optim)
    total = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            x, y = mixer(x.to(device), y.to(device))
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began


def prepared(data_arg: str, scratch: Path) -> Path:
    if (Path(data_arg) / "meta.json").exists():
        return Path(data_arg)
    out = scratch / "digits"
    print(f"{data_arg}: not prepared; preparing digits into {out}")
    subprocess.run([sys.executable, "-m", "stages.prepare", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/digits", help="prepared dataset (its train/ is used)")
    parser.add_argument("--epochs", type=int,
                        help="epochs of the data-path measurement (default: evaluate.full_epochs, "
                             "the epochs evaluate trains on the full set)")
    parser.add_argument("--e2e-epochs", type=int, default=2, help="epochs of the end-to-end measurement")
    parser.add_argument("--rounds", type=int, default=3, help="end-to-end runs per side, taking turns")
    parser.add_argument("--quick", action="store_true", help="2 data-path epochs, one 1-epoch end-to-end round, "
                                                             "workers=0 only")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.e2e_epochs, args.rounds = 2, 1, 1
    threads = int(os.environ.get("DDPIPE_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    cfg = params.load().evaluate
    args.epochs = args.epochs or cfg.full_epochs
    scratch = tempfile.TemporaryDirectory()
    data_dir = prepared(args.data, Path(scratch.name))
    meta = json.loads((data_dir / "meta.json").read_text())
    classes, size, norm = read_classes(data_dir), meta["image_size"], (meta["mean"], meta["std"])
    root = data_dir / "train"
    augment = eval_augment(cfg, size)
    n = sum(1 for _ in root.glob("*/*.png"))
    batch_size = eval_batch_size(cfg, n, len(classes))  # evaluate's rule for the full set (baseline@full)
    worker_counts = [0] if args.quick else [0, threads]

    # Warm-up outside the clocks: imports, kernel selection, the files in the OS cache for both sides.
    warm = load_imagefolder(root, classes, size, desc="warm-up")
    our_epoch(warm, plan_epoch(len(warm), batch_size, np.random.default_rng(1), augment), norm, size)
    loader, mixer = torchvision_loader(root, classes, size, norm, batch_size, augment, 0)
    mixer(*next(iter(loader)))

    with tempfile.TemporaryDirectory() as fkd:
        seconds, data = data_path(root, classes, size, norm, batch_size, augment, args.epochs, worker_counts, Path(fkd))
    images = n * args.epochs
    decode = seconds["ours"][0]
    with_decode, steady = images / sum(seconds["ours"]), images / sum(seconds["ours"][1:])
    print(f"data: {root} ({n} images, {size} px, {len(classes)} classes), batch {batch_size}, crop_scale "
          f"{list(augment.crop_scale)}, flip {augment.flip}, mix {augment.mix}; {threads} threads, cpu, "
          f"torch {torch.__version__}")
    print(f"[data path, no model, {args.epochs} epochs, sides taking turns epoch by epoch]")
    print(f"ours (decode once, batched render) with decode: {with_decode:10.0f} images/s "
          f"(decode {decode:.2f} s once)")
    print(f"ours steady state:                              {steady:10.0f} images/s")
    print(f"ours fkd replay (Parquet plan + logits), steady: {images / sum(seconds['fkd']):9.0f} images/s")
    rates = {}
    for w in worker_counts:
        rates[w] = images / sum(seconds[w])
        print(f"ImageFolder + DataLoader(num_workers={w}) + PIL:   {rates[w]:10.0f} images/s")
    for w in worker_counts:
        head = "ratio" if w == 0 else "also "
        print(f"{head} data path ours / torchvision (num_workers={w}): {with_decode / rates[w]:.1f}x with decode, "
              f"{steady / rates[w]:.1f}x steady state")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the data path stays on the host
    print(f"[end to end, student {STUDENT[0]} width {STUDENT[1]['width']}, {cfg.optimizer}, "
          f"{args.rounds} x {args.e2e_epochs} epochs, "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}]")
    optim = Optim(cfg.optimizer, cfg.lr, cfg.weight_decay)
    val = load_imagefolder(data_dir / "val", classes, size, desc="decode val")
    val = (val.normalised(*norm), val.labels)
    e2e = {"ours": 0.0, **dict.fromkeys(worker_counts, 0.0)}
    for _ in range(args.rounds):  # the sides take turns, a whole run each, so load swings fall on all alike
        torch.manual_seed(0)
        student = build(STUDENT[0], len(classes), size, STUDENT[1]).to(device)
        rng = np.random.default_rng(0)
        history = train(student, data, norm, args.e2e_epochs, batch_size,
                        lambda epoch: (plan_epoch(len(data), batch_size, rng, augment), None), hard_loss, optim,
                        val, 1, desc="train (ours)")
        assert history.images_seen == n * args.e2e_epochs
        e2e["ours"] += history.seconds + decode  # each run pays the decode once (validation is not counted)
        for w in worker_counts:
            torch.manual_seed(0)
            student = build(STUDENT[0], len(classes), size, STUDENT[1]).to(device)
            e2e[w] += baseline_train(student, root, classes, size, norm, batch_size, augment, args.e2e_epochs, w,
                                     optim)
    seen = n * args.e2e_epochs * args.rounds
    print(f"ours (stages.training.loop.train, with decode):    {seen / e2e['ours']:8.0f} images/s")
    for w in worker_counts:
        print(f"ImageFolder + DataLoader(num_workers={w}) + PIL loop: {seen / e2e[w]:8.0f} images/s")
    for w in worker_counts:
        head = "ratio" if w == 0 else "also "
        print(f"{head} end to end ours / torchvision (num_workers={w}): {e2e[w] / e2e['ours']:.2f}x")
    scratch.cleanup()


if __name__ == "__main__":
    main()
