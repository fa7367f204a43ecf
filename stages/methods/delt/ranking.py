"""ranking.csv, DELT's rank stage output: every train image's p(true class) under the ranker, ranked per class."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from stages.pipeline.artifacts import read_text
from stages.pipeline.errors import ArtifactError


RANKING_COLUMNS = ["path", "class", "label", "score", "rank"]


def read_ranking(path: Path, classes: list[str], train_names: list[str] | None = None,
                 train_dir: Path | None = None):
    """rank's CSV as a DataFrame, every row checked: path '<class>/<file>' inside its class folder and listed
    once, class known, label its index, score a finite probability, rank the row's place in its class by
    score (0 = highest); with `train_names` (the train split's '<class>/<file>' names), every train image
    is ranked, no other; with `train_dir` (a split of copies), no path leads out of it, symlinks included."""
    import pandas as pd

    path = Path(path)
    text = read_text(path, ArtifactError, "run the rank stage first")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        raise ArtifactError(f"{path}: empty; expected the header {RANKING_COLUMNS} and one row per train image")
    if rows[0] != RANKING_COLUMNS:
        raise ArtifactError(f"{path}: columns {rows[0]}, expected {RANKING_COLUMNS}")
    if len(rows) == 1:
        raise ArtifactError(f"{path}: no rows below the header")
    index = {name: i for i, name in enumerate(classes)}
    first: dict[str, int] = {}
    paths, names, labels, scores, ranks = [], [], [], [], []
    from stages.pipeline.paths import relative

    for number, row in enumerate(rows[1:], 2):
        where = f"{path}:{number}"
        if len(row) != len(RANKING_COLUMNS):
            raise ArtifactError(f"{where}: {len(row)} fields, expected {len(RANKING_COLUMNS)}")
        ref, name, label, score, rank = row
        if name not in index:
            raise ArtifactError(f"{where}: class {name!r} is not in classes.json")
        parts = relative(ref, where).parts
        if len(parts) != 2 or parts[0] != name:
            raise ArtifactError(f"{where}: path {ref!r} is not '<class>/<file>' in class folder {name!r}")
        if ref in first:
            raise ArtifactError(f"{where}: {ref!r} listed twice (first at line {first[ref]})")
        first[ref] = number
        try:
            label, rank, score = int(label), int(rank), float(score)
        except ValueError:
            raise ArtifactError(f"{where}: label {label!r}, score {score!r}, rank {rank!r}: expected integer, "
                                "number, integer") from None
        if label != index[name]:
            raise ArtifactError(f"{where}: label {label} is not the index {index[name]} of class {name!r}")
        if not 0 <= score <= 1:  # also refuses nan and inf
            raise ArtifactError(f"{where}: score {score!r} is not a probability in [0, 1]")
        if rank < 0:
            raise ArtifactError(f"{where}: rank {rank} is negative")
        paths.append(ref), names.append(name), labels.append(label), scores.append(score), ranks.append(rank)
    by_class: dict[str, list[tuple[int, float, str]]] = {}
    for ref, name, score, rank in zip(paths, names, scores, ranks):
        by_class.setdefault(name, []).append((rank, score, ref))
    for name, members in by_class.items():
        members.sort()
        if [r for r, _, _ in members] != list(range(len(members))):
            raise ArtifactError(f"{path}: class {name!r}: ranks are not 0..{len(members) - 1}, each once")
        worse = next((ref for (_, a, _), (_, b, ref) in zip(members, members[1:]) if b > a), None)
        if worse is not None:
            raise ArtifactError(f"{path}:{first[worse]}: score is above the score of the row ranked before it")
    if train_dir is not None:
        from stages.pipeline.paths import inside

        for ref, number in first.items():
            inside(train_dir, ref, f"{path}:{number}")
    if train_names is not None and set(train_names) != set(first):
        missing, extra = sorted(set(train_names) - set(first)), sorted(set(first) - set(train_names))
        raise ArtifactError(f"{path}: ranks {len(first)} images, the train split has {len(train_names)} "
                            f"(not ranked: {missing[:3]}, not train images: {extra[:3]}); run rank again")
    return pd.DataFrame({"path": paths, "class": names, "label": labels, "score": scores, "rank": ranks})
