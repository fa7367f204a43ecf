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

import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from stages.data.distilled import load_set, write_labels
from stages.data.files import decode_rgb, decode_rgb_bytes, read_classes, save_png
from stages.pipeline import cli, params
from stages.pipeline.card import EVALUATION_NOTE, Card, read_card, write_card
from stages.pipeline.artifacts import class_names, parse_json, read_text
from stages.pipeline.errors import DataError, ParamsError
from stages.pipeline.paths import Root, file_name, relative
from stages.pipeline.outputs import atomic_dir
from stages.pipeline.params import Params
from stages.pipeline import outputs

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
LABEL_COLUMNS = ("logits", "probabilities")
LABELS = "labels.safetensors"
SPLIT_WORDS = re.compile(r"(^|[-_. ])(train|training|test|testing|eval|evaluation|val|valid|validation|dev)"
                         r"([-_. 0-9]|$)", re.IGNORECASE)
TRAIN_WORDS = re.compile(r"(^|[-_. ])(train|training)([-_. 0-9]|$)", re.IGNORECASE)

Item = tuple[int, str, np.ndarray, str]  # (label in classes.json order, file stem, RGB pixels, where it was read)


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


def read_imagefolder(path: Path, classes: list[str]) -> list[Item]:
    """(label in classes.json order, file stem, RGB pixels, path) for every image, class by class. Nothing is read
    from outside `path`: a class folder or image that is a symlink leading out of it is refused."""
    root = Root(path, DataError, "the set folder")
    found = sorted(p.name for p in root.entries(path) if p.is_dir())
    check_classes(found, classes, path)
    items = []
    for label, name in enumerate(classes):
        files = [p for p in root.entries(path / name) if p.is_file()]
        others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if others:
            raise DataError(f"{path / name}: {others[0]!r} is not an image file (suffixes {sorted(IMAGE_SUFFIXES)})")
        if not files:
            raise DataError(f"{path / name}: class folder is empty")
        items += [(label, p.stem, decode_rgb(p), str(p)) for p in files]
    return items


# --- Hub dataset folders: read as they are now, from inside the folder, never through a cache ----------------

def front_matter(readme: Path) -> dict:
    """The YAML block at the top of a dataset card (README.md), or {} when it has none."""
    text = read_text(readme, DataError)
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        raise DataError(f"{readme}: the YAML block at its top is not closed by a '---' line")
    meta = params.load_yaml(text[3:end], str(readme), DataError)
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise DataError(f"{readme}: the YAML block at its top is a {type(meta).__name__}, expected a mapping")
    return meta


def train_patterns(configs, readme: Path) -> list[str]:
    """The default config's train data_files (what `datasets.load_dataset(folder, split="train")` reads)."""
    where = f"{readme}: configs"
    if not isinstance(configs, list) or not configs or not all(isinstance(c, dict) for c in configs):
        raise DataError(f"{where}: expected a list of configs (config_name, data_files)")
    config = next((c for c in configs if c.get("default") is True), None) or \
        next((c for c in configs if c.get("config_name") == "default"), configs[0])
    where = f"{where}: {config.get('config_name', 'default')}: data_files"
    files = config.get("data_files")
    if isinstance(files, dict):  # {split: pattern(s)}
        files = [{"split": k, "path": v} for k, v in files.items()]
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not files:
        raise DataError(f"{where}: expected a pattern, a list of patterns or of {{split, path}}")
    if all(isinstance(f, str) for f in files):
        return files
    patterns = []
    for entry in files:
        if not isinstance(entry, dict) or not isinstance(entry.get("split"), str):
            raise DataError(f"{where}: {entry!r} is not a {{split, path}} entry")
        if entry["split"] == "train":
            path = entry.get("path")
            path = [path] if isinstance(path, str) else path
            if not isinstance(path, list) or not path or not all(isinstance(p, str) for p in path):
                raise DataError(f"{where}: train path {entry.get('path')!r} is not a pattern or a list of them")
            patterns += path
    if not patterns:
        raise DataError(f"{where}: no train split (splits {[e.get('split') for e in files]})")
    return patterns


def hub_files(path: Path, root: Root) -> list[Path]:
    """The Parquet files of the folder's train split: the README's default config names them (patterns that
    must stay inside the folder), else data/*.parquet (or *.parquet) with `train` in their name, or all of
    them when no file names a split."""
    readme = path / "README.md"
    configs = front_matter(root.check(readme)).get("configs") if readme.is_file() else None
    if configs is not None:
        found = set()
        for pattern in train_patterns(configs, readme):
            where = f"{readme}: configs: data_files {pattern!r}"
            relative(pattern, where, DataError)
            matched = [root.check(p) for p in path.glob(pattern) if p.is_file()]
            if not matched:
                raise DataError(f"{where}: matches no file in {path}")
            found.update(matched)
        return sorted(found)
    files = [root.check(p) for p in sorted(path.glob("data/*.parquet")) or sorted(path.glob("*.parquet"))]
    named = [p for p in files if SPLIT_WORDS.search(p.stem)]
    if not named:
        return files
    train = [p for p in named if TRAIN_WORDS.search(p.stem)]
    if not train:
        raise DataError(f"{path}: no train split among {[p.name for p in files]}")
    return train


def hub_features(files: list[Path]) -> dict:
    """The `datasets` features every file records in its Parquet metadata (the same in each file)."""
    features = None
    for file in files:
        try:
            metadata = pq.read_schema(file).metadata or {}
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{file}: not a readable Parquet file ({' '.join(str(e).split())[:160]})") from None
        raw = metadata.get(b"huggingface")
        if raw is None:
            raise DataError(f"{file}: no `datasets` features in its Parquet metadata (the image column and the "
                            "ClassLabel `label` with its names); export it with `datasets` or stages.export_hub")
        info = parse_json(raw.decode("utf-8", "replace"), f"{file}: Parquet metadata 'huggingface'", DataError)
        found = info.get("info", {}).get("features") if isinstance(info, dict) and \
            isinstance(info.get("info"), dict) else None
        if not isinstance(found, dict):
            raise DataError(f"{file}: Parquet metadata 'huggingface' has no info.features mapping")
        if features is not None and found != features:
            raise DataError(f"{file}: its features differ from {files[0]}'s")
        columns = pq.read_schema(file).names
        if sorted(columns) != sorted(found):
            raise DataError(f"{file}: columns {sorted(columns)} are not the features its metadata describes "
                            f"({sorted(found)})")
        features = found
    return features


def class_label(features: dict, source: Path) -> list[str]:
    label = features.get("label")
    names = label.get("names") if isinstance(label, dict) and label.get("_type") == "ClassLabel" else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{source}: needs a ClassLabel `label` column with its names; has {label!r}")
    class_names(names, f"{source}: ClassLabel names", DataError)
    return names


def decode_row(data, where: str) -> np.ndarray:
    if not isinstance(data, dict) or not isinstance(data.get("bytes"), bytes):
        ref = data.get("path") if isinstance(data, dict) else None
        raise DataError(f"{where}: image has no embedded bytes" + (f" (a reference to {ref!r}: only images held in "
                                                                  "the folder's files are read)" if ref else ""))
    return decode_rgb_bytes(data["bytes"], where)


def read_hub_folder(path: Path, classes: list[str]) -> tuple[list[Item], tuple | None]:
    """The rows of a `datasets` Parquet folder (train split), read from its files as they are now; shipped
    labels as (kind, [N, C] in classes.json order). Every label, image and label row is checked here."""
    root = Root(path, DataError, "the Hub folder")
    files = hub_files(path, root)
    if not files:
        raise DataError(f"{path}: no Parquet files")
    features = hub_features(files)
    names = class_label(features, files[0])
    check_classes(names, classes, files[0])
    to_ours = [classes.index(n) for n in names]
    image = next((k for k, f in features.items() if isinstance(f, dict) and f.get("_type") == "Image"), None)
    if image is None:
        raise DataError(f"{files[0]}: needs an Image column; features {sorted(features)}")
    kind = next((k for k in LABEL_COLUMNS if k in features), None)
    columns = [image, "label", *(["path"] if "path" in features else []), *([kind] if kind else [])]
    items, rows = [], []
    for file in files:
        try:
            table = pq.read_table(file, columns=columns)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{file}: not a readable Parquet file with columns {columns} "
                            f"({' '.join(str(e).split())[:160]})") from None
        for i, row in enumerate(table.to_pylist()):
            where = f"{file}: row {i}"
            label = row["label"]
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(names):
                raise DataError(f"{where}: label {label!r} is not a class index (0..{len(names) - 1} for the "
                                f"{len(names)} ClassLabel names)")
            name = row.get("path") or (row[image] or {}).get("path") or f"{len(items):05d}"
            stem = Path(name).stem if isinstance(name, str) else f"{len(items):05d}"
            items.append((to_ours[label], stem, decode_row(row[image], where), where))
            if kind:
                rows.append(label_row(row[kind], kind, len(classes), where))
    labels = None
    if kind:
        values = torch.tensor(np.array(rows, dtype=np.float32))
        ours = torch.empty_like(values)
        ours[:, to_ours] = values  # columns follow the export's class order; ours follow classes.json
        labels = (kind, ours)
    return items, labels


def label_row(values, kind: str, n: int, where: str) -> list[float]:
    """One row of shipped logits or probabilities: n finite numbers (probabilities: non-negative, sum 1)."""
    if not isinstance(values, list) or len(values) != n:
        got = f"{len(values)} values" if isinstance(values, list) else repr(values)
        raise DataError(f"{where}: column {kind!r} has {got}, expected one per class ({n})")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise DataError(f"{where}: column {kind!r} holds a value that is not a finite number")
    if kind == "probabilities" and (min(values) < 0 or abs(sum(values) - 1) > 1e-3):
        raise DataError(f"{where}: column 'probabilities' is not a distribution (min {min(values):.3g}, sum "
                        f"{sum(values):.4g})")
    return values


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
    shapes = {items[i][2].shape for i in order}
    if len(shapes) > 1:  # a set's images share one size: a stage reading it would refuse it after the import
        first = items[order[0]]
        odd = next(item for item in items if item[2].shape != first[2].shape)
        raise DataError(f"{odd[3]}: is {odd[2].shape[1]}x{odd[2].shape[0]}, other images of the set are "
                        f"{first[2].shape[1]}x{first[2].shape[0]} ({first[3]}); a set's images share one size")
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


def write_images(tmp: Path, items: list[Item], order: list[int],
                 classes: list[str]) -> list[str]:
    """The images as <class>/<k>_<stem>.png, k their place in class order; their relative paths in that order."""
    width = max(4, len(str(len(items) - 1)))
    paths = []
    for k, i in enumerate(order):
        label, stem, pixels, _ = items[i]
        rel = f"{classes[label]}/{file_name(f'{k:0{width}d}_', stem, '.png')}"
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
