"""ImageFolders: class sub-folders of PNGs, class order from classes.json (never from sorting)."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stages.data.stream import MEMORY_ENV, BatchView, LazyImages, memory_budget
from stages.pipeline import artifacts
from stages.pipeline.artifacts import check_pixels
from stages.pipeline.errors import DataError, ResourceError
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


def read_classes(data_dir: str | Path) -> list[str]:
    """data/<ds>/classes.json, validated (stages/pipeline/artifacts.py)."""
    return artifacts.read_classes(data_dir)


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


def to_rgb(img: Image.Image, path: Path) -> np.ndarray:
    """Any mode Pillow opens → RGB uint8. Gray, palette, CMYK, 1-bit: Pillow's convert; RGBA/LA: alpha dropped
    (as torchvision's loader). 16-bit gray (I;16*, and I, where Pillow puts 16-bit PNG/TIFF samples) is scaled
    0..65535 → 0..255: Pillow's own convert clips it, so anything above 255 would turn white."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        wide = np.asarray(img).astype(np.int64)
        if wide.min() < 0 or wide.max() > 65535:
            raise DataError(f"{path}: 32-bit integer pixels ({wide.min()}..{wide.max()}): no defined 8-bit scale; "
                            "save it with 8 or 16 bits")
        return np.repeat(((wide + 128) // 257).astype(np.uint8)[:, :, None], 3, axis=2)
    if img.mode == "F":
        raise DataError(f"{path}: floating-point pixels (mode F): no defined 8-bit scale; save it with 8 or 16 bits")
    return np.asarray(img.convert("RGB"))


# Our own pixel limit (DDPIPE_MAX_PIXELS, checked from the header before any pixel is decoded) replaces Pillow's
# fixed one, so the user can raise it for large scans; a header claiming too many pixels is a ResourceError.
Image.MAX_IMAGE_PIXELS = None


def decode_rgb(path: Path) -> np.ndarray:
    """A file's pixels as RGB uint8, its pixel count checked from the header first (DDPIPE_MAX_PIXELS)."""
    return _decode(path, path, lambda: path.stat().st_size)


def decode_rgb_bytes(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes held in another file (a Parquet row: `where` names it), checked as decode_rgb."""
    import io

    return _decode(io.BytesIO(data), Path(where), lambda: len(data))


def _decode(source, path: Path, size) -> np.ndarray:
    try:
        with Image.open(source) as img:
            check_pixels(path, img.size)
            return to_rgb(img, path)
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: unreadable image (not a format Pillow knows)") from None
    except MemoryError:
        raise ResourceError(f"{path}: out of memory decoding it ({size():,} bytes on disk)") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding its pixels."""
    try:
        with Image.open(path) as img:
            check_pixels(path, img.size)
            return img.size
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: unreadable image (not a format Pillow knows)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


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


def save_png(array: np.ndarray, path: Path) -> None:
    """uint8 H x W x 3 → PNG. PIL writes no timestamps, so equal pixels give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
