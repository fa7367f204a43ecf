"""baseline@random and baseline@full: the two reference points every method is compared with.

random: a seeded random real subset of `ipc` images per class, written as a distilled set.
full:   the whole prepared train set, by reference (card.json only; images stay in data/<ds>/train).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stages.data.folder import read_classes
from stages.data.prepared import split_items
from stages.pipeline import cli, params
from stages.pipeline.card import EVALUATION_NOTE, write_card
from stages.pipeline.outputs import atomic_dir
from stages.pipeline.seeds import derive_seed


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["random", "full"])
    parser.add_argument("--data", required=True, help="data/<dataset>")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    p = params.load()
    classes = read_classes(args.data)
    train_dir = Path(args.data) / "train"
    files = split_items(train_dir, classes)
    common = dict(method=args.kind, dataset=p.dataset, classes=classes, teacher=None, evaluation=EVALUATION_NOTE)

    with atomic_dir(args.out) as tmp:
        if args.kind == "full":
            write_card(tmp, ipc=None, num_images=len(files), images_from=train_dir.as_posix(), params={},
                       **common)
        else:
            rng = np.random.default_rng(derive_seed(p.seed, "baseline", "random"))
            for label, name in enumerate(classes):
                members = [item for item in files if item.label == label]
                for i in sorted(rng.choice(len(members), size=p.ipc, replace=False)):
                    (tmp / name).mkdir(exist_ok=True)
                    members[i].write_png(tmp / members[i].name)
            write_card(tmp, ipc=p.ipc, num_images=p.ipc * len(classes), params={"ipc": p.ipc, "seed": p.seed},
                       **common)
    print(f"baseline@{args.kind}: {json.loads((Path(args.out) / 'card.json').read_text())['num_images']} images "
          f"→ {args.out}")


if __name__ == "__main__":
    cli.run(main)
