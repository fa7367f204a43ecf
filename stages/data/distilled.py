"""Distilled sets: an ImageFolder with its card.json, checked against the dataset it claims to distil."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from stages.data.folder import ImageSet, load_imagefolder, read_classes
from stages.pipeline.card import Card, read_card
from stages.pipeline.errors import DataError


def images_root(set_dir: Path, card: Card) -> Path:
    """The set's own folder, or (baseline@full) a folder under data/ named by the card."""
    if card.images_from is None:
        return set_dir
    ref = PurePosixPath(card.images_from)
    if ref.is_absolute() or ".." in ref.parts or ref.parts[:1] != ("data",):
        raise DataError(f"{set_dir / 'card.json'}: images_from = {card.images_from!r}: must be a folder "
                        "under the project's data/")
    return Path(*ref.parts)


def load_set(set_dir: str | Path, data_dir: str | Path) -> tuple[Card, ImageSet]:
    set_dir = Path(set_dir)
    card = read_card(set_dir)
    classes = read_classes(data_dir)
    if card.classes != classes:
        raise DataError(f"{set_dir / 'card.json'}: classes differ from {Path(data_dir) / 'classes.json'} "
                        "(another dataset or class order)")
    images = load_imagefolder(images_root(set_dir, card), classes, desc=f"load {set_dir.name}")
    if len(images) != card.num_images:
        raise DataError(f"{set_dir}: holds {len(images)} images, card.json says {card.num_images}")
    return card, images
