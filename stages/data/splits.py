"""The files of a prepared split, one by one (`split_items`), whether `prepare` copied the pixels or listed the
sources in data/<ds>/manifest.parquet (stages/data/prepared.py describes both layouts), and the folder a distilled
set's images are in. No torch: stages/data/prepared.py reads the same splits as tensors (`open_images`)."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from stages.data.files import decode_rgb, list_images, save_png
from stages.pipeline.artifacts import PIXELS_ENV, max_pixels, read_data_meta
from stages.pipeline.card import Card
from stages.pipeline.errors import ArtifactError, DataError, ResourceError
from stages.pipeline.outputs import dir_bytes
from stages.pipeline.paths import Root, inside, relative

MANIFEST = "manifest.parquet"
SPLITS = ("train", "val")


def square(array: np.ndarray, size: int, where: str | Path = "image") -> np.ndarray:
    """A square RGB image of side `size`: shorter side resized (bicubic), centre crop. The resized image is
    bounded like a decoded one (DDPIPE_MAX_PIXELS): a 1 x 80M-pixel strip, under the limit itself, would
    resize to 16 x 1.28G pixels; it is refused (ResourceError naming `where`) before anything is allocated."""
    img = Image.fromarray(array)
    scale = size / min(img.size)
    width, height = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    limit = max_pixels()
    if limit and width * height > limit:
        raise ResourceError(f"{where}: {img.width}x{img.height} resizes to {width}x{height} = {width * height:,} "
                            f"pixels to make its shorter side {size}, above the limit of {limit:,} ({PIXELS_ENV}); "
                            "crop it nearer to square")
    img = img.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


@dataclass(frozen=True)
class Source:
    """One manifest row: a source file and what it looked like when `prepare` read it."""
    path: Path
    bytes: int
    mtime_ns: int
    root: Root | None = field(default=None, compare=False)  # the source root: no link may lead out of it

    def read(self) -> np.ndarray:
        """The file's pixels at native size, after checking it is the file `prepare` listed."""
        if self.root is not None:
            self.root.check(self.path)  # before anything is opened (a link is checked where it leads now)
        try:
            stat = os.stat(self.path)
        except OSError as e:
            raise DataError(f"{self.path}: listed in the manifest but unreadable now ({e.strerror}); "
                            "restore it or rerun prepare (dvc repro --force prepare)") from None
        if (stat.st_size, stat.st_mtime_ns) != (self.bytes, self.mtime_ns):
            raise DataError(f"{self.path}: changed since prepare listed it ({self.bytes} bytes, mtime_ns "
                            f"{self.mtime_ns}; now {stat.st_size}, {stat.st_mtime_ns}); rerun prepare "
                            "(dvc repro --force prepare) to take the new version")
        return decode_rgb(self.path)


@dataclass(frozen=True)
class Item:
    """One image of a prepared split: `name` is "<class>/<file>" as in the prepared folder (a manifest row
    by the name its PNG copy would have)."""
    name: str
    label: int
    path: Path  # the PNG copy, or the source file
    source: Source | None = None  # manifest rows only
    size: int | None = None  # manifest rows: the square side to decode to

    def load(self) -> np.ndarray:
        """H x W x 3 uint8, the prepared image."""
        return decode_rgb(self.path) if self.source is None else square(self.source.read(), self.size, self.path)

    def write_png(self, dest: Path) -> None:
        """The prepared image as a PNG at `dest` (a copy's bytes, or the same bytes encoded from the source)."""
        if self.source is None:
            shutil.copyfile(self.path, dest)
        else:
            save_png(self.load(), dest)


def manifest_of(root: str | Path) -> Path | None:
    """data/<ds>/manifest.parquet when `root` is a split of a dataset prepared without copies, else None."""
    root = Path(root)
    manifest = root.parent / MANIFEST
    return manifest if root.name in SPLITS and not root.exists() and manifest.is_file() else None


def named_source_root(meta_path: Path, source_root: str) -> Path:
    """meta.json's source_root, once it is the root the user named: params.yaml's prepare.root (the
    working directory's, where every stage runs). A meta.json changed to point elsewhere is refused."""
    from stages.pipeline.artifacts import read_text
    from stages.pipeline.params import load_yaml

    params_path = Path("params.yaml")
    if not params_path.is_file():
        raise DataError(f"{meta_path}: source_root = {source_root!r}, and no params.yaml in the working directory "
                        "names the source root (prepare.root): run stages from the project root")
    raw = load_yaml(read_text(params_path, DataError), str(params_path), DataError)
    prepare = raw.get("prepare") if isinstance(raw, dict) else None
    named = prepare.get("root") if isinstance(prepare, dict) else None
    if not isinstance(named, str) or os.path.realpath(named) != os.path.realpath(source_root):
        raise DataError(f"{meta_path}: source_root = {source_root!r} is not the folder params.yaml names "
                        f"(prepare.root = {named!r}); nothing is read from outside it: rerun prepare "
                        "(dvc repro prepare) for this root")
    return Path(source_root)


def read_manifest(manifest: Path, split: str, classes: list[str]) -> tuple[list[Item], int]:
    """The split's items (sorted as a copy's folder lists them: class order, then file name) and the image size.
    Files are read from the source root params.yaml names, and no row leads out of it (paths.Root)."""
    meta = read_data_meta(manifest.parent)  # validated, and checked against classes.json
    meta_path = manifest.parent / "meta.json"
    source_root = (meta.model_extra or {}).get("source_root")
    if not isinstance(source_root, str) or not source_root:
        raise DataError(f"{meta_path}: source_root = {source_root!r}: expected the folder "
                        "prepare listed (a non-empty string); run prepare again")
    if meta.classes != classes:
        raise DataError(f"{meta_path}: classes differ from the ones asked for")
    root, size = named_source_root(meta_path, source_root), meta.image_size
    tree = Root(root, DataError, "the source root")
    import pyarrow as pa  # here, not at the top: only a dataset prepared without copies has a manifest
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(manifest, columns=["split", "path", "name", "label", "bytes", "mtime_ns"],
                              filters=[("split", "==", split)])
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{manifest}: not a readable manifest ({' '.join(str(e).split())[:160]}); "
                        "run prepare again") from None
    col = table.to_pydict()
    items, names, paths = [], {}, {}
    for i, (path, name, label) in enumerate(zip(col["path"], col["name"], col["label"])):
        where = f"{manifest}: row {i} of {split}"
        relative(path, where, DataError)
        relative(name, where, DataError)
        for value, seen in ((name, names), (path, paths)):
            if value in seen:
                raise DataError(f"{where}: {value!r} listed twice (first at row {seen[value]})")
            seen[value] = i
        if not isinstance(label, int) or not 0 <= label < len(classes) or \
                not name.startswith(f"{classes[label]}/"):
            raise DataError(f"{where}: label {label!r} for {name!r} is not the index of its class (0.."
                            f"{len(classes) - 1}, the class its name starts with)")
        if not all(isinstance(col[k][i], int) and col[k][i] >= 0 for k in ("bytes", "mtime_ns")):
            raise DataError(f"{where}: bytes {col['bytes'][i]!r}, mtime_ns {col['mtime_ns'][i]!r}: expected "
                            "non-negative integers")
        items.append(Item(name, label, root / path,
                          Source(root / path, col["bytes"][i], col["mtime_ns"][i], tree), size))
    items.sort(key=lambda item: (item.label, item.name))
    if not items:
        raise DataError(f"{manifest}: no {split} rows")
    return items, size


def split_items(root: str | Path, classes: list[str]) -> list[Item]:
    """The images of a prepared split (or any class-folder tree), one by one."""
    manifest = manifest_of(root)
    if manifest is not None:
        return read_manifest(manifest, Path(root).name, classes)[0]
    return [Item(p.relative_to(root).as_posix(), label, p) for p, label in list_images(Path(root), classes)]


def stored_bytes(root: str | Path) -> int:
    """Bytes a split occupies: its PNG copies, or (manifest) its source files."""
    manifest = manifest_of(root)
    if manifest is None:
        return dir_bytes(root)
    import pyarrow.parquet as pq  # here, not at the top: only a dataset prepared without copies has a manifest

    return int(pq.read_table(manifest, columns=["split", "bytes"], filters=[("split", "==", Path(root).name)])
               .column("bytes").to_numpy().sum())


def inputs_of(root: str | Path) -> Path:
    """What identifies a split's content for a resume key: the folder, or the manifest."""
    return manifest_of(root) or Path(root)


def write_manifest(path: Path, rows: dict[str, list]) -> None:
    """The manifest: one row per kept source image (columns as `read_manifest` reads them)."""
    import pyarrow as pa  # here, not at the top: only prepare.copy: false writes a manifest
    import pyarrow.parquet as pq

    types = {"split": pa.string(), "path": pa.string(), "class": pa.string(), "label": pa.int32(),
             "name": pa.string(), "bytes": pa.int64(), "mtime_ns": pa.int64()}
    table = pa.table({k: pa.array(rows[k], type=t) for k, t in types.items()})
    pq.write_table(table, path, compression="zstd")


def images_root(set_dir: Path, card: Card, draw: int = 0) -> Path:
    """The set's own folder, its draw<k>/ (baseline@random's draws, k = draw modulo their number), or
    (baseline@full) a folder under data/<dataset>/ named by the card."""
    if card.draws is not None:
        return Path(set_dir) / f"draw{draw % card.draws}"
    if card.images_from is None:
        return set_dir
    where = f"{set_dir / 'card.json'}: images_from"
    ref = relative(card.images_from, where)
    if ref.parts[:1] != ("data",) or len(ref.parts) < 2:
        raise ArtifactError(f"{where} = {card.images_from!r}: must be a folder under the project's data/")
    # data/<dataset> may be a link (where the user keeps a dataset); below it, nothing may lead out.
    dataset = Path(*ref.parts[:2])
    return inside(dataset, "/".join(ref.parts[2:]), where) if len(ref.parts) > 2 else dataset
