"""Check a distilled set before using it: its card, its files against SHA256SUMS, its class order, its images.

    python -m stages.verify artifacts/digits/ipc10/distilled/delt --data data/digits

For a set fetched with `dvc pull`, `dvc get` or `dvc import`. Without --data the class order is not compared
(a set imported into another repository may come without its dataset) but every image is still decoded and
counted. Exits 2 with the reason when the set does not match its card.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from stages.data.distilled import check_counts, images_root, load_set
from stages.data.prepared import open_images
from stages.pipeline import cli
from stages.pipeline.card import read_card, verify_content


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", type=Path, help="distilled set folder (with card.json)")
    parser.add_argument("--data", type=Path, help="data/<dataset> the set claims to distil (compares classes.json)")
    args = parser.parse_args()
    if args.data is not None:
        card, images = load_set(args.set, args.data)
    else:
        card = read_card(args.set)
        verify_content(args.set, card)
        images = open_images(images_root(args.set, card), card.classes, desc=f"load {args.set.name}")
        check_counts(args.set, card, images)
    print(f"{args.set}: ok - {card.method} on {card.dataset}, ipc {card.ipc}, {len(images)} images of "
          f"{len(card.classes)} classes, {card.content.files} files match SHA256SUMS"
          + (f", teachers {card.teacher['archs']}" if card.teacher else ""))


if __name__ == "__main__":
    cli.run(main)
