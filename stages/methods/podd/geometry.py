"""Poster geometry (docs/methods/podd.md#geometry): sizes, the one placement rule, crops and their fixed labels.

Every tile along an axis (class areas, crops, label crops) starts at round(linspace(0, L - l, n)),
NumPy's round-half-to-even, so tiles touch both borders. Box lists are x-major: box k sits at
x-index k // n_y and y-index k % n_y, as in the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def placements(length: int, tile: int, count: int) -> np.ndarray:
    """Start offsets of `count` tiles of side `tile` spread edge to edge over `length`."""
    if tile > length:
        raise ValueError(f"a tile of {tile} px does not fit in {length} px")
    return np.round(np.linspace(0, length - tile, count)).astype(np.int64)


def poster_size(ipc: float, grid: tuple[int, int], image: tuple[int, int]) -> tuple[int, int]:
    """(width, height) for a pixel budget of ipc images per class: each class-grid cell scaled by √ipc."""
    (nx, ny), (h, w) = grid, image
    scale = math.sqrt(ipc)
    return round(nx * w * scale), round(ny * h * scale)


def effective_ipc(width: int, height: int, classes: int, image: tuple[int, int]) -> float:
    """Pixels of the poster over the pixels of one image per class (channels cancel)."""
    return width * height / (classes * image[0] * image[1])


def auto_class_grid(classes: int) -> tuple[int, int]:
    """(columns, rows): rows = the largest divisor of the class count up to its square root (10 → 5x2)."""
    rows = max(d for d in range(1, math.isqrt(classes) + 1) if classes % d == 0)
    return classes // rows, rows


@dataclass(frozen=True)
class Geometry:
    width: int
    height: int
    image: tuple[int, int]  # (h, w) of the dataset's images = crop size = class-area size
    class_grid: tuple[int, int]  # (columns, rows); columns x rows = classes
    patch_grid: tuple[int, int]  # crops along (x, y)

    def __post_init__(self):
        h, w = self.image
        if self.width < w or self.height < h:
            raise ValueError(f"poster {self.width}x{self.height} is smaller than one {w}x{h} image")
        if min(*self.class_grid, *self.patch_grid) < 1:
            raise ValueError(f"class grid {self.class_grid} and patch grid {self.patch_grid} need >= 1 per axis")

    @property
    def classes(self) -> int:
        return self.class_grid[0] * self.class_grid[1]

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def ipc(self) -> float:
        return effective_ipc(self.width, self.height, self.classes, self.image)

    def _boxes(self, grid: tuple[int, int]) -> np.ndarray:
        """[n_x * n_y, 2] (x, y) starts of image-sized tiles, x-major."""
        h, w = self.image
        xs, ys = placements(self.width, w, grid[0]), placements(self.height, h, grid[1])
        return np.array([(x, y) for x in xs for y in ys], dtype=np.int64)

    def crop_starts(self) -> np.ndarray:
        return self._boxes(self.patch_grid)

    def class_area_starts(self) -> np.ndarray:
        return self._boxes(self.class_grid)

    def to_json(self) -> dict:
        return {"width": self.width, "height": self.height, "image": list(self.image),
                "class_grid": list(self.class_grid), "patch_grid": list(self.patch_grid),
                "pixels": self.pixels, "effective_ipc": round(self.ipc, 6), "crops": len(self.crop_starts()),
                "crop_starts_xy": self.crop_starts().tolist(),
                "class_area_starts_xy": self.class_area_starts().tolist()}


def crop_index(geometry: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices [P, h, 1], [P, 1, w]: poster[:, rows, cols] is every crop at once."""
    h, w = geometry.image
    starts = torch.from_numpy(geometry.crop_starts())
    rows = starts[:, 1, None] + torch.arange(h)
    cols = starts[:, 0, None] + torch.arange(w)
    return rows[:, :, None], cols[:, None, :]


def crops(poster: torch.Tensor, index: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """[C, H, W] poster → [P, C, h, w] crops (a gather, so gradients flow back to the poster)."""
    rows, cols = index
    return poster[:, rows, cols].transpose(0, 1)


def class_map(geometry: Geometry, order: np.ndarray) -> np.ndarray:
    """[K, H, W] count of class areas covering each pixel; grid cell (row j, column i) holds order[j, i]."""
    h, w = geometry.image
    counts = np.zeros((geometry.classes, geometry.height, geometry.width), np.int64)
    ny = geometry.class_grid[1]
    for k, (x, y) in enumerate(geometry.class_area_starts()):
        counts[order[k % ny, k // ny], y:y + h, x:x + w] += 1
    return counts


def fixed_labels(geometry: Geometry, order: np.ndarray) -> torch.Tensor:
    """[P, K] per-crop labels: the class covering most of the crop's pixels, ties split evenly.

    The reference takes a softmax of raw pixel counts, which (counts differ by tens of pixels) is this
    one-hot majority except in exact ties.
    """
    h, w = geometry.image
    counts = class_map(geometry, order)
    per_crop = np.stack([counts[:, y:y + h, x:x + w].sum((1, 2)) for x, y in geometry.crop_starts()])
    winners = per_crop == per_crop.max(1, keepdims=True)
    return torch.from_numpy(winners / winners.sum(1, keepdims=True)).float()


def _ramps(starts: np.ndarray, tile: int, length: int) -> np.ndarray:
    """[n, length] 1-D weights: 1 on a tile, falling linearly (endpoints included) across each overlap
    with its neighbour, 0 elsewhere."""
    weights = np.zeros((len(starts), length))
    for i, s in enumerate(starts):
        weights[i, s:s + tile] = 1
    for i, s in enumerate(starts[:-1]):
        if (overlap := s + tile - starts[i + 1]) > 0:
            fall = np.linspace(1, 0, overlap)
            weights[i, starts[i + 1]:s + tile] = fall
            weights[i + 1, starts[i + 1]:s + tile] = 1 - fall
    return weights


def initial_poster(geometry: Geometry, channels: int, generator: torch.Generator) -> torch.Tensor:
    """[C, H, W]: one Gaussian tile per class area, each scaled to unit L2 norm, cross-faded where areas
    overlap (docs/methods/podd.md#geometry; tiles are noise, so which class a tile is drawn for does not matter)."""
    h, w = geometry.image
    nx, ny = geometry.class_grid
    wx = torch.from_numpy(_ramps(placements(geometry.width, w, nx), w, geometry.width)).float()
    wy = torch.from_numpy(_ramps(placements(geometry.height, h, ny), h, geometry.height)).float()
    poster = torch.zeros(channels, geometry.height, geometry.width)
    for i, (x, y) in enumerate(geometry.class_area_starts()):
        tile = torch.randn(channels, h, w, generator=generator)
        tile /= tile.norm()
        weight = wy[i % ny, y:y + h, None] * wx[i // ny, None, x:x + w]
        poster[:, y:y + h, x:x + w] += weight * tile
    return poster
