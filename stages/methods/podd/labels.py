"""PoDDL: learnable labels on a low-resolution label grid (docs/methods/podd.md#labels).

The label grid holds fewer label vectors than a comp_ipc soft-label baseline stores (K * comp_ipc),
with one fix: never fewer cells per axis than the class grid has, so every class owns a block of
cells at initialisation (the reference leaves 10-20 % of classes with no label mass at all).
Cells are non-negative weights (clamped after each outer step, as in the reference); a crop's label
is the sum of its label crop's cells, normalised, with a floor so an all-zero cell cannot give NaN.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from stages.methods.podd.geometry import Geometry, placements


def label_grid(geometry: Geometry, comp_ipc: int) -> tuple[int, int]:
    """(rows, columns) of the label grid: the largest floor/ceil rounding of the poster scaled to
    K * comp_ipc cells whose product stays below that budget, each axis at least the class grid's."""
    budget = geometry.classes * comp_ipc
    scale = math.sqrt(budget / geometry.pixels)
    nx, ny = geometry.class_grid
    rows = {max(ny, f(geometry.height * scale)) for f in (math.floor, math.ceil)}
    cols = {max(nx, f(geometry.width * scale)) for f in (math.floor, math.ceil)}
    candidates = sorted((r * c, r, c) for r in rows for c in cols)
    below = [cand for cand in candidates if cand[0] < budget]
    _, r, c = below[-1] if below else candidates[0]
    return r, c


def initial_cells(geometry: Geometry, order: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """[K, rows, cols] one-hot weights: the class grid's block (j, i) of cells all say class order[j, i]."""
    rows, cols = grid
    nx, ny = geometry.class_grid
    ys = np.round(np.linspace(0, rows, ny + 1)).astype(int)
    xs = np.round(np.linspace(0, cols, nx + 1)).astype(int)
    cells = torch.zeros(geometry.classes, rows, cols)
    for j in range(ny):
        for i in range(nx):
            cells[order[j, i], ys[j]:ys[j + 1], xs[i]:xs[i + 1]] = 1
    return cells


def crop_reader(geometry: Geometry, grid: tuple[int, int]) -> torch.Tensor:
    """[P, rows * cols] 0/1 matrix: which cells each crop's label crop covers (same x-major order)."""
    rows, cols = grid
    h, w = geometry.image
    size_y = max(1, math.floor(h * rows / geometry.height))
    size_x = max(1, math.floor(w * cols / geometry.width))
    px, py = geometry.patch_grid
    reader = torch.zeros(px * py, rows, cols)
    k = 0
    for x in placements(cols, size_x, px):
        for y in placements(rows, size_y, py):
            reader[k, y:y + size_y, x:x + size_x] = 1
            k += 1
    return reader.flatten(1)


def crop_labels(cells: torch.Tensor, reader: torch.Tensor) -> torch.Tensor:
    """[P, K] probability labels from the cell weights (differentiable in `cells`)."""
    summed = reader @ cells.flatten(1).T
    return summed / summed.sum(1, keepdim=True).clamp_min(1e-8)
