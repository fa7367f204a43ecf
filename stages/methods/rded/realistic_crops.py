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

from stages.data.folder import ImageSet, read_classes, save_png
from stages.data.prepared import open_images
from stages.methods.rded.params import Rded
from stages.methods.rded.patches import distil_class
from stages.pipeline import cli, params, runlog
from stages.pipeline.artifacts import read_data_meta
from stages.pipeline.card import EVALUATION_NOTE, write_card
from stages.pipeline.errors import ParamsError
from stages.pipeline.params import Params
from stages.pipeline.outputs import atomic_dir
from stages.pipeline.seeds import derive_seed
from stages.models.teachers import Teachers
from stages.pipeline import outputs


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
