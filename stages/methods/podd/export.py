"""The poster as files: a PNG, the tensor, and its crops as an ImageFolder with their probability labels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from stages.data.distilled import write_labels
from stages.data.folder import save_png
from stages.methods.podd.geometry import crops

LABELS = "labels.safetensors"


def image_range(x: torch.Tensor, norm: tuple[list, list]) -> torch.Tensor:
    """Clamp normalised [C, H, W] values to what [0, 1] pixels normalise to, per channel."""
    mean, std = (torch.tensor(v, device=x.device).view(-1, 1, 1) for v in norm)
    return torch.maximum(torch.minimum(x, (1 - mean) / std), -mean / std)


def to_pixels(normalised: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    """[C, H, W] normalised → H x W x 3 uint8 (clipped to the displayable range)."""
    pixels = normalised * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def export(folder: Path, poster: torch.Tensor, label_param: torch.Tensor, labels: torch.Tensor, index,
           norm: tuple[list, list], classes: list[str], zca) -> None:
    """poster.png, poster.safetensors, the crops as an ImageFolder (each in its argmax class) + their labels."""
    Image.fromarray(to_pixels(poster, *norm)).save(folder / "poster.png")
    info = {"space": "normalised pixels: x * std + mean = [0, 1] pixels", "mean": norm[0], "std": norm[1],
            "labels": "label-grid cell weights [K, rows, cols]" if label_param.dim() == 3
            else "fixed per-crop labels [P, K]"}
    # one metadata key: safetensors writes a metadata map in no fixed order, a single key keeps the bytes stable
    save_file({"poster": poster.contiguous(), "labels": label_param.contiguous()}, folder / "poster.safetensors",
              metadata={"ddpipe": json.dumps(info, sort_keys=True)})
    paths = []
    for k, (patch, label) in enumerate(zip(crops(poster, index), labels)):
        paths.append(f"{classes[int(label.argmax())]}/{k:04d}.png")
        save_png(to_pixels(patch, *norm), folder / paths[-1])
    write_labels(folder, LABELS, labels, paths, kind="probabilities")
    if zca is not None:
        info = {"reg": zca.reg, "space": "normalised pixels; each image is centred and scaled to unit norm, "
                "then multiplied by `whiten`"}
        save_file({k: v.contiguous() for k, v in zca.tensors().items()}, folder / "zca.safetensors",
                  metadata={"ddpipe": json.dumps(info, sort_keys=True)})
