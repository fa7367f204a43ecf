"""baseline@random and baseline@full: the two reference points every method is compared with.

random: `evaluate.seeds` independent seeded random real subsets of `ipc` images per class (draw<k>/, one set
        with one card): evaluate's student seed k trains on draw k, so random's std includes the luck of the draw.
full:   the whole prepared train set, by reference (card.json only; images stay in data/<ds>/train).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stages.data.files import read_classes
from stages.data.splits import Item, split_items
from stages.pipeline import cli, params
from stages.pipeline.params import Params
from stages.pipeline.card import EVALUATION_NOTE, write_card
from stages.pipeline.outputs import atomic_dir
from stages.pipeline.seeds import derive_seed
from stages.pipeline import outputs


def run(p: Params, kind: str, data: Path, out: Path) -> dict:
    """The baseline stage: `kind` random (evaluate.seeds seeded draws of `ipc` train images per class) or full
    (the train set by reference) as a set with its card; returns the card."""
    outputs.claim(f"baseline@{kind}", {"--out": (out, outputs.set_kind(kind))}, {"--data": data})
    classes = read_classes(data)
    train_dir = data / "train"
    files = split_items(train_dir, classes)
    common = dict(method=kind, dataset=p.dataset, classes=classes, teacher=None, evaluation=EVALUATION_NOTE)

    with atomic_dir(out) as tmp:
        if kind == "full":
            write_card(tmp, ipc=None, num_images=len(files), images_from=train_dir.as_posix(), params={},
                       **common)
        else:
            draws = p.evaluate.seeds
            for k in range(draws):  # draw 0 is the one subset this stage drew before there were draws
                rng = np.random.default_rng(derive_seed(p.seed, "baseline", "random", *([k] if k else [])))
                draw_random(tmp / f"draw{k}", files, classes, p.ipc, rng)
            write_card(tmp, ipc=p.ipc, num_images=p.ipc * len(classes), draws=draws,
                       params={"ipc": p.ipc, "seed": p.seed, "draws": draws}, **common)
    card = json.loads((out / "card.json").read_text())
    print(f"baseline@{kind}: {card['num_images']} images → {out}")
    return card


def draw_random(folder: Path, files: list[Item], classes: list[str], ipc: int, rng: np.random.Generator) -> None:
    """`ipc` train images of every class drawn without replacement, copied to folder/<class>/ by name."""
    for label, name in enumerate(classes):
        members = [item for item in files if item.label == label]
        for i in sorted(rng.choice(len(members), size=ipc, replace=False)):
            (folder / name).mkdir(parents=True, exist_ok=True)
            members[i].write_png(folder / members[i].name)


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["random", "full"])
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    run(params.load(), args.kind, args.data, args.out)


if __name__ == "__main__":
    cli.run(main)
