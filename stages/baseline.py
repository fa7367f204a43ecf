"""baseline@random and baseline@full: the two reference points every method is compared with.

random: `evaluate.seeds` independent seeded random real subsets of `ipc` images per class (draw<k>/, one set
        with one card): evaluate's student seed k trains on draw k, so random's std includes the luck of the draw.
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
            draws = p.evaluate.seeds
            for k in range(draws):  # draw 0 is the one subset this stage drew before there were draws
                rng = np.random.default_rng(derive_seed(p.seed, "baseline", "random", *([k] if k else [])))
                for label, name in enumerate(classes):
                    members = [item for item in files if item.label == label]
                    for i in sorted(rng.choice(len(members), size=p.ipc, replace=False)):
                        (tmp / f"draw{k}" / name).mkdir(parents=True, exist_ok=True)
                        members[i].write_png(tmp / f"draw{k}" / members[i].name)
            write_card(tmp, ipc=p.ipc, num_images=p.ipc * len(classes), draws=draws,
                       params={"ipc": p.ipc, "seed": p.seed, "draws": draws}, **common)
    print(f"baseline@{args.kind}: {json.loads((Path(args.out) / 'card.json').read_text())['num_images']} images "
          f"→ {args.out}")


if __name__ == "__main__":
    cli.run(main)
