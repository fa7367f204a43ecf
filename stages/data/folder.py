"""ImageFolders: class sub-folders of PNGs, class order from classes.json (never from sorting), as tensors (the
files themselves, listed, decoded and written without torch: stages/data/files.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from stages.data.files import decode_rgb, image_size_of, list_images
from stages.data.files import read_classes, save_png  # noqa: F401 (callers import them from here too)
from stages.data.stream import MEMORY_ENV, BatchView, LazyImages, memory_budget
from stages.pipeline.errors import DataError
from stages.pipeline.progress import progress


@dataclass
class ImageSet:
    """An image set: decoded once into memory, or (bigger than the memory budget) streamed from its files.

    `images[idx]` gives the same uint8 rows either way; whole-set work goes through batches of it.
    """

    images: torch.Tensor | LazyImages  # uint8, N x 3 x H x W
    labels: torch.Tensor  # int64, N
    paths: list[str]  # relative to the set's root, "<class>/<file>"

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def streamed(self) -> bool:
        return isinstance(self.images, LazyImages)

    def normalised(self, mean: list[float], std: list[float]) -> BatchView:
        """Normalised float images, computed per batch on indexing (a float copy is 4x the uint8 set);
        `.tensor()` materialises them."""
        return BatchView(self.images, lambda x: normalise(x.float() / 255, mean, std))


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


def load_imagefolder(root: str | Path, classes: list[str], image_size: int | None = None,
                     desc: str | None = None, stream: bool | None = None) -> ImageSet:
    """Every image under root, as one uint8 tensor or (stream, by default when the decoded set would
    exceed stages.data.stream.memory_budget()) a LazyImages view of the files. All images must share one size."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder missing")
    items = list_images(root, classes)
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    paths = [p.relative_to(root).as_posix() for p, _ in items]
    width, height = image_size_of(items[0][0])
    if image_size is not None and (width, height) != (image_size, image_size):
        raise DataError(f"{items[0][0]}: is {width}x{height}, expected {image_size}x{image_size}")
    decoded_bytes = len(items) * 3 * height * width
    if stream is None:
        stream = decoded_bytes > memory_budget()
    if stream:
        print(f"{root}: streaming {len(items)} images from disk ({decoded_bytes / 2 ** 30:.3g} GB decoded; "
              f"{MEMORY_ENV} budget {memory_budget() / 2 ** 30:.3g} GB)")
        return ImageSet(LazyImages([p for p, _ in items], height, width, decode_rgb), labels, paths)
    images = torch.empty((len(items), 3, height, width), dtype=torch.uint8)  # filled in place: peak = 1 set
    for i, (path, _) in enumerate(progress(items, desc=desc or f"decode {root}", unit="img", leave=False)):
        array = decode_rgb(path)
        if array.shape != (height, width, 3):
            expected = f"expected {image_size}x{image_size}" if image_size else f"other images are {width}x{height}"
            raise DataError(f"{path}: is {array.shape[1]}x{array.shape[0]}, {expected}")
        images.numpy()[i] = array.transpose(2, 0, 1)  # a shared view: no copy of the set
    return ImageSet(images, labels, paths)
