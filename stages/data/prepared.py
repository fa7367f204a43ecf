"""data/<ds>/{train,val}: the prepared splits, read the same way whether `prepare` copied the pixels or not.

prepare.copy: true writes every image as a square PNG under data/<ds>/<split>/<class>/. prepare.copy: false
(imagefolder only) writes data/<ds>/manifest.parquet instead: one row per source image (split, path relative
to prepare.root, class, label, the name its PNG would have, size in bytes and mtime_ns), and readers decode
the source files themselves. Every stage reads a split, or a folder that may be one (baseline@full's
images_from), through `open_images` (an ImageSet) or `split_items` (the files one by one, without torch:
stages/data/splits.py), never by listing the folder, so both layouts give the same names, labels and pixels:

- `images[i]` of a manifest split is `square(source, image_size)`, the function `prepare` writes its PNGs
  with, so ranking, validation and everything that reads whole images sees the copy's bytes.
- training crops (stages/data/augment.py `render`) are cut from the source image and resized once to the
  stage's resolution, as torchvision's RandomResizedCrop does, instead of from a pre-shrunk square copy.
  A square source already at the stage's resolution gives the copy's crops bit for bit.

A source file is identified by its size and mtime_ns (one stat, no read: a hash would read 150 GB of
ImageNet on every check; rsync and make trust the same pair). Each decode compares them with the manifest and
refuses a file changed since `prepare` (DataError), so a run never mixes two versions of a dataset.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages.data.augment import roi_align_kernel
from stages.data.folder import ImageSet, load_imagefolder
from stages.data.splits import Source, manifest_of, read_manifest, square
from stages.data.splits import inputs_of, stored_bytes  # noqa: F401 (callers import them from here too)
from stages.data.stream import LazyImages

def open_images(root: str | Path, classes: list[str], image_size: int | None = None, desc: str | None = None,
                stream: bool | None = None) -> ImageSet:
    """A prepared split (or a distilled set's folder) as an ImageSet. A manifest split is always read on
    demand (its training crops come from the source files); a folder of copies as load_imagefolder decides."""
    manifest = manifest_of(root)
    if manifest is None:
        return load_imagefolder(root, classes, image_size, desc=desc, stream=stream)
    items, size = read_manifest(manifest, Path(root).name, classes)
    size = image_size or size
    print(f"{root}: reading {len(items)} images from their source files through {manifest}")
    return ImageSet(SourceImages([item.source for item in items], size),
                    torch.tensor([item.label for item in items], dtype=torch.int64), [item.name for item in items])


class SourceImages(LazyImages):
    """A LazyImages over source files of any size: rows are `square(source, size)`; `crops` cuts augmentation
    boxes from the sources themselves. The background pool decodes the sources (native size)."""

    def __init__(self, sources: list[Source], size: int, workers: int | None = None):
        super().__init__([s.path for s in sources], size, size, lambda path: None, workers)
        self.sources = sources

    def __repr__(self) -> str:
        return f"SourceImages({len(self)} source files at {self.shape[2]} x {self.shape[3]}, decoded on demand)"

    def _decode_row(self, row: int) -> np.ndarray:
        array = self.sources[row].read()
        with self._lock:
            self.decoded += 1
        return array

    def _take(self, rows: np.ndarray) -> torch.Tensor:
        size = self.shape[-1]
        arrays = [a if a.shape[:2] == (size, size) else square(a, size, self.sources[r].path)
                  for r, a in zip(rows, self._arrays(rows))]
        if not arrays:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def crops(self, rows: np.ndarray, boxes: np.ndarray, size: int) -> torch.Tensor:
        """float [0, 1] N x 3 x size x size: each row's box (fractions, as stages/data/augment.py draws them)
        cut from its source and resized once, bilinearly, with one sample per output pixel when enlarging and
        the average of ceil(box/size)^2 samples when shrinking (roi_align's adaptive grid: no aliasing)."""
        kernel = roi_align_kernel(differentiable=False)
        out = []
        for array, box in zip(self._arrays(np.asarray(rows, dtype=np.int64)), boxes):
            x = torch.tensor(array).permute(2, 0, 1).unsqueeze(0).float().div_(255)
            roi = torch.tensor([[0.0, *source_box(box, *array.shape[:2])]], dtype=torch.float32)
            out.append(kernel(x, roi, 1.0, size, size, 0, True))
        return torch.cat(out) if out else torch.empty((0, 3, size, size))


def source_box(box: np.ndarray, height: int, width: int) -> tuple[float, float, float, float]:
    """A plan's box (top, left, h, w as fractions of a square image) on a height x width source, as pixel
    (x0, y0, x1, y1). A square source takes the fractions as they are (the copy's crop, exactly). Otherwise
    the box keeps its area fraction, aspect ratio (now in pixels, as torchvision's RandomResizedCrop) and
    relative position: the draws behind the box are recovered and applied to the source's shape."""
    top, left, bh, bw = (float(v) for v in box)
    if height == width:
        return left * width, top * height, (left + bw) * width, (top + bh) * height
    area, ratio = bh * bw, bw / bh
    pw = min(np.sqrt(area * ratio * width * height), width)
    ph = min(np.sqrt(area / ratio * width * height), height)
    u_top = top / (1 - bh) if bh < 1 else 0.0
    u_left = left / (1 - bw) if bw < 1 else 0.0
    y0, x0 = u_top * (height - ph), u_left * (width - pw)
    return x0, y0, x0 + pw, y0 + ph
