"""Image files: class folders listed, files decoded to RGB uint8 arrays (their pixel count checked first), PNGs
written. numpy and Pillow only, no torch: a stage that only moves files (prepare, baseline, select, report) starts
without importing torch (~2 s); stages/data/folder.py holds the same images as tensors."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

from stages.pipeline import artifacts
from stages.pipeline.artifacts import check_pixels
from stages.pipeline.errors import DataError, ResourceError


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


def save_png(array: np.ndarray, path: Path) -> None:
    """uint8 H x W x 3 → PNG. PIL writes no timestamps, so equal pixels give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
