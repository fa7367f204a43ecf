"""A recover run's finished batches, kept across interruptions, and how their pixels become PNG files.

DVC deletes a stage's output before running it, so each finished batch (its uint8 pixels, labels, IPC
indices, and whatever else must outlive it, e.g. INFER's compensator) goes to the resume folder beside the
output (stages/pipeline/resume.py), keyed by the params and inputs that decide the images. A rerun writes
the saved batches' PNGs again (the same bytes: PNG of the same uint8 pixels) and recovers only the rest.

Under torchrun rank 0 keys the folder first (clearing one made under other settings), then every rank saves
the batches it owns: ranks own disjoint batches, so no file has two writers, and a rerun with another
world size finds every batch wherever it was made (the folder is shared like the output's temp folder).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages.data.folder import save_png
from stages.pipeline.distributed import World
from stages.pipeline.resume import Resume


def to_uint8(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Normalised N x 3 x H x W → uint8 N x H x W x 3 (de-normalise, clamp, round)."""
    pixels = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def save_pixels(folder: Path, classes: list[str], labels: torch.Tensor, indices: torch.Tensor,
                pixels: torch.Tensor) -> None:
    """<class>/<k>.png for every (label, IPC index k, uint8 H x W x 3 image)."""
    for label, k, array in zip(labels.tolist(), indices.tolist(), pixels.numpy()):
        save_png(np.ascontiguousarray(array), folder / classes[label] / f"{k:03d}.png")


class FinishedBatches:
    def __init__(self, world: World, out: str | Path, settings: dict, inputs: list[Path]):
        self.resume = Resume.shared(world, out, settings, inputs)

    def load(self, names: list[str], what: str) -> dict[str, dict]:
        """The saved ones among `names` (this rank's batches), by name; says how many were resumed."""
        saved = {name: state for name in names if (state := self.resume.load(name)) is not None}
        if saved:
            print(f"{what}: resumed {len(saved)} of {len(names)} batches from {self.resume.folder}")
        return saved

    def keep(self, name: str, state: dict) -> dict:
        """Save one finished batch (tensors, numbers) before its images are written; returns it."""
        self.resume.save(name, state)
        return state

    def clear(self) -> None:
        """After the output and its stats were written (rank 0; every rank has finished by then)."""
        self.resume.clear()
