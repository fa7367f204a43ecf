"""prepare: the source dataset → data/<ds>/{train,val}/<class>/*.png, classes.json, meta.json.

Every image becomes a square RGB PNG of `prepare.image_size` (shorter side resized, centre crop).
With prepare.copy: false (imagefolder only) no pixels are written: data/<ds>/manifest.parquet lists the
source files (stages/data/prepared.py), and every reader decodes them. Either way each image is decoded
once here, to check it and to measure the train set's mean and std.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from stages.data import sources
from stages.data.folder import save_png
from stages.data.prepared import MANIFEST, square, write_manifest
from stages.pipeline import cli, params
from stages.pipeline.errors import DataError, ParamsError
from stages.pipeline.outputs import atomic_dir, sha256_bytes, write_json
from stages.pipeline.progress import progress


def open_source(p: params.Params) -> sources.Source:
    if p.dataset == "digits":
        return sources.digits(p.prepare.val_fraction, p.seed)
    if p.dataset == "photos":
        return sources.photos(p.prepare.crops, p.prepare.val_fraction, p.seed)
    if p.dataset in ("cifar10", "cifar100"):
        return sources.cifar(p.dataset, p.prepare.root, p.prepare.download)
    return sources.imagefolder(p.prepare.root, p.prepare.classes)


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="data/<dataset>")
    args = parser.parse_args()
    p = params.load()
    size = p.prepare.image_size
    copy = p.prepare.copy_
    if not copy and p.dataset != "imagefolder":
        raise ParamsError(f"prepare.copy = false: only for dataset imagefolder (files to list), not {p.dataset}")
    source = open_source(p)

    root = Path(p.prepare.root or ".")
    manifest = {k: [] for k in ("split", "path", "class", "label", "name", "bytes", "mtime_ns")}

    with atomic_dir(args.out) as tmp:
        counts, skipped = {}, []
        pixel_sum, pixel_sq, pixel_n = np.zeros(3), np.zeros(3), 0
        for split, items in source.splits.items():
            counts[split] = Counter()
            for stem, label, load, origin in progress(items, desc=f"prepare {split}", unit="img"):
                stat = None if copy else os.stat(origin)  # before reading: a later change shows as a newer mtime
                try:
                    image = square(load(), size)
                except DataError:
                    if p.prepare.on_corrupt == "fail":
                        raise
                    skipped.append(origin)
                    continue
                name = f"{source.classes[label]}/{stem}.png"
                if copy:
                    save_png(image, tmp / split / name)
                else:
                    for key, value in zip(manifest, (split, Path(origin).relative_to(root).as_posix(),
                                                     source.classes[label], label, name, stat.st_size,
                                                     stat.st_mtime_ns)):
                        manifest[key].append(value)
                counts[split][source.classes[label]] += 1
                if split == "train":
                    x = image.reshape(-1, 3) / 255.0
                    pixel_sum += x.sum(0)
                    pixel_sq += (x ** 2).sum(0)
                    pixel_n += len(x)
            empty = [c for c in source.classes if counts[split][c] == 0]
            if empty:  # every source class has files, so only skipping empties one
                raise DataError(f"{split} classes {empty}: no readable image left after skipping {len(skipped)} "
                                f"unreadable files (first: {skipped[0]})")
        if not copy:
            write_manifest(tmp / MANIFEST, manifest)
        mean = pixel_sum / pixel_n
        std = np.sqrt(pixel_sq / pixel_n - mean ** 2)
        classes_json = tmp / "classes.json"
        write_json(classes_json, source.classes)
        write_json(tmp / "meta.json", {
            "dataset": p.dataset,
            "image_size": size,
            "classes": source.classes,
            "classes_sha256": sha256_bytes(classes_json.read_bytes()),
            "train_counts": {c: counts["train"][c] for c in source.classes},
            "val_counts": {c: counts["val"][c] for c in source.classes},
            "mean": [round(float(v), 6) for v in mean],
            "std": [round(float(v), 6) for v in std],
            "skipped": {"count": len(skipped), "files": skipped},
            "ignored": {"count": len(source.ignored), "files": source.ignored},
            **({} if copy else {"source_root": p.prepare.root}),
        })
    if skipped:
        print(f"prepare: skipped {len(skipped)} unreadable images (listed in {args.out}/meta.json)")
    if source.ignored:
        print(f"prepare: ignored {len(source.ignored)} files that are not images, e.g. {source.ignored[0]} "
              f"(listed in {args.out}/meta.json)")
    total = {s: sum(c.values()) for s, c in counts.items()}
    print(f"prepare: {len(source.classes)} classes, {total['train']} train / {total['val']} val images "
          f"at {size}px → {args.out}" + ("" if copy else f" (a manifest of the files in {root}, no copies)"))


if __name__ == "__main__":
    cli.run(main)
