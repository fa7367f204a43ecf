"""RDED parity diagnostics (docs/parity.md#rded): how the candidate crops are drawn, with the selection held fixed.

    python benchmarks/parity/diagnostics/rded_crops.py --run <a parity run's --out> [--seeds 5]

For every class of the run's work project (every train image a candidate) and each seed, ddpipe's selection
(`patch_losses` + `select_patches`, `ipc` crops kept) on crops drawn three ways from the same candidates:
ddpipe's `candidate_patches` (fractional boxes, `roi_align` on the whole image); torchvision's RandomResizedCrop
as the reference's MultiRandomCrop calls it (integer pixel boxes, cropped then resized; torch's generator at the
seed); and ddpipe's `roi_align` on integer boxes drawn as torchvision draws them. Prints the mean over classes of
the kept crops' observer loss. No reference code runs (torchvision is ddpipe's dependency).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run as a script from anywhere

from benchmarks.parity.compare import context  # noqa: E402
from stages.data.augment import crop_resize, sample_boxes  # noqa: E402
from stages.data.prepared import open_images  # noqa: E402
from stages.methods.rded.patches import candidate_patches, patch_losses, select_patches  # noqa: E402
from stages.models import load_checkpoint  # noqa: E402
from stages.pipeline.seeds import derive_seed  # noqa: E402


def integer_boxes(n: int, size: int, crops: int, rng: np.random.Generator) -> np.ndarray:
    """Square boxes as torchvision's RandomResizedCrop draws them at ratio 1: side round(sqrt(area) * size) px,
    an integer position; as fractions (top, left, height, width) for crop_resize."""
    side = np.round(sample_boxes(n * crops, rng, (0.08, 1.0), ratio=(1.0, 1.0))[:, 2] * size)
    top = np.floor(rng.uniform(size=len(side)) * (size - side + 1))
    left = np.floor(rng.uniform(size=len(side)) * (size - side + 1))
    return (np.stack([top, left, side, side], 1) / size).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a parity run's --out folder")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    from torchvision import transforms

    ctx = context(args.run / "project", args.run, threads=2)
    r, size = ctx.params.rded, ctx.image_size
    observer, _ = load_checkpoint(ctx.teacher(r.observer))
    train = open_images(ctx.data / "train", ctx.classes, size)
    crop = transforms.RandomResizedCrop(size, ratio=(1, 1), antialias=True)
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        kept: dict[str, list[float]] = {"ddpipe's crops": [], "torchvision's crops": [],
                                        "roi_align on integer boxes": []}
        for label, name in enumerate(ctx.classes):
            rng = np.random.default_rng(derive_seed(seed, "rded", name))
            images = train.images[train.labels == label]
            m = len(images)
            drawn = [candidate_patches(images, r.crops, size, (0.08, 1.0), rng),
                     torch.stack([torch.stack([crop(x.float() / 255) for _ in range(r.crops)]) for x in images]),
                     crop_resize(images.float().div(255).repeat_interleave(r.crops, 0),
                                 integer_boxes(m, size, r.crops, rng), size).view(m, r.crops, 3, size, size)]
            for patches, out in zip(drawn, kept.values()):
                losses = patch_losses(observer, patches, label, ctx.mean, ctx.std, size)
                index, best = select_patches(losses, ctx.ipc)
                out.append(float(losses[index, best].mean()))
        print(f"seed {seed}: kept observer loss, mean over classes: "
              + ", ".join(f"{k} {np.mean(v):.3e}" for k, v in kept.items()), flush=True)


if __name__ == "__main__":
    main()
