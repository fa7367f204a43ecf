"""ImageFolders: class sub-folders of PNGs, class order from classes.json (never from sorting)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stages.pipeline.errors import DataError
from stages.pipeline.progress import progress


@dataclass
class ImageSet:
    """A whole image set in memory: decoded once, augmented in batches afterwards."""

    images: torch.Tensor  # uint8, N x 3 x H x W
    labels: torch.Tensor  # int64, N
    paths: list[str]  # relative to the set's root, "<class>/<file>"

    def __len__(self) -> int:
        return len(self.labels)

    def normalised(self, mean: list[float], std: list[float]) -> torch.Tensor:
        return normalise(self.images.float() / 255, mean, std)


def normalise(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (mean, std))
    return (x - mean) / std


def renormalise(x: torch.Tensor, source: tuple[list, list], target: tuple[list, list]) -> torch.Tensor:
    """Move normalised images from one (mean, std) to another; linear, so it commutes with mixing."""
    if source == target:
        return x
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in source)
    pixels = x * std + mean
    return normalise(pixels, *target)


def read_classes(data_dir: str | Path) -> list[str]:
    path = Path(data_dir) / "classes.json"
    if not path.exists():
        raise DataError(f"{path}: missing; run the prepare stage first (dvc repro prepare)")
    return json.loads(path.read_text())


def list_images(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """Every file under root/<class>/ (sorted, hidden files skipped), with its class index."""
    items = []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"{folder}: class folder missing (class {label} {name!r} of classes.json)")
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{folder}: class folder is empty")
        items += [(p, label) for p in files]
    extra = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise DataError(f"{root}: folders {extra} are not classes of this dataset")
    return items


def decode_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


def load_imagefolder(root: str | Path, classes: list[str], image_size: int | None = None,
                     desc: str | None = None) -> ImageSet:
    """Decode every image under root into one uint8 tensor. All images must share one size."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder missing")
    items = list_images(root, classes)
    arrays = []
    for path, _ in progress(items, desc=desc or f"decode {root}", unit="img", leave=False):
        array = decode_rgb(path)
        if image_size is not None and array.shape[:2] != (image_size, image_size):
            raise DataError(f"{path}: is {array.shape[1]}x{array.shape[0]}, expected {image_size}x{image_size}")
        if arrays and array.shape != arrays[0].shape:
            raise DataError(f"{path}: is {array.shape[1]}x{array.shape[0]}, other images are "
                            f"{arrays[0].shape[1]}x{arrays[0].shape[0]}")
        arrays.append(array)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return ImageSet(images, labels, [p.relative_to(root).as_posix() for p, _ in items])


def save_png(array: np.ndarray, path: Path) -> None:
    """uint8 H x W x 3 → PNG. PIL writes no timestamps, so equal pixels give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
