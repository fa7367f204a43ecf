"""artifacts/<ds>/latents/: the VAE latent of every train image and its row index.

latents.safetensors holds `latents` (float32, N x C x h x w, already x the VAE's scaling_factor) and
`labels` (int64, N); index.csv holds row, path ("<class>/<file>" under the train folder), label.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stages.pipeline.paths import relative
from stages.pipeline.errors import ArtifactError

TENSORS, INDEX = "latents.safetensors", "index.csv"


def write_latents(folder: Path, latents: torch.Tensor, labels: torch.Tensor, paths: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.float().contiguous(), "labels": labels.long().contiguous()}, folder / TENSORS)
    with open(folder / INDEX, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["row", "path", "label"])
        writer.writerows((i, path, int(label)) for i, (path, label) in enumerate(zip(paths, labels.tolist())))


def read_latents(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(latents, labels, paths), checked against each other."""
    folder = Path(folder)
    for name in (TENSORS, INDEX):
        if not (folder / name).exists():
            raise ArtifactError(f"{folder / name}: missing; run the latents stage first (dvc repro latents)")
    try:
        tensors = load_file(folder / TENSORS)
    except SafetensorError as e:
        raise ArtifactError(f"{folder / TENSORS}: not a readable safetensors file ({e}); rerun the latents stage") \
            from None
    if set(tensors) != {"latents", "labels"}:
        raise ArtifactError(f"{folder / TENSORS}: expected tensors ['labels', 'latents'], found {sorted(tensors)}")
    with open(folder / INDEX, newline="") as f:
        rows = list(csv.DictReader(f))
    latents, labels = tensors["latents"], tensors["labels"]
    if len(rows) != len(latents) or len(labels) != len(latents):
        raise ArtifactError(f"{folder}: {len(latents)} latents, {len(labels)} labels, {len(rows)} index rows")
    for i, row in enumerate(rows):
        if int(row["row"]) != i or int(row["label"]) != int(labels[i]):
            raise ArtifactError(f"{folder / INDEX}:{i + 2}: row {i} does not match {TENSORS} (label {row['label']})")
        relative(row["path"], f"{folder / INDEX}:{i + 2}")  # a train path: "<class>/<file>", nothing else
    return latents, labels, [row["path"] for row in rows]
