"""statistics (EDC): each observer's statistics of the real train set, the targets EDC's recover matches
(docs/methods/edc.md#statistic-matching). It reads no `ipc`, so every IPC's recover@edc reuses it.

One pass per observer over the train split in shuffled batches of `edc.statistics.batch_size`, each image
augmented as the reference's statistics loader does (`crop`: pad = RandomCrop(size, padding=size/8) on
CIFAR, resized = RandomResizedCrop on ImageNet, none; `flip`). Writes <arch>.safetensors per observer:
per conv layer the average over batches of the batch's channel and 4 x 4-patch statistics, and per matched
layer (BatchNorm and conv) each class's average per-image statistics; metadata: the layers, the teacher's
sha256 and the pass's settings.

    python -m stages.methods.edc.statistics --teachers artifacts/digits/teachers --data data/digits \\
        --out artifacts/digits/edc_statistics
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.nn import functional as F

from stages.data.augment import crop_resize, sample_boxes
from stages.data.folder import normalise, read_classes
from stages.data.prepared import open_images
from stages.methods.edc.matching import StatisticsPass, matched_layers
from stages.models import accel
from stages.models.teachers import Teachers
from stages.pipeline import cli, outputs, params, runlog
from stages.pipeline.artifacts import read_data_meta
from stages.pipeline.errors import ArtifactError
from stages.pipeline.outputs import atomic_dir
from stages.pipeline.params import Params
from stages.pipeline.progress import progress
from stages.pipeline.seeds import derive_seed

SUFFIX = ".safetensors"


def augment(pixels: torch.Tensor, crop: str, flip: bool, rng: np.random.Generator) -> torch.Tensor:
    """The statistics loader's per-image augmentation of uint8 rows, as floats in [0, 1]."""
    x = pixels.float() / 255
    n, size = len(x), x.shape[-1]
    if crop == "pad":  # RandomCrop(size, padding=size // 8): black (zero) padding before normalisation
        pad = size // 8
        padded = F.pad(x, (pad, pad, pad, pad))
        offsets = rng.integers(0, 2 * pad + 1, size=(n, 2))
        x = torch.stack([padded[i, :, a:a + size, b:b + size] for i, (a, b) in enumerate(offsets.tolist())])
    elif crop == "resized":  # torchvision's RandomResizedCrop defaults: area 0.08-1, aspect 3/4-4/3
        x = crop_resize(x, sample_boxes(n, rng, (0.08, 1.0)), size)
    if flip:
        mirrored = torch.from_numpy(rng.uniform(size=n) < 0.5)
        x = torch.where(mirrored.view(-1, 1, 1, 1), x.flip(3), x)
    return x


def observe(model: torch.nn.Module, train, num_classes: int, batch_size: int, crop: str, flip: bool,
            mean: list[float], std: list[float], rng: np.random.Generator, desc: str) -> dict[str, torch.Tensor]:
    """One observer's targets over `train` (an ImageSet)."""
    device = next(model.parameters()).device
    model.eval()
    accel.prepare(model, device)
    stats = StatisticsPass(model, num_classes, len(train))
    order = torch.from_numpy(rng.permutation(len(train)))
    with stats.hooked():
        for start in progress(range(0, len(train), batch_size), desc=desc, unit="batch"):
            rows = order[start:start + batch_size]
            x = normalise(augment(train.images[rows], crop, flip, rng), mean, std).to(device)
            stats.add_batch(model, x, train.labels[rows].to(device))
    return stats.result()


def run(p: Params, teachers_dir: Path, data: Path, out: Path) -> dict:
    """The statistics stage: <arch>.safetensors per observer in `out`; returns {arch: layers matched}."""
    outputs.claim("statistics", {"--out": (out, outputs.folder_kind("EDC statistics", "statistics.json"))},
                  {"--teachers": teachers_dir, "--data": data})
    cfg = p.edc.statistics
    data_meta = read_data_meta(data)
    classes = read_classes(data)
    teachers = Teachers(teachers_dir, list(p.edc.observers), data_meta)
    train = open_images(data / "train", classes, data_meta.image_size, desc="load train")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    began, layers = time.perf_counter(), {}
    with atomic_dir(out) as tmp:
        for arch, model, sha in zip(teachers.archs, teachers.models, teachers.sha256):
            rng = np.random.default_rng(derive_seed(p.seed, "edc", "statistics", arch))
            targets = observe(model.to(device), train, len(classes), cfg.batch_size, cfg.crop, cfg.flip,
                              teachers.mean, teachers.std, rng, f"statistics {arch}")
            names = [name for name, _ in matched_layers(model)]
            info = {"arch": arch, "teacher_sha256": sha, "layers": names, "images": len(train),
                    "settings": cfg.model_dump()}
            save_file(targets, tmp / f"{arch}{SUFFIX}", metadata={"ddpipe": json.dumps(info, sort_keys=True)})
            layers[arch] = len(names)
        (tmp / "statistics.json").write_text(json.dumps({"observers": layers, "images": len(train),
                                                         "settings": cfg.model_dump()}, indent=2) + "\n")
    seconds = time.perf_counter() - began
    runlog.record("statistics", out, seconds, images=len(train), observers=len(layers))
    print(f"statistics: {len(train)} train images through {len(layers)} observers "
          f"({', '.join(f'{a}: {n} layers' for a, n in layers.items())}) in {seconds:.1f} s → {out}")
    return layers


def load_statistics(folder: Path, arch: str, teacher_sha256: str, device: torch.device | str = "cpu"
                    ) -> dict[str, torch.Tensor]:
    """An observer's targets, checked against the teacher recover reads (the same weights, the same layers)."""
    path = folder / f"{arch}{SUFFIX}"
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; run the statistics stage with {arch} in edc.observers")
    try:
        with safe_open(str(path), "pt", device=str(device)) as f:
            info = json.loads((f.metadata() or {}).get("ddpipe", "{}"))
            targets = {key: f.get_tensor(key) for key in f.keys()}
    except (OSError, ValueError, RuntimeError) as e:  # safetensors raises SafetensorError (a RuntimeError)
        raise ArtifactError(f"{path}: not readable EDC statistics ({str(e).splitlines()[0]})") from None
    if info.get("teacher_sha256") != teacher_sha256:
        raise ArtifactError(f"{path}: made with another {arch} teacher; rerun the statistics stage")
    return targets


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--teachers", required=True, type=Path, help="artifacts/<ds>/teachers (edc.observers are read)")
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path, help="artifacts/<ds>/edc_statistics")
    args = parser.parse_args()
    run(params.load(), args.teachers, args.data, args.out)


if __name__ == "__main__":
    cli.run(main)
