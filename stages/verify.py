"""Check a distilled set before using it: its card, its files against SHA256SUMS, its class order, its images.

    python -m stages.verify artifacts/digits/ipc10/distilled/delt --data data/digits

For a set fetched with `dvc pull`, `dvc get` or `dvc import`. Without --data the class order is not compared
(a set imported into another repository may come without its dataset) but every image is still decoded and
counted. Exits 2 with the reason when the set does not match its card.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from stages.data.distilled import load_set, read_labels, set_images
from stages.data.folder import ImageSet
from stages.pipeline import cli
from stages.pipeline.card import Card, read_card, verify_content


def open_checked(set_dir: Path, data: Path | None) -> tuple[Card, ImageSet]:
    """The set's card and images, every check done: against the dataset's classes with `data`, else alone
    (the card, SHA256SUMS, every image decoded and counted)."""
    if data is not None:
        return load_set(set_dir, data)
    card = read_card(set_dir)
    verify_content(set_dir, card)
    return card, set_images(set_dir, card)


def run(set_dir: Path, data: Path | None = None) -> str:
    """Check the set (see the module's docstring); the one-line verdict, also printed."""
    card, images = open_checked(set_dir, data)
    if card.labels is not None:  # the shipped labels: one finite row per image and class
        read_labels(set_dir, card, images)
    verdict = (f"{set_dir}: ok - {card.method} on {card.dataset}, ipc {card.ipc}, {len(images)} images of "
               f"{len(card.classes)} classes, {card.content.files} files match SHA256SUMS"
               + (f", {card.labels} checked" if card.labels else "")
               + (f", teachers {card.teacher['archs']}" if card.teacher else ""))
    print(verdict)
    return verdict


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", type=Path, help="distilled set folder (with card.json)")
    parser.add_argument("--data", type=Path, help="data/<dataset> the set claims to distil (compares classes.json)")
    args = parser.parse_args()
    run(args.set, args.data)


if __name__ == "__main__":
    cli.run(main)
