"""prepare: deterministic digits split, fixed class order, ImageFolder layouts.

Bad sources (corrupt images, mismatched classes, links out of the root, ...) are in
tests/robustness/test_faults_input.py."""
import json
from pathlib import Path

from PIL import Image

from tests.conftest import TINY, run_stage, write_params


def files_of(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))


def test_digits_split_is_stratified_and_fixed_by_seed(prepared, tmp_path):
    data = prepared / "data" / "digits"
    meta = json.loads((data / "meta.json").read_text())
    assert json.loads((data / "classes.json").read_text()) == [str(d) for d in range(10)]
    assert sum(meta["train_counts"].values()) + sum(meta["val_counts"].values()) == 1797
    assert min(meta["val_counts"].values()) >= 34  # 20% of every class (174..183 images each)
    first = files_of(data)

    (tmp_path / "stages").symlink_to(prepared / "stages")
    write_params(tmp_path, TINY)
    run_stage(tmp_path, "prepare", "--out", "again")
    assert files_of(tmp_path / "again") == first
    assert (tmp_path / "again" / "train" / "3").iterdir().__next__().read_bytes() == \
        (data / "train" / "3" / next((tmp_path / "again" / "train" / "3").iterdir()).name).read_bytes()

    write_params(tmp_path, {**TINY, "seed": 1})
    run_stage(tmp_path, "prepare", "--out", "other")
    assert files_of(tmp_path / "other") != first


def test_images_are_square_rgb_at_image_size(prepared):
    path = next((prepared / "data" / "digits" / "val" / "7").iterdir())
    with Image.open(path) as img:
        assert img.mode == "RGB" and img.size == (16, 16)


def make_tree(root, layout):
    for rel, color in layout.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 12), color).save(path)


def imagefolder_project(tmp_path, prepared, extra=None):
    (tmp_path / "stages").symlink_to(prepared / "stages")
    write_params(tmp_path, {**TINY, "dataset": "imagefolder", "ipc": 1,
                            "prepare": {"root": str(tmp_path / "src"), **(extra or {})}})


def test_imagefolder_keeps_a_class_subset_in_the_given_order(tmp_path, prepared):
    make_tree(tmp_path / "src", {f"{split}/{c}/{i}.jpg": (i * 40, 0, 0) for split in ("train", "val")
                                 for c in ("n02", "n01", "n03") for i in range(2)})
    imagefolder_project(tmp_path, prepared, {"classes": ["n03", "n01"]})
    run_stage(tmp_path, "prepare", "--out", "data/imagefolder")
    data = tmp_path / "data" / "imagefolder"
    assert json.loads((data / "classes.json").read_text()) == ["n03", "n01"]
    assert files_of(data / "train") == ["n01/0.png", "n01/1.png", "n03/0.png", "n03/1.png"]
    with Image.open(data / "train" / "n01" / "1.png") as img:
        assert img.size == (16, 16)


def test_tiny_imagenet_val_layout_is_understood(tmp_path, prepared):
    make_tree(tmp_path / "src", {"train/n1/images/t0.JPEG": (1, 2, 3), "train/n2/images/t1.JPEG": (3, 2, 1),
                                 "val/images/val_0.JPEG": (1, 2, 3), "val/images/val_1.JPEG": (3, 2, 1)})
    (tmp_path / "src" / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn1\t0\t0\t8\t8\n"
                                                                 "val_1.JPEG\tn2\t0\t0\t8\t8\n")
    imagefolder_project(tmp_path, prepared)
    run_stage(tmp_path, "prepare", "--out", "data/imagefolder")
    assert files_of(tmp_path / "data" / "imagefolder" / "val") == ["n1/val_0.png", "n2/val_1.png"]


def test_prepare_run_in_process_lists_the_files_and_measures_the_train_pixels(tmp_path, monkeypatch):
    from stages import prepare
    from stages.pipeline import params

    make_tree(tmp_path / "src", {f"{split}/{c}/{i}.png": (i * 40, 100 + i * 20, 200 - i * 60)
                                 for split in ("train", "val") for c in ("n02", "n01") for i in range(2)})
    (tmp_path / "src" / "train" / "n01" / "broken.png").write_bytes(b"not a png")
    write_params(tmp_path, {**TINY, "dataset": "imagefolder", "ipc": 1,
                            "prepare": {"root": str(tmp_path / "src"), "copy": False, "on_corrupt": "skip"}})
    monkeypatch.chdir(tmp_path)
    meta = prepare.run(params.load(), Path("data/imagefolder"))
    data = tmp_path / "data" / "imagefolder"
    assert meta == json.loads((data / "meta.json").read_text())
    assert meta["classes"] == ["n01", "n02"] and meta["train_counts"] == meta["val_counts"] == {"n01": 2, "n02": 2}
    # two solid colours per class: per channel the mean of the pair and half their distance
    assert meta["mean"] == [round(v / 255, 6) for v in (20, 110, 170)]
    assert meta["std"] == [round(v / 255, 6) for v in (20, 10, 30)]
    assert meta["skipped"]["files"] == [str(tmp_path / "src" / "train" / "n01" / "broken.png")]
    assert (data / "manifest.parquet").is_file() and not list(data.rglob("*.png"))  # listed, not copied
