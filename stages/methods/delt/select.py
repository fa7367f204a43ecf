"""select (DELT init): `ipc` real images per class from ranking.csv by `delt.criterion`.

top = highest teacher scores (easiest), min = lowest, medium (DELT's default) = from the median
outward: m, m+1, m−1, … Files are written as <class>/<k>_<original name>, k the selection order,
which EarlyLate uses as the rank (k = 0 is optimised longest).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.data.files import read_classes
from stages.pipeline.paths import file_name, inside
from stages.data.splits import split_items
from stages.pipeline import cli, params
from stages.pipeline.params import Params
from stages.methods.delt.ranking import read_ranking
from stages.pipeline.errors import ArtifactError
from stages.pipeline.outputs import atomic_dir, write_json
from stages.methods.delt.selection import select
from stages.pipeline import outputs


def run(p: Params, ranking: Path, data: Path, out: Path) -> dict[str, list[str]]:
    """The select stage: `ipc` train images per class by `delt.criterion` from the ranking, copied into `out`
    with their selection order as prefix; returns each class's picked train paths in that order."""
    outputs.claim("select", {"--out": (out, outputs.INIT)}, {"--ranking": ranking, "--data": data})
    classes = read_classes(data)
    train_dir = data / "train"
    files = {item.name: item for item in split_items(train_dir, classes)}
    table = read_ranking(ranking, classes, list(files), train_dir if train_dir.is_dir() else None)
    width = max(3, len(str(p.ipc - 1)))
    picks = {}
    with atomic_dir(out) as tmp:
        for name in classes:
            members = table[table["class"] == name].sort_values("score", kind="stable")
            if len(members) < p.ipc:
                raise ArtifactError(f"{ranking}: class {name!r} has {len(members)} ranked images, ipc = {p.ipc}")
            picked = select(members["score"].to_numpy(np.float64), p.ipc, p.delt.criterion)
            (tmp / name).mkdir()
            picks[name] = []
            for k, i in enumerate(picked):
                where = f"{ranking}:{members.index[i] + 2}"
                ref = members["path"].iloc[i]
                source = inside(train_dir, ref, where)  # no link out of the train folder
                if ref not in files:
                    raise ArtifactError(f"{where}: {ref} is not in {train_dir}")
                files[ref].write_png(tmp / name / file_name(f"{k:0{width}d}_", source.stem, source.suffix))
                picks[name].append(ref)
        write_json(tmp / "selection.json", {"criterion": p.delt.criterion, "ipc": p.ipc, "ranking": str(ranking)})
    print(f"select: {p.ipc} x {len(classes)} images by {p.delt.criterion} → {out}")
    return picks


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--ranking", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    run(params.load(), args.ranking, args.data, args.out)


if __name__ == "__main__":
    cli.run(main)
