"""Fault injection for params and data (issue 7): one case per fault, each run as dvc.yaml runs the stage.

A refused case asserts exit 2, the one line `error: <Kind>: <message>` naming the key, value or file, no
traceback, and that the stage left no output (and no temp folder beside it) for DVC to cache. Input that is
odd but valid (grayscale, RGBA, palette, 16-bit, non-ASCII names, links inside the root) must come out right.
The "Bad input" table of docs/bad-input.md lists what is refused and what is converted.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.data.distilled import load_set
from stages.data.folder import load_imagefolder, read_classes
from tests.conftest import REPO, TINY, assert_nothing_left, assert_refused, merge, run_stage, write_params

SIZE = 8  # prepare.image_size; sources are drawn at this size so prepare keeps their pixels exactly


# ---------------------------------------------------------------- helpers

def project(folder: Path, override: dict | None = None) -> Path:
    """A project folder: this checkout's stages and TINY params (+ override)."""
    folder.mkdir(exist_ok=True)
    (folder / "stages").symlink_to(REPO / "stages")
    write_params(folder, merge(TINY, override or {}))
    return folder


def stage(name: str, ds: str = "digits", ipc=3) -> tuple[list[str], str]:
    """The stage's command line as dvc.yaml builds it, and the output it must not leave."""
    data, art = f"data/{ds}", f"artifacts/{ds}"
    method = name.split()[1] if " " in name else None
    if name == "prepare":
        return ["prepare", "--out", data], data
    if name == "teacher":
        return ["teacher", "--arch", "convnet", "--data", data, "--out", f"{art}/teachers/convnet"], \
            f"{art}/teachers/convnet"
    if name == "baseline":
        return ["baseline", "random", "--data", data, "--out", f"{art}/ipc{ipc}/distilled/random"], \
            f"{art}/ipc{ipc}/distilled/random"
    if name.startswith("recover"):
        init = {"sre2l": "noise", "delt": f"{art}/ipc{ipc}/init/medium"}.get(method, f"{data}/train")
        return ["recover", method, "--teachers", f"{art}/teachers", "--init", init, "--data", data,
                "--out", f"{art}/ipc{ipc}/distilled/{method}", "--stats", f"{art}/ipc{ipc}/synthesis/{method}.json"], \
            f"{art}/ipc{ipc}/distilled/{method}"
    if name.startswith("synthesize"):
        return ["synthesize", method, "--diffusion", f"{art}/diffusion", "--prototypes",
                f"{art}/ipc{ipc}/prototypes/{method}", "--data", data, "--out", f"{art}/ipc{ipc}/distilled/{method}",
                "--stats", f"{art}/ipc{ipc}/synthesis/{method}.json"], f"{art}/ipc{ipc}/distilled/{method}"
    if name == "caption":
        return ["caption", "--data", data, "--out", f"{art}/captions"], f"{art}/captions"
    if name == "poster":
        out = f"{art}/podd0.9/distilled/podd"
        return ["poster", "--data", data, "--out", out, "--stats", f"{art}/podd0.9/synthesis/podd.json"], out
    raise KeyError(name)


def refused(folder: Path, argv: list[str], out: str, kind: str, message: str) -> str:
    """Run the stage; it must stop with exactly `error: <kind>: <message>…` (literal prefix) and leave nothing."""
    result = run_stage(folder, *argv, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    assert_refused(result, kind, re.escape(message))
    assert_nothing_left(folder / out)
    line = next(line for line in result.stderr.splitlines() if line.startswith("error: "))
    print(f"FAULT python -m stages.{' '.join(argv[:2])} → {line}")  # the matrix, with pytest -rP
    return line


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def noise(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def put(path: Path, content) -> Path:
    """An image file (an array, a PIL image or an RGB colour) or raw bytes at path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, Image.Image):
        content.save(path)
    elif isinstance(content, np.ndarray):
        Image.fromarray(content).save(path)
    else:
        Image.new("RGB", (SIZE, SIZE), content).save(path)
    return path


def source_tree(src: Path) -> Path:
    for c, name in enumerate(("a", "b")):
        for split, n in (("train", 2), ("val", 1)):
            for i in range(n):
                put(src / split / name / f"{i}.png", (40 * c + 10 * i, 100, 200 - 30 * c))
    return src


def source_project(folder: Path, prepare: dict | None = None) -> tuple[Path, Path]:
    """A project whose prepare reads an ImageFolder tree at folder/src (a, b: 2 train + 1 val images each)."""
    project(folder, {"dataset": "imagefolder", "ipc": 1,
                     "prepare": {"root": str(folder / "src"), "image_size": SIZE, **(prepare or {})}})
    return folder, source_tree(folder / "src")


def truncated(fmt: str) -> bytes:
    """A real image cut short, as by an interrupted copy."""
    data = encoded(noise(), fmt)
    return data[:len(data) * 3 // 4]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Prepared data/imagefolder of three classes with 4, 3 and 4 train images (the smallest: 'b')."""
    folder = tmp_path_factory.mktemp("tiny")
    project(folder, {"dataset": "imagefolder", "ipc": 1, "prepare": {"root": str(folder / "src"), "image_size": SIZE}})
    for c, (name, n) in enumerate({"a": 4, "b": 3, "c": 4}.items()):
        for i in range(n):
            put(folder / "src" / "train" / name / f"{i}.png", noise(10 * c + i))
        put(folder / "src" / "val" / name / "0.png", noise(100 + c))
    run_stage(folder, "prepare", "--out", "data/imagefolder")
    return folder / "data" / "imagefolder"


def with_data(folder: Path, data: Path, override: dict | None = None, copy: bool = False) -> Path:
    """A project on the prepared tiny data (linked, or copied when the case will damage it)."""
    project(folder, merge({"dataset": "imagefolder", "prepare": {"root": str(data.parent / "src"),
                                                                 "image_size": SIZE}}, override or {}))
    (folder / "data").mkdir()
    if copy:
        shutil.copytree(data, folder / "data" / "imagefolder")
    else:
        (folder / "data" / "imagefolder").symlink_to(data)
    return folder


# ---------------------------------------------------------------- params: each read by a stage that uses it

PARAMS_FAULTS = [
    # (stage, override, message prefix after "error: ParamsError: ")
    pytest.param("recover sre2l", {"sre2l": {"recover": {"iteration": 5}}},
                 "params.yaml: unknown key 'sre2l.recover.iteration'", id="unknown-key-nested"),
    pytest.param("baseline", {"ipc": "ten"}, "params.yaml: ipc = 'ten': Input should be a valid integer",
                 id="wrong-type-int"),
    pytest.param("teacher", {"teacher": {"flip": "yes"}},
                 "params.yaml: teacher.flip = 'yes': Input should be a valid boolean", id="wrong-type-bool"),
    pytest.param("baseline", {"ipc": 0}, "params.yaml: ipc = 0: Input should be greater than 0", id="ipc-0"),
    pytest.param("recover sre2l", {"ipc": -3}, "params.yaml: ipc = -3: Input should be greater than 0",
                 id="ipc-negative"),
    pytest.param("teacher", {"teacher": {"archs": ["convnet", "resnet999"]}},
                 "params.yaml: teacher.archs = ['convnet', 'resnet999']: arch 'resnet999' is not registered "
                 "(ours or a torchvision model name)", id="unknown-arch"),
    pytest.param("prepare", {"dataset": "mnist"},
                 "params.yaml: dataset = 'mnist': Input should be 'digits', 'photos', 'cifar10', 'cifar100' or "
                 "'imagefolder'",
                 id="unknown-dataset"),
    pytest.param("caption", {"caption": {"captioner": "blip"}},
                 "params.yaml: caption.captioner = 'blip': Input should be 'attributes' or 'llava'",
                 id="unknown-captioner"),
    pytest.param("recover sre2l", {"sre2l": {"recover": {"ipc_start": 10, "ipc_end": 5}}},
                 "params.yaml: sre2l.recover.ipc_end = 5: must be above ipc_start = 10", id="ipc_end-below-ipc_start"),
    pytest.param("recover delt", {"delt": {"recover": {"ipc_end": 4}}},
                 "params.yaml: delt.recover.ipc_end = 4: above ipc = 3", id="ipc_end-above-ipc"),
    pytest.param("synthesize d4m", {"d4m": {"synthesis": {"strength": 1.5}}},
                 "params.yaml: d4m.synthesis.strength = 1.5: Input should be less than or equal to 1",
                 id="img2img-strength-above-1"),
    pytest.param("poster", {"podd": {"window": 10, "totwindow": 4}},
                 "params.yaml: podd.totwindow = 4: below minwindow + window = 0 + 10",
                 id="podd-window-above-totwindow"),
    pytest.param("prepare", {"dataset": "cifar10"},
                 "params.yaml: prepare.root = None: dataset 'cifar10' needs a source folder", id="cifar-without-root"),
]


@pytest.mark.parametrize("name, override, message", PARAMS_FAULTS)
def test_bad_params_are_refused_by_the_stage(tmp_path, name, override, message):
    argv, out = stage(name, ipc=override.get("ipc", 3))
    refused(project(tmp_path / "p", override), argv, out, "ParamsError", message)


@pytest.mark.parametrize("added, message", [
    pytest.param("ipcs: 5", "params.yaml: unknown key 'ipcs'", id="unknown-key-top"),
    pytest.param("ipc: 5", "params.yaml: not valid YAML: line {n}, column 1: duplicate key 'ipc'", id="duplicate-key"),
    pytest.param("teacher: [convnet", "params.yaml: not valid YAML: line {end}, column 1: expected ',' or ']', "
                 "but got '<stream end>'", id="yaml-syntax"),
])
def test_params_yaml_text_faults(tmp_path, added, message):
    """Faults only the text can have: a key written twice (YAML loaders keep the last silently), bad syntax."""
    folder = project(tmp_path / "p")
    text = (folder / "params.yaml").read_text()
    (folder / "params.yaml").write_text(text + added + "\n")
    added_line = len(text.splitlines()) + 1  # a syntax error shows at the end of the stream, one line on
    refused(folder, *stage("baseline"), "ParamsError", message.format(n=added_line, end=added_line + 1))


def test_unknown_method_is_one_params_line(tmp_path):
    folder = project(tmp_path / "p")
    argv, _ = stage("recover sre2l")
    argv[1] = "nosuch"
    refused(folder, argv, "artifacts/digits/ipc3/distilled/nosuch", "ParamsError",
            "python -m stages.recover: argument method: invalid choice: 'nosuch' "
            "(choose from 'sre2l', 'delt', 'infer', 'edc') (--help lists the arguments)")


@pytest.mark.parametrize("name, override, message", [
    pytest.param("baseline", {"ipc": 4}, "params.yaml: ipc = 4: above the smallest class size "
                 "(3 train images in class 'b')", id="ipc-above-smallest-class"),
    pytest.param("recover infer", {"infer": {"ipc_init": 3}}, "params.yaml: infer.ipc_init = 3: 3·(3 classes + "
                 "2 teachers) = 15 stored images, above the budget ipc·C = 9", id="infer-budget-impossible"),
    pytest.param("caption", {"class_names": ["x", "y"]}, "params.yaml: class_names has 2 names, the data has 3 classes",
                 id="class_names-vs-classes"),
])
def test_params_contradicting_the_data_are_refused(tmp_path, tiny_data, name, override, message):
    argv, out = stage(name, "imagefolder", ipc=override.get("ipc", 3))
    refused(with_data(tmp_path / "p", tiny_data, override), argv, out, "ParamsError", message)


# ---------------------------------------------------------------- data: prepare on a broken ImageFolder

def _unlink_all(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


def _link_outside_file(src: Path) -> None:
    (src / "train" / "a" / "1.png").unlink()
    (src / "train" / "a" / "1.png").symlink_to(put(src.parent / "elsewhere" / "x.png", (1, 2, 3)))


def _link_outside_class(src: Path) -> None:
    shutil.move(src / "train" / "b", src.parent / "elsewhere")
    (src / "train" / "b").symlink_to(src.parent / "elsewhere")


def _tiny_imagenet_escape(src: Path) -> None:
    shutil.rmtree(src / "val")
    put(src / "val" / "images" / "v0.png", (1, 1, 1))
    put(src.parent / "secret.png", (2, 2, 2))
    (src / "val" / "val_annotations.txt").write_text("v0.png\ta\t0\t0\t8\t8\n../../../secret.png\tb\t0\t0\t8\t8\n")


DATA_FAULTS = [
    # (break the tree at src, prepare params, kind, message; {src} is the tree's path)
    pytest.param(lambda src: _unlink_all(src / "train" / "b"), {}, "DataError",
                 "{src}/train/b: class folder is empty", id="empty-class-folder"),
    pytest.param(lambda src: (_unlink_all(src / "val" / "b"), (src / "val" / "b" / "notes.txt").write_text("hi")),
                 {}, "DataError", "{src}/val/b: no image files (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp), "
                 "only ['notes.txt']", id="class-of-non-images"),
    pytest.param(lambda src: put(src / "train" / "c" / "0.png", (5, 5, 5)), {}, "DataError",
                 "{src}: train and val class sets differ: only in train ['c'], only in val []", id="class-not-in-val"),
    pytest.param(lambda src: None, {"classes": ["a", "zz"]}, "DataError",
                 "prepare.classes: ['zz'] not found in {src}/train", id="kept-class-missing"),
    pytest.param(lambda src: shutil.rmtree(src / "val"), {}, "DataError",
                 "prepare.root = '{src}': no val/ folder in it", id="no-val-folder"),
    # corrupt files sit in val, so train images were already written to the temp output
    pytest.param(lambda src: put(src / "val" / "b" / "1.png", truncated("PNG")), {}, "DataError",
                 "{src}/val/b/1.png: unreadable image (image file is truncated", id="truncated-png"),
    pytest.param(lambda src: put(src / "val" / "b" / "1.jpg", truncated("JPEG")), {}, "DataError",
                 "{src}/val/b/1.jpg: unreadable image (Truncated File Read)", id="truncated-jpeg"),
    pytest.param(lambda src: put(src / "val" / "a" / "1.jpg", os.urandom(300)), {}, "DataError",
                 "{src}/val/a/1.jpg: unreadable image (not a format Pillow knows)", id="random-bytes-jpg"),
    pytest.param(lambda src: [put(src / "val" / "b" / "0.png", b"\x89PNG\r\n\x1a\n..."),
                              put(src / "val" / "b" / "1.jpeg", truncated("JPEG"))], {"on_corrupt": "skip"},
                 "DataError", "val classes ['b']: no readable image left after skipping 2 unreadable files (first: "
                 "{src}/val/b/0.png)", id="skip-leaves-class-empty"),
    pytest.param(lambda src: put(src / "train" / "a" / "0.jpg", (3, 3, 3)), {}, "DataError",
                 "{src}/train/a/0.png: same name as {src}/train/a/0.jpg once written as PNG", id="same-stem-twice"),
    pytest.param(lambda src: Image.fromarray(np.full((SIZE, SIZE), 0.5, np.float32)).save(src / "train/a/f.tif"),
                 {}, "DataError", "{src}/train/a/f.tif: floating-point pixels (mode F): no defined 8-bit scale",
                 id="float-pixels"),
    pytest.param(_link_outside_file, {}, "DataError",
                 "{src}/train/a/1.png: a symlink to {src}/../elsewhere/x.png, outside the dataset root {src}",
                 id="symlink-file-outside-root"),
    pytest.param(_link_outside_class, {}, "DataError",
                 "{src}/train/b: a symlink to {src}/../elsewhere, outside the dataset root {src}",
                 id="symlink-class-outside-root"),
    pytest.param(_tiny_imagenet_escape, {}, "DataError",
                 "{src}/val/val_annotations.txt:2: image: path '../../../secret.png' leaves its folder "
                 "(must be relative, without '..')",
                 id="annotation-path-escapes-root"),
]


@pytest.mark.parametrize("damage, prepare, kind, message", DATA_FAULTS)
def test_bad_data_is_refused_by_prepare(tmp_path, damage, prepare, kind, message):
    folder, src = source_project(tmp_path / "p", prepare)
    damage(src)
    argv, out = stage("prepare", "imagefolder")
    # paths as the messages show them: the tree's own, and resolved ones for link targets
    message = message.replace("{src}/../", f"{src.resolve().parent}/").replace("{src}", str(src))
    refused(folder, argv, out, kind, message)


def test_missing_root_is_refused(tmp_path):
    folder = project(tmp_path / "p", {"dataset": "imagefolder", "prepare": {"root": str(tmp_path / "nowhere")}})
    refused(folder, *stage("prepare", "imagefolder"), "DataError",
            f"prepare.root = '{tmp_path / 'nowhere'}': no train/ folder in it")


# ---------------------------------------------------------------- data: the loaders on damaged prepared data

@pytest.mark.parametrize("name, damage, message", [
    pytest.param("teacher", lambda d: (d / "train" / "b" / "1.png").write_bytes(truncated("PNG")),
                 "data/imagefolder/train/b/1.png: unreadable image (image file is truncated", id="truncated-png"),
    pytest.param("baseline", lambda d: shutil.rmtree(d / "train" / "b"),
                 "data/imagefolder/train/b: class folder missing (class 1 'b' of classes.json)",
                 id="class-folder-missing"),
])
def test_damaged_prepared_data_is_refused_by_the_loader(tmp_path, tiny_data, name, damage, message):
    folder = with_data(tmp_path / "p", tiny_data, {"ipc": 1}, copy=True)
    damage(folder / "data" / "imagefolder")
    refused(folder, *stage(name, "imagefolder", ipc=1), "DataError", message)


# ---------------------------------------------------------------- data that is odd but valid

def test_image_extensions_are_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from stages.data.sources import IMAGE_EXTENSIONS

    assert IMAGE_EXTENSIONS == IMG_EXTENSIONS


def test_every_image_mode_is_converted_to_the_right_rgb(tmp_path):
    """Gray, RGBA, palette, 1-bit and 16-bit images mixed into a class come out as the RGB they show.
    16-bit samples are scaled (v·255/65535), not clipped: Pillow's convert('RGB') turns them white."""
    folder, src = source_project(tmp_path / "p")
    a = src / "train" / "a"
    wide = np.array([0, 128, 129, 257, 1000, 32768, 65280, 65535] * SIZE, dtype=np.uint16).reshape(SIZE, SIZE)
    gray = np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE) * 4
    palette = Image.new("P", (SIZE, SIZE))
    palette.putpalette([0, 0, 0, 200, 30, 60] + [0] * 762)
    palette.putdata([i % 2 for i in range(SIZE * SIZE)])
    put(a / "gray.png", gray)
    put(a / "rgba.png", Image.new("RGBA", (SIZE, SIZE), (10, 20, 30, 0)))
    put(a / "gray_alpha.png", Image.new("LA", (SIZE, SIZE), (77, 128)))
    put(a / "palette.png", palette)
    put(a / "bits.png", Image.new("1", (SIZE, SIZE), 1))
    put(a / "sixteen.png", wide)  # I;16
    put(a / "sixteen_tiff.tif", wide)  # I;16 in TIFF
    put(a / "thirtytwo.tif", wide.astype(np.int32))  # I (32-bit) holding 16-bit values
    with Image.open(a / "sixteen.png") as img, Image.open(a / "thirtytwo.tif") as img32:
        assert (img.mode, img32.mode) == ("I;16", "I")
        assert np.asarray(img.convert("RGB")).max() == 255 and (np.asarray(img.convert("RGB")) == 255).mean() > 0.6
    scaled = np.array([0, 0, 1, 1, 4, 128, 254, 255] * SIZE, dtype=np.uint8).reshape(SIZE, SIZE)
    expected = {"gray": gray, "rgba": (10, 20, 30), "gray_alpha": (77, 77, 77),
                "palette": np.array([(0, 0, 0), (200, 30, 60)] * (SIZE * SIZE // 2), np.uint8).reshape(SIZE, SIZE, 3),
                "bits": (255, 255, 255), "sixteen": scaled, "sixteen_tiff": scaled, "thirtytwo": scaled}
    run_stage(folder, *stage("prepare", "imagefolder")[0])

    data = folder / "data" / "imagefolder"
    classes = read_classes(data)
    loaded = load_imagefolder(data / "train", classes, SIZE)  # the downstream loader sees the same pixels
    rows = {path: loaded.images[i].permute(1, 2, 0).numpy() for i, path in enumerate(loaded.paths)}
    for stem, want in expected.items():
        want = np.asarray(want, np.uint8)
        want = np.broadcast_to(want[..., None] if want.ndim == 2 else want, (SIZE, SIZE, 3))
        with Image.open(data / "train" / "a" / f"{stem}.png") as img:
            assert img.mode == "RGB"
            assert np.array_equal(np.asarray(img), want), stem
        assert np.array_equal(rows[f"a/{stem}.png"], want), stem


def test_corrupt_images_are_skipped_and_counted_when_asked(tmp_path):
    folder, src = source_project(tmp_path / "p", {"on_corrupt": "skip"})
    bad = [put(src / "train" / "b" / "x.png", truncated("PNG")), put(src / "train" / "a" / "y.jpg", truncated("JPEG")),
           put(src / "val" / "a" / "z.jpeg", os.urandom(300))]
    result = run_stage(folder, *stage("prepare", "imagefolder")[0])
    meta = json.loads((folder / "data" / "imagefolder" / "meta.json").read_text())
    assert meta["skipped"] == {"count": 3, "files": sorted(map(str, bad[:2])) + [str(bad[2])]}  # train, then val
    assert meta["train_counts"] == {"a": 2, "b": 2} and meta["val_counts"] == {"a": 1, "b": 1}
    assert "prepare: skipped 3 unreadable images" in result.stdout


def test_files_that_are_not_images_are_ignored_and_listed(tmp_path):
    """Only torchvision's ImageFolder extensions (any case) are images; notes.txt is ignored and listed in
    meta.json (on_corrupt is for images that don't decode), hidden files like .DS_Store are skipped unlisted."""
    folder, src = source_project(tmp_path / "p")
    (src / "train" / "a" / "notes.txt").write_text("collected 2019")
    (src / "train" / "a" / ".DS_Store").write_bytes(os.urandom(64))
    put(src / "train" / "a" / ".ipynb_checkpoints" / "0-checkpoint.png", (0, 0, 0))
    put(src / "train" / "b" / "UPPER.PNG", (7, 8, 9))
    result = run_stage(folder, *stage("prepare", "imagefolder")[0])
    data = folder / "data" / "imagefolder"
    meta = json.loads((data / "meta.json").read_text())
    assert meta["ignored"] == {"count": 1, "files": [str(src / "train" / "a" / "notes.txt")]}
    assert meta["skipped"]["count"] == 0 and meta["train_counts"] == {"a": 2, "b": 3}
    assert sorted(p.name for p in (data / "train" / "a").iterdir()) == ["0.png", "1.png"]
    assert f"prepare: ignored 1 files that are not images, e.g. {src / 'train' / 'a' / 'notes.txt'}" in result.stdout


def test_non_ascii_and_spaces_in_names_work_end_to_end(tmp_path):
    """prepare, then baseline@random and the loaders, on classes and files named in other scripts and with spaces."""
    folder = project(tmp_path / "p", {"dataset": "imagefolder", "ipc": 1,
                                      "prepare": {"root": str(tmp_path / "p" / "src ü"), "image_size": SIZE}})
    names = {"café au lait": ["é 1.png", "photo 2.JPG"], "日本 語": ["写真 1.png", "b c.jpeg"]}
    for c, (name, files) in enumerate(names.items()):
        for i, file in enumerate(files):
            put(folder / "src ü" / "train" / name / file, (100 * c, 20 * i, 50))
        put(folder / "src ü" / "val" / name / "v 0.png", (100 * c, 0, 0))
    run_stage(folder, *stage("prepare", "imagefolder")[0])
    data = folder / "data" / "imagefolder"
    classes = read_classes(data)
    assert classes == sorted(names)
    train = load_imagefolder(data / "train", classes, SIZE)
    assert sorted(train.paths) == ["café au lait/photo 2.png", "café au lait/é 1.png",
                                   "日本 語/b c.png", "日本 語/写真 1.png"]
    assert train.labels.tolist() == [0, 0, 1, 1]
    argv, out = stage("baseline", "imagefolder", ipc=1)
    run_stage(folder, *argv)
    card, images = load_set(folder / out, data)  # checks the card's SHA256SUMS over the odd names too
    assert card.num_images == 2 and images.labels.tolist() == [0, 1]


def test_symlinks_inside_the_root_or_the_dvc_cache_are_followed(tmp_path):
    """A link to elsewhere in the dataset root is fine, and so is one into the project's DVC cache
    (what `dvc add` of the source folder with cache.type symlink makes)."""
    folder, src = source_project(tmp_path / "p")
    shutil.move(src / "train" / "b", src / "shared b")
    (src / "train" / "b").symlink_to(src / "shared b")  # a class folder linked inside the root
    (src / "train" / "a" / "1.png").unlink()
    cached = put(folder / ".dvc" / "cache" / "files" / "md5" / "ab" / "cdef", encoded(noise(), "PNG"))
    (src / "train" / "a" / "1.png").symlink_to(cached)  # a file linked into the DVC cache
    run_stage(folder, *stage("prepare", "imagefolder")[0])
    meta = json.loads((folder / "data" / "imagefolder" / "meta.json").read_text())
    assert meta["train_counts"] == {"a": 2, "b": 2}
