"""Where `prepare` reads from: the embedded digits, CIFAR-10/100 via torchvision, or any ImageFolder tree.

Each source gives the class names in their fixed order and, per split, a list of
(file stem, class index, loader) where the loader returns an RGB uint8 array at native size.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from stages.data.folder import decode_rgb
from stages.pipeline.errors import DataError

Item = tuple[str, int, Callable[[], np.ndarray], str]  # (stem, label, load, origin for messages)


@dataclass
class Source:
    classes: list[str]
    splits: dict[str, list[Item]]


def digits(val_fraction: float, seed: int) -> Source:
    """scikit-learn's bundled 8x8 digits (1797 images), gray 0..16 → RGB uint8, stratified split by seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    index = np.arange(len(pixels))
    train, val = train_test_split(index, test_size=val_fraction, stratify=bunch.target, random_state=seed)

    def items(indices):
        return [(f"{i:04d}", int(bunch.target[i]), lambda i=i: np.repeat(pixels[i][:, :, None], 3, axis=2),
                 f"digits[{i}]") for i in sorted(indices)]

    return Source([str(d) for d in range(10)], {"train": items(train), "val": items(val)})


def cifar(name: str, root: str, download: bool) -> Source:
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    splits = {}
    for split in ("train", "val"):
        try:
            ds = cls(root, train=split == "train", download=download)
        except RuntimeError as e:
            hint = "" if download else " (set prepare.download: true to let torchvision fetch it)"
            raise DataError(f"prepare.root = {root!r}: no {name} there: {e}{hint}") from None
        splits[split] = [(f"{i:05d}", int(t), lambda a=a: a, f"{name}/{split}[{i}]")
                         for i, (a, t) in enumerate(zip(ds.data, ds.targets))]
    return Source(list(ds.classes), splits)


def _tiny_imagenet_val(val_dir: Path) -> dict[str, list[Path]] | None:
    """Tiny-ImageNet ships val/images/*.JPEG + val_annotations.txt; lay it out by class."""
    annotations = val_dir / "val_annotations.txt"
    if not annotations.exists():
        return None
    by_class: dict[str, list[Path]] = {}
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            by_class.setdefault(fields[1], []).append(val_dir / "images" / fields[0])
    return by_class


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    layout = _tiny_imagenet_val(split_dir)
    if layout is not None:
        return layout
    return {d.name: sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
            for d in sorted(split_dir.iterdir()) if d.is_dir()}


def imagefolder(root: str, keep: list[str] | None) -> Source:
    """Any root/{train,val}/<class>/... tree (ImageNette, ImageNet-1K, Tiny-ImageNet as shipped)."""
    root_path = Path(root)
    files = {}
    for split in ("train", "val"):
        split_dir = root_path / split
        if not split_dir.is_dir():
            raise DataError(f"prepare.root = {root!r}: no {split}/ folder in it")
        files[split] = _class_files(split_dir)
    if keep is None:
        only_train = sorted(set(files["train"]) - set(files["val"]))
        only_val = sorted(set(files["val"]) - set(files["train"]))
        if only_train or only_val:
            raise DataError(f"{root}: train and val class sets differ: only in train {only_train}, "
                            f"only in val {only_val}")
        classes = sorted(files["train"])
    else:
        classes = list(keep)
        for split in ("train", "val"):
            missing = [c for c in classes if c not in files[split]]
            if missing:
                raise DataError(f"prepare.classes: {missing} not found in {root_path / split}")
    if not classes:
        raise DataError(f"{root_path / 'train'}: no class folders")
    splits = {}
    for split in ("train", "val"):
        items, seen = [], {}
        for label, name in enumerate(classes):
            if not files[split][name]:
                raise DataError(f"{root_path / split / name}: class folder is empty")
            for path in files[split][name]:
                stem = path.stem
                if (name, stem) in seen:
                    raise DataError(f"{path}: same name as {seen[name, stem]} once written as PNG")
                seen[name, stem] = path
                items.append((stem, label, lambda p=path: decode_rgb(p), str(path)))
        splits[split] = items
    return Source(classes, splits)
