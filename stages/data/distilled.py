"""Distilled sets: an ImageFolder with its card.json, checked against the dataset it claims to distil."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from stages.data.folder import ImageSet, read_classes
from stages.data.prepared import open_images
from stages.data.splits import images_root
from stages.pipeline.paths import inside
from stages.pipeline.artifacts import label_paths
from stages.pipeline.card import Card, read_card, verify_content
from stages.pipeline.errors import ArtifactError


def open_set(set_dir: str | Path, data_dir: str | Path) -> Card:
    """The set's card, after checking its files against SHA256SUMS and its class order against the dataset's."""
    set_dir = Path(set_dir)
    card = read_card(set_dir)
    verify_content(set_dir, card)
    classes = read_classes(data_dir)
    if card.classes != classes:
        raise ArtifactError(f"{set_dir / 'card.json'}: classes differ from {Path(data_dir) / 'classes.json'} "
                        "(another dataset or class order)")
    return card


def load_set(set_dir: str | Path, data_dir: str | Path, draw: int = 0) -> tuple[Card, ImageSet]:
    """The set's card and images; for a set of draws, those of draw `draw` (modulo their number)."""
    set_dir = Path(set_dir)
    card = open_set(set_dir, data_dir)
    return card, set_images(set_dir, card, draw)


def set_images(set_dir: Path, card: Card, draw: int = 0) -> ImageSet:
    """The images of a checked set where its card says they are, counted against the card."""
    root = images_root(set_dir, card, draw)
    if card.images_from is None:  # its own folders (or draws) must be laid out as the card says
        absent = next((c for c in card.classes if not (root / c).is_dir()), None)
        if absent is not None:
            raise ArtifactError(f"{set_dir / 'card.json'}: no class folder {root / absent}: the set's folders do "
                                f"not match its card (draws = {card.draws})")
    images = open_images(root, card.classes, desc=f"load {set_dir.name}")
    check_counts(set_dir, card, images)
    return images


def check_counts(set_dir: Path, card: Card, images: ImageSet) -> None:
    """The card's num_images against the images found, and an integer ipc a budget a set of plain images does
    not exceed. Sets that ship labels are exempt: INFER stores its bases and their compensated copies, more
    images than ipc x classes within its budget rule, and PoDD's crops are counted by its poster's pixels."""
    if len(images) != card.num_images:
        raise ArtifactError(f"{set_dir}: holds {len(images)} images, card.json says {card.num_images}")
    if card.ipc is not None and card.ipc * len(card.classes) > card.num_images:  # fewer images than it claims
        raise ArtifactError(f"{set_dir / 'card.json'}: ipc = {card.ipc} x {len(card.classes)} classes is more than "
                            f"the {card.num_images} images the set holds")
    if isinstance(card.ipc, int) and card.images_from is None and card.labels is None \
            and card.num_images > card.ipc * len(card.classes):
        raise ArtifactError(f"{set_dir}: holds {card.num_images} images, above card.json's ipc {card.ipc} x "
                            f"{len(card.classes)} classes")


LABEL_KINDS = ("logits", "probabilities")  # logits: learned by KD at evaluate.temperature (INFER);
                                          # probabilities: learned as soft cross-entropy targets (PoDD)


def write_labels(set_dir: Path, name: str, values: torch.Tensor, paths: list[str], kind: str = "logits") -> None:
    """Labels shipped with a set: [N, C] float32 `logits` or `probabilities`, and the image path of each row."""
    if kind not in LABEL_KINDS:
        raise ValueError(f"label kind {kind!r}: not one of {LABEL_KINDS}")
    save_file({kind: values.float().contiguous()}, Path(set_dir) / name, metadata={"paths": json.dumps(paths)})


def read_labels(set_dir: str | Path, card: Card, images: ImageSet) -> tuple[torch.Tensor, str]:
    """The set's shipped labels, one row per image of `images` (matched by path), and their kind."""
    if card.labels is None:
        raise ArtifactError(f"{Path(set_dir) / 'card.json'}: labels = None: this set ships no labels")
    path = inside(set_dir, card.labels, f"{Path(set_dir) / 'card.json'}: labels")
    if not path.is_file() or path.name != card.labels:
        raise ArtifactError(f"{Path(set_dir) / 'card.json'}: labels = {card.labels!r}: no such file in the set")
    try:
        with safe_open(path, "pt") as f:
            kinds = [k for k in f.keys() if k in LABEL_KINDS]
            if len(kinds) != 1:
                raise ArtifactError(f"{path}: holds tensors {sorted(f.keys())}; expected exactly one of {LABEL_KINDS}")
            values, metadata = f.get_tensor(kinds[0]), f.metadata()
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{path}: not a readable safetensors file ({e})") from None
    rows = label_paths(metadata, path)
    index = {p: i for i, p in enumerate(rows)}
    missing = [p for p in images.paths if p not in index]
    if not values.is_floating_point() or not bool(values.isfinite().all()):
        raise ArtifactError(f"{path}: {kinds[0]} must be finite floats ({values.dtype})")
    if kinds[0] == "probabilities" and ((values < 0).any() or not torch.allclose(values.sum(1), torch.ones(1), atol=1e-3)):
        raise ArtifactError(f"{path}: probabilities: rows must be non-negative and sum to 1")
    if missing or values.shape != (len(rows), len(card.classes)):
        raise ArtifactError(f"{path}: {kinds[0]} {tuple(values.shape)} for {len(rows)} paths do not cover the set's "
                        f"{len(images)} images x {len(card.classes)} classes (missing e.g. {missing[:3]})")
    return values[torch.tensor([index[p] for p in images.paths])], kinds[0]
