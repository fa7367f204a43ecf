"""artifacts/<ds>/latents/: the VAE latent of every train image and its row index.

latents.safetensors holds `latents` (float32, N x C x h x w, already x the VAE's scaling_factor) and
`labels` (int64, N); index.csv holds row, path ("<class>/<file>" under the train folder), label.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stages.pipeline.paths import relative
from stages.pipeline.artifacts import read_text, verify_record, write_record
from stages.pipeline.errors import ArtifactError

TENSORS, INDEX = "latents.safetensors", "index.csv"


def write_latents(folder: Path, latents: torch.Tensor, labels: torch.Tensor, paths: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.float().contiguous(), "labels": labels.long().contiguous()}, folder / TENSORS)
    with open(folder / INDEX, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["row", "path", "label"])
        writer.writerows((i, path, int(label)) for i, (path, label) in enumerate(zip(paths, labels.tolist())))
    write_record(folder, [TENSORS, INDEX])  # checked on read: the folder may be pulled from a remote


def read_latents(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(latents, labels, paths), checked against each other."""
    folder = Path(folder)
    for name in (TENSORS, INDEX):
        if not (folder / name).exists():
            raise ArtifactError(f"{folder / name}: missing; run the latents stage first (dvc repro latents)")
    try:
        tensors = load_file(folder / TENSORS)
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{folder / TENSORS}: not a readable safetensors file ({e}); rerun the latents stage") \
            from None
    if set(tensors) != {"latents", "labels"}:
        raise ArtifactError(f"{folder / TENSORS}: expected tensors ['labels', 'latents'], found {sorted(tensors)}")
    rows = list(csv.reader(io.StringIO(read_text(folder / INDEX), newline="")))
    if not rows or rows[0] != ["row", "path", "label"]:
        raise ArtifactError(f"{folder / INDEX}: header {rows[:1]}, expected ['row', 'path', 'label']")
    rows = rows[1:]
    latents, labels = tensors["latents"], tensors["labels"]
    if latents.dtype != torch.float32 or labels.dtype != torch.int64 or latents.dim() != 4 or labels.dim() != 1:
        raise ArtifactError(f"{folder / TENSORS}: latents {latents.dtype} {tuple(latents.shape)}, labels "
                            f"{labels.dtype} {tuple(labels.shape)}; expected float32 N x C x h x w and int64 N")
    if not bool(latents.isfinite().all()):
        raise ArtifactError(f"{folder / TENSORS}: latents hold NaN or inf; rerun the latents stage")
    if len(rows) != len(latents) or len(labels) != len(latents):
        raise ArtifactError(f"{folder / INDEX}: {len(rows)} rows for {len(latents)} latents and {len(labels)} "
                            f"labels in {TENSORS}")
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        where = f"{folder / INDEX}:{i + 2}"
        if len(row) != 3:
            raise ArtifactError(f"{where}: {len(row)} fields, expected row, path, label")
        if row[0] != str(i) or row[2] != str(int(labels[i])):
            raise ArtifactError(f"{where}: row {row[0]!r}, label {row[2]!r}: expected row {i} and label "
                                f"{int(labels[i])} of {TENSORS}")
        relative(row[1], where)  # a train path: "<class>/<file>", nothing else
        if row[1] in seen:
            raise ArtifactError(f"{where}: path {row[1]!r} listed twice (first at line {seen[row[1]]})")
        seen[row[1]] = i + 2
    verify_record(folder, "the latents folder")  # last: a folder that parses but was changed since it was made
    return latents, labels, [row[1] for row in rows]
