"""The `photos` dataset (crops of scikit-image's sample photographs) and every method's stages run on it.

Digits hid bugs that natural images show (images that never move, near-copies, sets of noise): these tests
check those invariants on photos, which build offline like digits.
"""
import json
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.data import sources
from stages.data.distilled import load_set
from stages.data.folder import decode_rgb, load_imagefolder, read_classes
from stages.models import load_checkpoint
from stages.models.probes import teacher_view
from tests.conftest import REPO, TINY, default_params, dvc, make_project, merge, run_stage, write_params

# Tiny photos: 16 px, 30 crops per class; one small ConvNet teacher that every recover method reads.
PHOTOS = {"dataset": "photos", "class_prompt": "a photo of {name}",
          "prepare": {"image_size": 16, "crops": 30},
          "teacher": {"archs": ["convnet"], "epochs": 8, "flip": True}, "evaluate": {"flip": True},
          "infer": {"teachers": ["convnet"]}, "edc": {"observers": ["convnet"]}}
# The thresholds the report flags by (params `flags`): a test and the report cannot disagree on what noise is.
FLAGS = default_params()["flags"]
NOISE_FACTOR = FLAGS["noise_factor"]    # a set the teacher reads below this x chance is noise
COPIES_MARGIN = FLAGS["copies_margin"]  # near-copies: intra-class cosine above the real images' by more


def test_photos_build_offline_and_are_fixed_by_seed(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("photos tried to open a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    a, b, other = sources.photos(20, 0.2, 0), sources.photos(20, 0.2, 0), sources.photos(20, 0.2, 1)
    assert a.classes == [name for name, _ in sources.PHOTOS] and len(a.classes) == 10
    assert [len(a.splits[s]) for s in ("train", "val")] == [160, 40]
    assert [item[3] for item in a.splits["train"]] == [item[3] for item in b.splits["train"]]
    assert [item[3] for item in a.splits["train"]] != [item[3] for item in other.splits["train"]]
    # val crops come from the right-hand fifth of each photo, train crops from the rest: no shared pixel
    for label, (_, filename) in enumerate(sources.PHOTOS):
        width = sources._photo(filename).shape[1]
        boxes = {s: [item[3] for item in a.splits[s] if item[1] == label] for s in ("train", "val")}
        x_ranges = {s: [tuple(int(v) for v in box.split(", ")[1].rstrip("]").split(":")) for box in boxes[s]]
                    for s in boxes}
        assert max(x1 for _, x1 in x_ranges["train"]) <= round(width * 0.8) <= min(x0 for x0, _ in x_ranges["val"])
    crop = a.splits["train"][0][2]()
    assert crop.dtype == np.uint8 and crop.ndim == 3 and crop.shape[0] == crop.shape[1] and crop.shape[2] == 3


@pytest.fixture(scope="module")
def photo_project(tmp_path_factory) -> Path:
    """photos prepared, a teacher, DELT's ranking and init, and the three recover sets, as dvc.yaml runs them."""
    root = tmp_path_factory.mktemp("photos")
    (root / "stages").symlink_to(REPO / "stages")
    write_params(root, merge(TINY, merge(PHOTOS, {"ipc": 3})))
    data, teachers = "data/photos", "artifacts/photos/teachers"
    run_stage(root, "prepare", "--out", data)
    run_stage(root, "teacher", "--arch", "convnet", "--data", data, "--out", f"{teachers}/convnet")
    run_stage(root, "rank", "--teacher", f"{teachers}/convnet", "--data", data, "--out", "ranking.csv")
    run_stage(root, "select", "--ranking", "ranking.csv", "--data", data, "--out", "init")
    for method, init in (("sre2l", "noise"), ("delt", "init"), ("infer", f"{data}/train")):
        run_stage(root, "recover", method, "--teachers", teachers, "--init", init, "--data", data,
                  "--out", method, "--stats", f"{method}.json")
    return root


def teacher_reading(project: Path, set_dir: Path, dataset: str = "photos") -> dict:
    """The evaluate teacher's fidelity and intra-class cosine on a set, and the cosine of the real train set."""
    data = project / "data" / dataset
    meta = json.loads((data / "meta.json").read_text())
    teacher, t_meta = load_checkpoint(project / "artifacts" / dataset / "teachers" / "convnet", meta["classes_sha256"])
    _, images = load_set(set_dir, data)
    real = load_imagefolder(data / "train", read_classes(data), meta["image_size"])
    norm = (t_meta["mean"], t_meta["std"])
    return {**teacher_view(teacher, images.normalised(*norm), images.labels),
            "real_cosine": teacher_view(teacher, real.normalised(*norm), real.labels)["intra_class_cosine"],
            "chance": 1 / len(meta["classes"])}


def moved(a: Path, b: Path) -> float:
    """Mean absolute pixel difference of two image files (0..255)."""
    return float(np.abs(decode_rgb(a).astype(np.int16) - decode_rgb(b).astype(np.int16)).mean())


def check_not_noise_nor_copies(reading: dict, method: str) -> None:
    assert reading["teacher_fidelity"] >= NOISE_FACTOR * reading["chance"], \
        f"{method}: the teacher reads {reading['teacher_fidelity']:.2f} of its images as their class (noise)"
    assert reading["intra_class_cosine"] <= reading["real_cosine"] + COPIES_MARGIN, \
        f"{method}: intra-class cosine {reading['intra_class_cosine']:.3f} vs real {reading['real_cosine']:.3f}"


def check_delt_moved(init: Path, delt: Path) -> None:
    """Every DELT image, late ranks included, differs from the real image `select` started it from
    (select writes <class>/<k>_<source name>, DELT <class>/<k>.png, k the rank)."""
    pairs = []
    for folder in sorted(p for p in delt.iterdir() if p.is_dir()):
        starts = {int(f.name.split("_")[0]): f for f in (init / folder.name).glob("*.png")}
        pairs += [(f, starts[int(f.stem)]) for f in sorted(folder.glob("*.png"))]
    assert len(pairs) == len(list(init.rglob("*.png"))) > 0
    still = [str(path.relative_to(delt)) for path, start in pairs if moved(path, start) == 0]
    assert not still, f"DELT images equal to their init: {still}"


def check_infer_moved(infer: Path) -> None:
    """INFER's compensated images differ from their real bases (same class, id - ipc_init)."""
    card = json.loads((infer / "card.json").read_text())
    ipc_init = card["synthesis"]["ipc_init"]
    assert ipc_init > 0 and card["synthesis"]["compensators_per_base_set"] > 0
    for folder in sorted(p for p in infer.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.png"))
        compensated = [f for f in files if int(f.stem) >= ipc_init]
        assert compensated
        for f in compensated:
            base = folder / f"{int(f.stem) % ipc_init:0{len(f.stem)}d}.png"
            assert moved(f, base) > 0, f"INFER {f.relative_to(infer)} equals its base {base.name}"


def test_recover_methods_on_photos_move_and_are_neither_noise_nor_copies(photo_project):
    check_delt_moved(photo_project / "init", photo_project / "delt")
    check_infer_moved(photo_project / "infer")
    for method in ("sre2l", "delt", "infer"):
        check_not_noise_nor_copies(teacher_reading(photo_project, photo_project / method), method)


@pytest.mark.slow
def test_every_method_on_photos(tmp_path):
    """The whole pipeline (`dvc repro`, every method) on tiny photos: the recover invariants above, and every
    set the teacher reads at chance is flagged by the report."""
    project = make_project(tmp_path / "project", merge(TINY, merge(PHOTOS, {
        "teacher": {"archs": ["convnet", "resnet18_modified"]}, "infer": {"teachers": ["convnet", "resnet18_modified"]},
        "edc": {"observers": ["convnet", "resnet18_modified"]},
        "caption": {"captioner": "attributes"}})))
    dvc(project, "repro")
    art = project / "artifacts" / "photos"
    check_delt_moved(art / "ipc3" / "init" / "medium", art / "ipc3" / "distilled" / "delt")
    check_infer_moved(art / "ipc3" / "distilled" / "infer")
    for method in ("sre2l", "delt", "infer"):
        check_not_noise_nor_copies(teacher_reading(project, art / "ipc3" / "distilled" / method), method)
    table = pd.read_csv(art / "results.csv")
    sets = table.drop_duplicates(["method", "ipc"])
    assert set(sets.method) >= {"random", "sre2l", "delt", "infer", "d4m", "vlcp", "rded", "podd", "full"}
    chance = 1 / len(json.loads((project / "data" / "photos" / "classes.json").read_text()))
    noise = sets[sets.teacher_fidelity < NOISE_FACTOR * chance]
    unflagged = [m for m, flag in zip(noise.method, noise.flag.fillna("")) if not flag]
    assert not unflagged, f"sets at chance that the report does not flag: {unflagged}"
