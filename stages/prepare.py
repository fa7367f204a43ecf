"""prepare: the source dataset → data/<ds>/{train,val}/<class>/*.png, classes.json, meta.json.

Every image becomes a square RGB PNG of `prepare.image_size` (shorter side resized, centre crop).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from stages.data import sources
from stages.data.folder import save_png
from stages.pipeline import cli, params
from stages.pipeline.errors import DataError
from stages.pipeline.outputs import atomic_dir, sha256_bytes, write_json
from stages.pipeline.progress import progress


def square(array: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(array)
    scale = size / min(img.size)
    img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))),
                     Image.Resampling.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


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
    source = open_source(p)

    with atomic_dir(args.out) as tmp:
        counts, skipped = {}, []
        pixel_sum, pixel_sq, pixel_n = np.zeros(3), np.zeros(3), 0
        for split, items in source.splits.items():
            counts[split] = Counter()
            for stem, label, load, origin in progress(items, desc=f"prepare {split}", unit="img"):
                try:
                    image = square(load(), size)
                except DataError:
                    if p.prepare.on_corrupt == "fail":
                        raise
                    skipped.append(origin)
                    continue
                save_png(image, tmp / split / source.classes[label] / f"{stem}.png")
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
        })
    if skipped:
        print(f"prepare: skipped {len(skipped)} unreadable images (listed in {args.out}/meta.json)")
    if source.ignored:
        print(f"prepare: ignored {len(source.ignored)} files that are not images, e.g. {source.ignored[0]} "
              f"(listed in {args.out}/meta.json)")
    total = {s: sum(c.values()) for s, c in counts.items()}
    print(f"prepare: {len(source.classes)} classes, {total['train']} train / {total['val']} val images "
          f"at {size}px → {args.out}")


if __name__ == "__main__":
    cli.run(main)
