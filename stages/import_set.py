"""import_set@<name>: a distilled set made elsewhere, brought into ddpipe's evaluation.

params.yaml names it (`external: {<name>: {path: ..., method: ...}}`); this stage reads the folder, maps its
classes onto classes.json by name, and writes it as a ddpipe set at artifacts/<ds>/ipc<N>/distilled/<name>
(RGB PNGs per class, card.json, SHA256SUMS), which relabel_external, evaluate_external and report then treat
like every other set: FKD soft labels, the shared student recipe, gain over random and the fairness columns.

The folder is either
  - an ImageFolder: one sub-folder per class, named as in classes.json (any order, any image format Pillow
    reads; files that are not images are refused), or
  - a Hub dataset folder as `stages.export_hub` writes it (or any folder `datasets.load_dataset` reads as
    Parquet with an image column and a ClassLabel `label`): classes come from the ClassLabel's names, and a
    `logits` or `probabilities` column becomes the set's shipped labels (the `static` protocol).
A class of classes.json the set lacks, or a class the dataset does not have, is refused by name.

    python -m stages.import_set mine --data data/digits --out artifacts/digits/ipc10/distilled/mine
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stages.data.distilled import load_set, write_labels
from stages.data.folder import decode_rgb, read_classes, save_png, to_rgb
from stages.pipeline import cli, params
from stages.pipeline.card import EVALUATION_NOTE, Card, read_card, write_card
from stages.pipeline.errors import DataError, ParamsError
from stages.pipeline.outputs import atomic_dir
from stages.pipeline.params import Params
from stages.pipeline import outputs

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
LABEL_COLUMNS = ("logits", "probabilities")
LABELS = "labels.safetensors"


def is_hub_folder(path: Path) -> bool:
    return any(path.glob("data/*.parquet")) or any(path.glob("*.parquet"))


def check_classes(found: list[str], classes: list[str], source: Path) -> None:
    missing = [c for c in classes if c not in found]
    unknown = [c for c in found if c not in classes]
    if missing:
        raise DataError(f"{source}: class {missing[0]!r} of classes.json is missing from the set"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unknown:
        raise DataError(f"{source}: class {unknown[0]!r} is not a class of this dataset (classes.json has "
                        f"{classes[:5]}{'...' if len(classes) > 5 else ''})")


def read_imagefolder(path: Path, classes: list[str]) -> list[tuple[int, str, np.ndarray]]:
    """(label in classes.json order, file stem, RGB pixels) for every image, class by class."""
    found = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    check_classes(found, classes, path)
    items = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (path / name).iterdir() if p.is_file() and not p.name.startswith("."))
        others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if others:
            raise DataError(f"{path / name}: {others[0]!r} is not an image file (suffixes {sorted(IMAGE_SUFFIXES)})")
        if not files:
            raise DataError(f"{path / name}: class folder is empty")
        items += [(label, p.stem, decode_rgb(p)) for p in files]
    return items


def read_hub_folder(path: Path, classes: list[str]) -> tuple[list[tuple[int, str, np.ndarray]], tuple | None]:
    """The rows of a `datasets` Parquet folder (train split); shipped labels as (kind, [N, C] in classes.json order)."""
    import datasets

    try:
        table = datasets.load_dataset(str(path), split="train")
    except Exception as e:  # datasets raises many kinds for a folder it cannot read
        raise DataError(f"{path}: not a dataset folder `datasets` reads ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:160]})") from None
    label = table.features.get("label")
    image = next((k for k, f in table.features.items() if isinstance(f, datasets.Image)), None)
    if not isinstance(label, datasets.ClassLabel) or image is None:
        raise DataError(f"{path}: needs an image column and a ClassLabel `label` column; has {dict(table.features)}")
    check_classes(label.names, classes, path)
    to_ours = [classes.index(n) for n in label.names]
    kind = next((k for k in LABEL_COLUMNS if k in table.column_names), None)
    table = table.cast_column(image, datasets.Image(decode=False))
    items, rows = [], []
    for i, row in enumerate(table):
        where = f"{path}: row {i}"
        try:
            with Image.open(io.BytesIO(row[image]["bytes"])) as img:
                pixels = to_rgb(img, Path(where))
        except (OSError, ValueError) as e:
            raise DataError(f"{where}: unreadable image ({e})") from None
        stem = Path(row.get("path") or row[image].get("path") or f"{i:05d}").stem
        items.append((to_ours[row["label"]], stem, pixels))
        rows.append(row[kind] if kind else None)
    labels = None
    if kind:
        values = torch.tensor(rows, dtype=torch.float32)
        if values.shape[1] != len(classes):
            raise DataError(f"{path}: column {kind!r} has {values.shape[1]} values per row, {len(classes)} classes")
        ours = torch.empty_like(values)
        ours[:, to_ours] = values  # columns follow the export's class order; ours follow classes.json
        labels = (kind, ours)
    return items, labels


def run(p: Params, name: str, data: Path, out: Path) -> Card:
    """The import_set stage: the folder params.yaml's `external.<name>` names, its classes mapped onto
    classes.json, written as a ddpipe set (PNGs in class order, shipped labels, card); returns its card."""
    if name not in p.external:
        raise ParamsError(f"params.yaml: external.{name}: no such entry (entries: {sorted(p.external)})")
    entry = p.external[name]
    source = Path(entry.path)
    outputs.claim(f"import_set@{name}", {"--out": (out, outputs.set_kind(entry.method or name))},
                  {"--data": data, f"external.{name}.path": source})
    if not source.is_dir():
        raise DataError(f"params.yaml: external.{name}.path = {entry.path!r}: no such folder")
    classes = read_classes(data)
    hub = is_hub_folder(source)
    items, labels = read_hub_folder(source, classes) if hub else (read_imagefolder(source, classes), None)
    order = sorted(range(len(items)), key=lambda i: items[i][0])  # class order of classes.json (stable)
    counts = np.bincount([items[i][0] for i in order], minlength=len(classes))
    if len(items) != p.ipc * len(classes):
        raise ParamsError(f"{source}: {len(items)} images for {len(classes)} classes ({counts.min()}-{counts.max()} "
                          f"per class), but ipc = {p.ipc}: evaluate it at its own budget (dvc exp run -S ipc="
                          f"{len(items) // len(classes)}) so the gain over random compares equal image counts")
    origin = read_origin(source)
    with atomic_dir(out) as tmp:
        paths = write_images(tmp, items, order, classes)
        if labels is not None:
            write_labels(tmp, LABELS, labels[1][torch.tensor(order)], paths, kind=labels[0])
        write_card(tmp, method=entry.method or name, dataset=p.dataset, ipc=p.ipc, classes=classes,
                   num_images=len(items), labels=LABELS if labels is not None else None,
                   teacher=(origin or {}).get("teacher"),
                   params={"external": {"name": name, "path": entry.path, "format": "hub" if hub else "imagefolder"},
                           "origin": origin},
                   synthesis={"imported": len(items), "per_class": counts.tolist()}, evaluation=EVALUATION_NOTE)
    card, images = load_set(out, data)  # the set as relabel and evaluate will open it
    kind = 'Hub folder' if hub else 'ImageFolder'
    print(f"import_set@{name}: {len(images)} images of {len(classes)} classes ({kind}"
          f"{', ' + labels[0] + ' shipped' if labels else ''}) as method {card.method!r} → {out}")
    return card


def read_origin(source: Path) -> dict | None:
    """What a ddpipe set or export says it is (its card's method, dataset, ipc, params, teacher); None without."""
    if not (source / "card.json").is_file():
        return None
    try:
        return read_card(source).model_dump(include={"method", "dataset", "ipc", "params", "teacher"})
    except Exception:
        return None


def write_images(tmp: Path, items: list[tuple[int, str, np.ndarray]], order: list[int],
                 classes: list[str]) -> list[str]:
    """The images as <class>/<k>_<stem>.png, k their place in class order; their relative paths in that order."""
    width = max(4, len(str(len(items) - 1)))
    paths = []
    for k, i in enumerate(order):
        label, stem, pixels = items[i]
        rel = f"{classes[label]}/{k:0{width}d}_{stem}.png"
        save_png(pixels, tmp / rel)
        paths.append(rel)
    return paths


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="the set's entry under `external` in params.yaml")
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    run(params.load(), args.name, args.data, args.out)


if __name__ == "__main__":
    cli.run(main)
