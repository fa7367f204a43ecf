"""Where `prepare` reads from: the embedded digits or photos, CIFAR-10/100 via torchvision, or any ImageFolder tree.

Each source gives the class names in their fixed order and, per split, a list of
(file stem, class index, loader) where the loader returns an RGB uint8 array at native size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from stages.data.files import decode_rgb
from stages.pipeline.artifacts import class_names, component
from stages.pipeline.errors import DataError, ParamsError
from stages.pipeline.paths import Root

Item = tuple[str, int, Callable[[], np.ndarray], str]  # (stem, label, load, origin for messages)


@dataclass
class Source:
    classes: list[str]
    splits: dict[str, list[Item]]
    ignored: list[str] = field(default_factory=list)  # files in the tree that are not images (notes.txt, ...)


def digits(val_fraction: float, seed: int) -> Source:
    """scikit-learn's bundled 8x8 digits (1797 images), gray 0..16 → RGB uint8, stratified split by seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    index = np.arange(len(pixels))
    try:
        train, val = train_test_split(index, test_size=val_fraction, stratify=bunch.target, random_state=seed)
    except ValueError as e:  # a fraction leaving a split smaller than the class count
        raise ParamsError(f"params.yaml: prepare.val_fraction = {val_fraction}: leaves a class with no train or "
                          f"val image ({e})") from None

    def items(indices):
        return [(f"{i:04d}", int(bunch.target[i]), lambda i=i: np.repeat(pixels[i][:, :, None], 3, axis=2),
                 f"digits[{i}]") for i in sorted(indices)]

    return Source([str(d) for d in range(10)], {"train": items(train), "val": items(val)})


# photos: (class name, the sample photograph in scikit-image's wheel it is cut from). Read from the installed
# package's data folder, never through skimage.data, whose fetcher may download what the wheel lacks.
PHOTOS = [("astronaut", "astronaut.png"), ("cat", "chelsea.png"), ("coffee", "coffee.png"),
          ("rocket", "rocket.jpg"), ("motorcycle", "motorcycle_left.png"), ("galaxies", "hubble_deep_field.jpg"),
          ("retina", "retina.jpg"), ("tissue", "ihc.png"), ("coins", "coins.png"), ("cameraman", "camera.png")]
PHOTO_CROP_SIDE = (0.1, 0.25)  # a crop's side as a fraction of its photo's shorter side (before prepare's resize)


def _photo(filename: str) -> np.ndarray:
    from importlib.resources import files

    try:
        path = files("skimage") / "data" / filename
    except ModuleNotFoundError:
        raise DataError("dataset photos: scikit-image is not installed (pip install scikit-image)") from None
    if not path.is_file():
        raise DataError(f"dataset photos: {filename} is not in the installed scikit-image's data folder "
                        f"({path.parent}); photos reads only the photographs its wheel ships")
    return decode_rgb(Path(str(path)))


def photos(crops: int, val_fraction: float, seed: int) -> Source:
    """Random square crops of ten sample photographs shipped inside scikit-image's wheel; a photo is a class.

    Train crops come from the left (1 - val_fraction) of each photo's width and val crops from the rest, so no
    val pixel was seen in training; `crops` per class in all, round(crops x val_fraction) of them val. The
    boxes depend on `seed` alone. A check that runs offline, not a benchmark (docs/photos.md)."""
    n_val = max(1, round(crops * val_fraction))
    splits: dict[str, list[Item]] = {"train": [], "val": []}
    for label, (name, filename) in enumerate(PHOTOS):
        image = _photo(filename)
        h, w = image.shape[:2]
        split_x = round(w * (1 - val_fraction))
        rng = np.random.default_rng([seed, label])
        for split, count, (x0, x1) in (("train", crops - n_val, (0, split_x)), ("val", n_val, (split_x, w))):
            for k in range(count):
                side = min(round(rng.uniform(*PHOTO_CROP_SIDE) * min(h, w)), x1 - x0, h)
                x, y = int(rng.integers(x0, x1 - side + 1)), int(rng.integers(0, h - side + 1))
                crop = (lambda x=x, y=y, s=side, a=image: np.ascontiguousarray(a[y:y + s, x:x + s]))
                splits[split].append((f"{k:04d}", label, crop, f"photos/{filename}[{y}:{y + side}, {x}:{x + side}]"))
    return Source([name for name, _ in PHOTOS], splits)


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


# What an ImageFolder counts as an image: torchvision's ImageFolder extensions (IMG_EXTENSIONS, copied: importing
# torchvision doubles prepare's start-up), in any case. Other files (notes.txt, Thumbs.db, a .csv) are ignored
# and listed in meta.json; hidden entries (.DS_Store, .ipynb_checkpoints) are skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class _Tree(Root):
    """A source tree read without leaving it (stages/pipeline/paths.py `Root`): image files and others."""

    def images(self, folder: Path) -> tuple[list[Path], list[Path]]:
        """(image files, other files) under folder, recursively and sorted."""
        files = self.files(folder)
        return ([p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS],
                [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS])


def _tiny_imagenet_val(val_dir: Path, tree: _Tree) -> dict[str, tuple[list[Path], list[Path]]] | None:
    """Tiny-ImageNet ships val/images/*.JPEG + val_annotations.txt; lay it out by class."""
    annotations = val_dir / "val_annotations.txt"
    if not annotations.exists():
        return None
    from stages.pipeline.paths import inside
    from stages.pipeline.artifacts import read_text

    by_class: dict[str, tuple[list[Path], list[Path]]] = {}
    seen: dict[str, int] = {}
    for number, line in enumerate(read_text(tree.check(annotations), DataError).splitlines(), 1):
        fields = line.split("\t")
        if len(fields) >= 2:
            where = f"{annotations}:{number}"
            name = component(fields[1], f"{where}: class")  # becomes a folder prepare writes into
            image = tree.check(inside(val_dir / "images", fields[0], f"{where}: image", DataError))
            if fields[0] in seen:
                raise DataError(f"{where}: image {fields[0]!r} listed twice (first at line {seen[fields[0]]})")
            seen[fields[0]] = number
            by_class.setdefault(name, ([], []))[0].append(image)
    return by_class


def _class_files(split_dir: Path, tree: _Tree) -> dict[str, tuple[list[Path], list[Path]]]:
    """class name → (image files, other files)."""
    layout = _tiny_imagenet_val(split_dir, tree)
    if layout is not None:
        return layout
    return {component(d.name, str(d)): tree.images(d) for d in sorted(split_dir.iterdir())
            if d.is_dir() and not d.name.startswith(".")}


def imagefolder(root: str, keep: list[str] | None) -> Source:
    """Any root/{train,val}/<class>/... tree (ImageNette, ImageNet-1K, Tiny-ImageNet as shipped)."""
    root_path = Path(root)
    tree = _Tree(root_path)
    files = {}
    for split in ("train", "val"):
        split_dir = root_path / split
        if not split_dir.is_dir():
            raise DataError(f"prepare.root = {root!r}: no {split}/ folder in it")
        files[split] = _class_files(tree.check(split_dir), tree)
    if keep is None:
        only_train = sorted(set(files["train"]) - set(files["val"]))
        only_val = sorted(set(files["val"]) - set(files["train"]))
        if only_train or only_val:
            raise DataError(f"{root}: train and val class sets differ: only in train {only_train}, "
                            f"only in val {only_val}")
        classes = sorted(files["train"])
    else:
        classes = class_names(list(keep), "params.yaml: prepare.classes", ParamsError)
        for split in ("train", "val"):
            missing = [c for c in classes if c not in files[split]]
            if missing:
                raise DataError(f"prepare.classes: {missing} not found in {root_path / split}")
    if not classes:
        raise DataError(f"{root_path / 'train'}: no class folders")
    splits, ignored = {}, []
    for split in ("train", "val"):
        items, seen = [], {}
        for label, name in enumerate(classes):
            images, others = files[split][name]
            ignored += [str(path) for path in others]
            if not images:
                what = (f"no image files ({' '.join(IMAGE_EXTENSIONS)}), only {[p.name for p in others]}" if others
                        else "class folder is empty")
                raise DataError(f"{root_path / split / name}: {what}")
            for path in images:
                stem = component(path.stem, str(path))  # becomes <class>/<stem>.png
                if (name, stem) in seen:
                    raise DataError(f"{path}: same name as {seen[name, stem]} once written as PNG")
                seen[name, stem] = path
                items.append((stem, label, lambda p=path: decode_rgb(p), str(path)))
        splits[split] = items
    return Source(classes, splits, ignored)
