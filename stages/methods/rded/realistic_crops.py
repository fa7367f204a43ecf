"""rded: RDED (Sun et al., CVPR 2024) - distilled images stitched from the real crops an observer finds most realistic.

Per class: `rded.candidates` real train images (a seeded draw; all of them when the class is smaller), and of
each `rded.crops` random square crops (RandomResizedCrop, area in `rded.crop_scale`) resized to a patch of
image_size // factor pixels. The observer teacher scores a patch by its cross-entropy on the true class, the
patch zero-padded to the full image size in normalised space (the data mean) as the reference does; each
candidate keeps its lowest-loss patch, and the ipc x factor² candidates with the lowest loss are kept. Image i
of a class holds the patch ranked k x ipc + i at grid cell k (row-major), so every image gets one of the best
ipc patches at its top-left. Soft labels for the student come from relabel (FKD), like every set.

    python -m stages.methods.rded.realistic_crops --teachers artifacts/digits/teachers --data data/digits \\
        --out artifacts/digits/ipc10/distilled/rded
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stages.data.augment import crop_resize, sample_boxes
from stages.data.folder import ImageSet, normalise, read_classes, save_png
from stages.data.prepared import open_images
from stages.models import predict
from stages.methods.rded.params import Rded
from stages.pipeline import cli, params, runlog
from stages.pipeline.artifacts import read_data_meta
from stages.pipeline.card import EVALUATION_NOTE, write_card
from stages.pipeline.errors import ParamsError
from stages.pipeline.params import Params
from stages.pipeline.outputs import atomic_dir
from stages.pipeline.seeds import derive_seed
from stages.models.teachers import Teachers
from stages.pipeline import outputs


def candidate_patches(images: torch.Tensor, crops: int, patch: int, scale: tuple[float, float],
                      rng: np.random.Generator) -> torch.Tensor:
    """uint8 [M, 3, H, W] → float [M, crops, 3, patch, patch] in [0, 1]: square random crops of each image."""
    m = len(images)
    boxes = sample_boxes(m * crops, rng, scale, ratio=(1.0, 1.0))
    source = images.float().div(255).repeat_interleave(crops, 0)  # row j*crops + c: crop c of image j
    return crop_resize(source, boxes, patch).view(m, crops, 3, patch, patch)


def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre a patch in a size x size frame of zeros (the reference pads the normalised patch)."""
    dh, dw = size - x.shape[-2], size - x.shape[-1]
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def patch_losses(observer: torch.nn.Module, patches: torch.Tensor, label: int, mean, std, size: int) -> torch.Tensor:
    """Cross-entropy of the observer on the true class for every patch: [M, crops]."""
    m, crops = patches.shape[:2]
    x = pad_to(normalise(patches.flatten(0, 1), mean, std), size)
    logits = predict(observer, x)
    return F.cross_entropy(logits, torch.full((len(x),), label), reduction="none").view(m, crops)


def select_patches(losses: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each candidate's lowest-loss crop, then the n candidates whose kept crop has the lowest loss
    (ties by candidate order): (candidate index, crop index), best first."""
    if n > len(losses):
        raise ValueError(f"{n} patches wanted from {len(losses)} candidates")
    best, crop = losses.min(1)
    order = torch.sort(best, stable=True).indices[:n]
    return order, crop[order]


def stitch(patches: torch.Tensor, ipc: int, factor: int, size: int) -> torch.Tensor:
    """[ipc x factor², 3, p, p] best first → [ipc, 3, size, size]: image i, cell k (row-major) = patch k·ipc + i.
    When size is not a multiple of factor the first size % factor rows and columns are a pixel taller/wider."""
    side, extra = divmod(size, factor)
    heights = [side + (i < extra) for i in range(factor)]
    out = torch.zeros(ipc, patches.shape[1], size, size, dtype=patches.dtype)
    k, top = 0, 0
    for h in heights:
        left = 0
        for w in heights:
            part = patches[k * ipc:(k + 1) * ipc]
            if part.shape[-2:] != (h, w):
                part = F.interpolate(part, size=(h, w), mode="nearest")
            out[:, :, top:top + h, left:left + w] = part
            left, k = left + w, k + 1
        top += h
    return out


def distil_class(observer, images: torch.Tensor, label: int, cfg, ipc: int, size: int, mean, std,
                 rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
    """The ipc stitched images of one class (uint8) and what was scored."""
    n = ipc * cfg.factor ** 2
    chosen = rng.permutation(len(images))[:min(cfg.candidates, len(images))]
    patches = candidate_patches(images[torch.from_numpy(chosen)], cfg.crops, size // cfg.factor,
                                tuple(cfg.crop_scale), rng)
    losses = patch_losses(observer, patches, label, mean, std, size)
    index, crop = select_patches(losses, n)
    stitched = stitch(patches[index, crop], ipc, cfg.factor, size)
    pixels = stitched.mul(255).round().clamp(0, 255).to(torch.uint8)
    return pixels, {"candidates": len(chosen), "kept_loss_mean": float(losses.min(1).values[index].mean())}


def run(p: Params, teachers_dir: Path, data: Path, out: Path) -> dict:
    """The rded stage: every class's ipc images stitched from the patches the observer (rded.observer) finds
    most realistic, written as a set with its card; returns the card's synthesis record."""
    outputs.claim("rded", {"--out": (out, outputs.set_kind("rded"))}, {"--teachers": teachers_dir, "--data": data})
    started = time.perf_counter()
    cfg = p.rded
    data_meta = read_data_meta(data)
    classes = read_classes(data)
    teachers = Teachers(teachers_dir, [cfg.observer], data_meta)
    size = data_meta.image_size
    if cfg.factor > size:
        raise ParamsError(f"params.yaml: rded.factor = {cfg.factor}: above the image size {size}")
    train = open_images(data / "train", classes, size)
    need = p.ipc * cfg.factor ** 2
    counts = torch.bincount(train.labels, minlength=len(classes)).tolist()
    check_candidates(cfg, p.ipc, classes, counts)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # scoring only: the crops stay on the CPU
    observer = teachers.models[0].to(device)
    with atomic_dir(out) as tmp:
        kept = write_classes(tmp, observer, train, classes, size, p, teachers.mean, teachers.std)
        scored = sum(min(c, cfg.candidates) for c in counts) * cfg.crops
        synthesis = {"patches_scored": scored, "patches_kept": need * len(classes),
                     "observer_loss_kept": round(float(np.mean(kept)), 6)}
        write_card(tmp, method="rded", dataset=p.dataset, ipc=p.ipc, classes=classes, num_images=p.ipc * len(classes),
                   params={"ipc": p.ipc, "seed": p.seed, "rded": cfg.model_dump()}, teacher=teachers.card(),
                   evaluation=EVALUATION_NOTE, synthesis=synthesis, device=device)
    seconds = time.perf_counter() - started
    runlog.record("rded", out, seconds, patches_scored=scored)
    print(f"rded: {p.ipc} x {len(classes)} images from {need} of {scored // len(classes)} patches per class "
          f"(observer {cfg.observer}, factor {cfg.factor}, mean kept loss {synthesis['observer_loss_kept']:.4f}) "
          f"in {seconds:.1f} s → {out}")
    return synthesis


def check_candidates(cfg: Rded, ipc: int, classes: list[str], counts: list[int]) -> None:
    """Every class must give ipc x factor² candidates (one patch each)."""
    need = ipc * cfg.factor ** 2
    for label, count in enumerate(counts):
        if min(count, cfg.candidates) < need:
            raise ParamsError(f"params.yaml: rded: ipc x factor² = {ipc} x {cfg.factor}² = {need} patches per "
                              f"class, but class {classes[label]!r} gives {min(count, cfg.candidates)} candidates "
                              f"(rded.candidates = {cfg.candidates}, {count} train images)")


def write_classes(tmp: Path, observer: torch.nn.Module, train: ImageSet, classes: list[str], size: int, p: Params,
                  mean, std) -> list[float]:
    """Each class's stitched images as <class>/<i>.png (a seeded draw per class name); the mean observer loss
    of the patches each class kept."""
    width = max(3, len(str(p.ipc - 1)))
    kept = []
    for label, name in enumerate(classes):
        rng = np.random.default_rng(derive_seed(p.seed, "rded", name))
        members = torch.nonzero(train.labels == label).flatten()
        pixels, info = distil_class(observer, train.images[members], label, p.rded, p.ipc, size, mean, std,
                                    rng)
        kept.append(info["kept_loss_mean"])
        for i, image in enumerate(pixels):
            save_png(image.permute(1, 2, 0).numpy(), tmp / name / f"{i:0{width}d}.png")
    return kept


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--teachers", required=True, type=Path, help="artifacts/<ds>/teachers (rded.observer is read)")
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    run(params.load(), args.teachers, args.data, args.out)


if __name__ == "__main__":
    cli.run(main)
