"""prepare: the source dataset → data/<ds>/{train,val}/<class>/*.png, classes.json, meta.json.

Every image becomes a square RGB PNG of `prepare.image_size` (shorter side resized, centre crop).
With prepare.copy: false (imagefolder only) no pixels are written: data/<ds>/manifest.parquet lists the
source files (stages/data/prepared.py), and every reader decodes them. Either way each image is decoded
once here, to check it and to measure the train set's mean and std.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.data import sources
from stages.data.files import save_png
from stages.data.splits import MANIFEST, square, write_manifest
from stages.pipeline import cli, params
from stages.pipeline.params import Params
from stages.pipeline.errors import DataError, ParamsError
from stages.pipeline.outputs import atomic_dir, sha256_bytes, write_json
from stages.pipeline.progress import progress
from stages.pipeline import outputs


def open_source(p: Params) -> sources.Source:
    if p.dataset == "digits":
        return sources.digits(p.prepare.val_fraction, p.seed)
    if p.dataset == "photos":
        return sources.photos(p.prepare.crops, p.prepare.val_fraction, p.seed)
    if p.dataset in ("cifar10", "cifar100"):
        return sources.cifar(p.dataset, p.prepare.root, p.prepare.download)
    return sources.imagefolder(p.prepare.root, p.prepare.classes)


MANIFEST_COLUMNS = ("split", "path", "class", "label", "name", "bytes", "mtime_ns")


@dataclass
class Tally:
    """What the pass over the source found: images per split and class, the unreadable files skipped, the
    manifest's rows (copy: false) and the train pixels' running sums for the mean and std."""
    counts: dict[str, Counter] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    manifest: dict[str, list] = field(default_factory=lambda: {k: [] for k in MANIFEST_COLUMNS})
    pixel_sum: np.ndarray = field(default_factory=lambda: np.zeros(3))
    pixel_sq: np.ndarray = field(default_factory=lambda: np.zeros(3))
    pixel_n: int = 0

    def add_train_pixels(self, image: np.ndarray) -> None:
        x = image.reshape(-1, 3) / 255.0
        self.pixel_sum += x.sum(0)
        self.pixel_sq += (x ** 2).sum(0)
        self.pixel_n += len(x)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.pixel_sum / self.pixel_n
        return mean, np.sqrt(self.pixel_sq / self.pixel_n - mean ** 2)


def run(p: Params, out: Path) -> dict:
    """The prepare stage: decode, check and square every source image, copy it as a PNG (or list its file in
    the manifest), measure the train set's mean and std; writes `out` and returns its meta.json content."""
    outputs.claim("prepare", {"--out": (out, outputs.DATA)}, {"prepare.root": p.prepare.root})
    copy = p.prepare.copy_
    if not copy and p.dataset != "imagefolder":
        raise ParamsError(f"prepare.copy = false: only for dataset imagefolder (files to list), not {p.dataset}")
    source = open_source(p)
    root = Path(p.prepare.root or ".")
    tally = Tally()
    with atomic_dir(out) as tmp:
        for split, items in source.splits.items():
            prepare_split(p, source, split, items, tmp, root, tally)
        if not copy:
            write_manifest(tmp / MANIFEST, tally.manifest)
        meta = write_meta(tmp, p, source, tally)
    print_summary(p, source, tally, root, out)
    return meta


def prepare_split(p: Params, source: sources.Source, split: str, items, tmp: Path, root: Path,
                  tally: Tally) -> None:
    """One split's images into `tmp` (or the manifest), counted; unreadable ones skipped or fatal
    (prepare.on_corrupt), and a class left without an image refused."""
    copy = p.prepare.copy_
    tally.counts[split] = Counter()
    for stem, label, load, origin in progress(items, desc=f"prepare {split}", unit="img"):
        stat = None if copy else os.stat(origin)  # before reading: a later change shows as a newer mtime
        try:
            image = square(load(), p.prepare.image_size, origin)
        except DataError:
            if p.prepare.on_corrupt == "fail":
                raise
            tally.skipped.append(origin)
            continue
        name = f"{source.classes[label]}/{stem}.png"
        if copy:
            save_png(image, tmp / split / name)
        else:
            for key, value in zip(tally.manifest, (split, Path(origin).relative_to(root).as_posix(),
                                                   source.classes[label], label, name, stat.st_size,
                                                   stat.st_mtime_ns)):
                tally.manifest[key].append(value)
        tally.counts[split][source.classes[label]] += 1
        if split == "train":
            tally.add_train_pixels(image)
    empty = [c for c in source.classes if tally.counts[split][c] == 0]
    if empty:  # every source class has files, so only skipping empties one
        raise DataError(f"{split} classes {empty}: no readable image left after skipping {len(tally.skipped)} "
                        f"unreadable files (first: {tally.skipped[0]})")


def write_meta(tmp: Path, p: Params, source: sources.Source, tally: Tally) -> dict:
    """classes.json and meta.json (class order and its hash, counts, normalisation, what was left out)."""
    mean, std = tally.mean_std()
    classes_json = tmp / "classes.json"
    write_json(classes_json, source.classes)
    meta = {
        "dataset": p.dataset,
        "image_size": p.prepare.image_size,
        "classes": source.classes,
        "classes_sha256": sha256_bytes(classes_json.read_bytes()),
        "train_counts": {c: tally.counts["train"][c] for c in source.classes},
        "val_counts": {c: tally.counts["val"][c] for c in source.classes},
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "skipped": {"count": len(tally.skipped), "files": tally.skipped},
        "ignored": {"count": len(source.ignored), "files": source.ignored},
        **({} if p.prepare.copy_ else {"source_root": p.prepare.root}),
    }
    write_json(tmp / "meta.json", meta)
    return meta


def print_summary(p: Params, source: sources.Source, tally: Tally, root: Path, out: Path) -> None:
    if tally.skipped:
        print(f"prepare: skipped {len(tally.skipped)} unreadable images (listed in {out}/meta.json)")
    if source.ignored:
        print(f"prepare: ignored {len(source.ignored)} files that are not images, e.g. {source.ignored[0]} "
              f"(listed in {out}/meta.json)")
    total = {s: sum(c.values()) for s, c in tally.counts.items()}
    print(f"prepare: {len(source.classes)} classes, {total['train']} train / {total['val']} val images "
          f"at {p.prepare.image_size}px → {out}"
          + ("" if p.prepare.copy_ else f" (a manifest of the files in {root}, no copies)"))


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path, help="data/<dataset>")
    args = parser.parse_args()
    run(params.load(), args.out)


if __name__ == "__main__":
    cli.run(main)
