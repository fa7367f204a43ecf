"""rank (DELT): score every real training image by the teacher's probability of its true class.

Writes ranking.csv: path (relative to the train folder), class, label, score = p(true class), and
rank in class (0 = highest score); rows sorted by label, then score descending, then path. `select`
reads it with any criterion without running the teacher again.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from stages.data.folder import read_classes
from stages.data.prepared import open_images
from stages.models import load_checkpoint, predict
from stages.pipeline.artifacts import read_data_meta
from stages.pipeline import cli, params
from stages.pipeline.outputs import atomic_file
from stages.pipeline import outputs


def run(teacher_dir: Path, data: Path, out: Path) -> pd.DataFrame:
    """The rank stage: the teacher's probability of the true class for every train image, sorted and ranked
    within its class; writes the CSV `out` and returns the table."""
    outputs.claim("rank", {"--out": (out, outputs.file_kind("a ranking", ".csv", "path,class,label,score,rank"))},
                  {"--teacher": teacher_dir, "--data": data})
    data_meta = read_data_meta(data)
    classes = read_classes(data)
    teacher, t_meta = load_checkpoint(teacher_dir, data_meta.classes_sha256)
    train = open_images(data / "train", classes, t_meta["image_size"])
    probabilities = torch.softmax(predict(teacher, train.normalised(t_meta["mean"], t_meta["std"])), 1)
    table = pd.DataFrame({
        "path": train.paths,
        "class": [classes[y] for y in train.labels.tolist()],
        "label": train.labels.numpy(),
        "score": probabilities[torch.arange(len(train)), train.labels].numpy().astype("float64"),
    })
    table = table.sort_values(["label", "score", "path"], ascending=[True, False, True], kind="stable")
    table["rank"] = table.groupby("label").cumcount()
    with atomic_file(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.8f")
    accuracy = float((probabilities.argmax(1) == train.labels).float().mean())
    print(f"rank: {len(table)} images scored by {t_meta['arch']} (train top-1 {accuracy:.4f}) → {out}")
    return table


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", required=True, type=Path, help="ranker: a teacher folder")
    parser.add_argument("--data", required=True, type=Path, help="data/<dataset>")
    parser.add_argument("--out", required=True, type=Path, help="ranking CSV to write")
    args = parser.parse_args()
    params.load()  # rank reads no params, but an invalid params.yaml stops it as it stops every stage
    run(args.teacher, args.data, args.out)


if __name__ == "__main__":
    cli.run(main)
