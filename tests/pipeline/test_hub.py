"""Hub export (a folder `datasets` loads, its dataset card) and evaluating external sets (import_set), offline."""
from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from stages import export_hub, import_set
from stages.data.augment import Augment, plan_epoch
from stages.data.distilled import load_set, read_labels, write_labels
from stages.data.folder import load_imagefolder
from stages.pipeline.card import EVALUATION_NOTE, write_card
from stages.pipeline.errors import DataError, ParamsError
from stages.training.soft_labels import epoch_file, write_epoch
from tests.conftest import write_params

CLASSES = ["zero", "one", "two"]  # not alphabetical: the class order must come from classes.json
IPC = 2


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def make_set(root, with_labels=True):
    """A 3-class set of 8 px images with shipped logits, FKD epochs and a metrics file, laid out as the pipeline
    lays out artifacts/<ds>/ipc<N>/{distilled,soft_labels,metrics}."""
    data = root / "data" / "digits"
    data.mkdir(parents=True)
    (data / "classes.json").write_text(json.dumps(CLASSES))
    set_dir = root / "artifacts" / "digits" / f"ipc{IPC}" / "distilled" / "toy"
    rng = np.random.default_rng(0)
    paths = []
    for name in CLASSES:
        (set_dir / name).mkdir(parents=True)
        for i in range(IPC):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(set_dir / name / f"{i}.png")
            paths.append(f"{name}/{i}.png")
    logits = torch.from_numpy(rng.normal(size=(len(paths), len(CLASSES))).astype(np.float32))
    if with_labels:
        write_labels(set_dir, "labels.safetensors", logits, paths)
    write_card(set_dir, method="toy", dataset="digits", ipc=IPC, classes=CLASSES, num_images=len(paths),
               labels="labels.safetensors" if with_labels else None, params={"ipc": IPC}, teacher=None,
               evaluation=EVALUATION_NOTE)
    fkd = set_dir.parent.parent / "soft_labels" / "toy"
    fkd.mkdir(parents=True)
    aug = Augment((0.5, 1.0), False, "cutmix", 1.0, 8)
    for epoch in range(2):
        write_epoch(epoch_file(fkd, epoch), plan_epoch(len(paths), 4, rng, aug), torch.randn(len(paths), 3))
    from stages.pipeline.artifacts import fkd_files  # export_hub checks the epochs against this record

    (fkd / "fkd.json").write_text(json.dumps({"epochs": 2, "batch_size": 4, "num_images": len(paths),
                                              "files": fkd_files(fkd)}))
    metrics = set_dir.parent.parent / "metrics" / "toy.json"
    metrics.parent.mkdir()
    stat = {"mean": 0.5, "std": 0.01}
    fkd_result = {"top1": stat, "top1_best": stat, "top5": stat, "per_seed_top1": [0.49, 0.51]}
    metrics.write_text(json.dumps({"method": "toy", "ipc": IPC, "images": len(paths), "pixels": 1, "bytes": 1,
                                   "train_bytes": 10, "protocols": {"fkd": fkd_result}, "seeds": 2,
                                   "student": "convnet", "epochs": 10, "teacher_fidelity": 0.9,
                                   "intra_class_cosine": None}))  # the keys evaluate writes (report's schema)
    return set_dir, data, logits


def run_main(module, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    module.main()


def test_export_loads_with_datasets_in_class_order_and_the_card_parses(tmp_path, monkeypatch, offline):
    import datasets
    from huggingface_hub import DatasetCard

    set_dir, data, logits = make_set(tmp_path)
    out = tmp_path / "hub"
    run_main(export_hub, monkeypatch, "--set", str(set_dir), "--out", str(out), "--data", str(data),
             "--license", "cc-by-4.0")
    loaded = datasets.load_dataset(str(out), split="train")
    assert loaded.features["label"].names == CLASSES
    _, images = load_set(set_dir, data)
    assert loaded["label"] == images.labels.tolist() == [0, 0, 1, 1, 2, 2]
    pixels = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1) for im in loaded["image"]])
    assert torch.equal(pixels, images.images)  # exactly the set's images, in class order
    assert torch.allclose(torch.tensor(loaded["logits"]), read_labels(set_dir, load_set(set_dir, data)[0], images)[0])
    fkd = datasets.load_dataset(str(out), export_hub.FKD_CONFIG, split="train")
    assert len(fkd) == 2 * 6 and sorted(set(fkd["epoch"])) == [0, 1]
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "cc-by-4.0" and "dataset-distillation" in card.data.tags
    assert card.data.to_dict()["ddpipe"]["method"] == "toy" and card.data.to_dict()["ddpipe"]["ipc"] == IPC
    assert "| fkd | 50.0 ± 1.0 |" in card.text and "Evaluation recipe" in card.text


def test_upload_without_network_stops_with_an_error_after_writing_the_folder(tmp_path, monkeypatch, capsys):
    from stages.pipeline import cli

    set_dir, data, _ = make_set(tmp_path, with_labels=False)
    with socket.socket() as s:  # a port nothing listens on: the upload's connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tmp_path / "hub"
    monkeypatch.setattr(sys, "argv", ["export_hub", "--set", str(set_dir), "--out", str(out), "--repo-id", "u/toy"])
    with pytest.raises(SystemExit) as stop:
        cli.run(export_hub.main)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: UploadError: upload of") and "hf upload u/toy" in err[-1]
    assert (out / "README.md").is_file() and (out / export_hub.TRAIN_FILE).is_file()


def test_export_refuses_damaged_metrics_naming_the_file(tmp_path, monkeypatch, capsys, offline):
    """The metrics exported beside a set are read by the report's schema: a NaN accuracy is one error line."""
    from stages.pipeline import cli

    set_dir, _, _ = make_set(tmp_path, with_labels=False)
    metrics = set_dir.parent.parent / "metrics" / "toy.json"
    metrics.write_text(metrics.read_text().replace('"teacher_fidelity": 0.9', '"teacher_fidelity": NaN'))
    out = tmp_path / "hub"
    monkeypatch.setattr(sys, "argv", ["export_hub", "--set", str(set_dir), "--out", str(out)])
    with pytest.raises(SystemExit) as stop:
        cli.run(export_hub.main)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: ArtifactError: {metrics}: "), err
    assert not out.exists()


def import_project(root, monkeypatch, external):
    monkeypatch.chdir(root)
    write_params(root, {"ipc": IPC, "external": external})


def test_import_reads_back_an_export_with_its_labels(tmp_path, monkeypatch, offline):
    set_dir, data, _ = make_set(tmp_path)
    run_main(export_hub, monkeypatch, "--set", str(set_dir), "--out", str(tmp_path / "hub"))
    import_project(tmp_path, monkeypatch, {"theirs": {"path": str(tmp_path / "hub"), "method": "their-method"}})
    out = tmp_path / "artifacts/digits/ipc2/distilled/theirs"
    run_main(import_set, monkeypatch, "theirs", "--data", "data/digits", "--out", str(out))
    card, images = load_set(out, data)
    _, original = load_set(set_dir, data)
    assert card.method == "their-method" and card.params["origin"]["method"] == "toy"
    assert torch.equal(images.images, original.images) and torch.equal(images.labels, original.labels)
    assert torch.allclose(read_labels(out, card, images)[0], read_labels(set_dir, load_set(set_dir, data)[0],
                                                                        original)[0])


def test_import_maps_an_imagefolder_of_another_class_order_and_names_a_missing_class(tmp_path, monkeypatch):
    set_dir, data, _ = make_set(tmp_path, with_labels=False)
    theirs = tmp_path / "theirs"
    for k, name in enumerate(reversed(CLASSES)):  # created in another order, as gray PNGs
        (theirs / name).mkdir(parents=True)
        for i in range(IPC):
            Image.open(set_dir / name / f"{i}.png").convert("L").save(theirs / name / f"img{k}{i}.png")
    import_project(tmp_path, monkeypatch, {"folder": {"path": "theirs"}})  # method: the name
    out = tmp_path / "artifacts/digits/ipc2/distilled/folder"
    run_main(import_set, monkeypatch, "folder", "--data", "data/digits", "--out", str(out))
    card, images = load_set(out, data)
    assert card.method == "folder" and card.classes == CLASSES and card.labels is None
    assert images.labels.tolist() == [0, 0, 1, 1, 2, 2]
    gray = load_imagefolder(theirs, CLASSES)
    assert torch.equal(images.images, gray.images)  # each image under its own class, classes.json order

    (theirs / "two").rename(theirs / "deux")
    with pytest.raises(DataError, match="class 'two' of classes.json is missing"):
        run_main(import_set, monkeypatch, "folder", "--data", "data/digits", "--out", str(out))
    (theirs / "deux").rename(theirs / "two")
    (theirs / "three").mkdir()
    with pytest.raises(DataError, match="class 'three' is not a class of this dataset"):
        run_main(import_set, monkeypatch, "folder", "--data", "data/digits", "--out", str(out))


def test_import_refuses_another_budget_and_params_refuse_a_builtin_name(tmp_path, monkeypatch):
    from stages.pipeline import params

    make_set(tmp_path, with_labels=False)
    import_project(tmp_path, monkeypatch, {"bigger": {"path": "artifacts/digits/ipc2/distilled/toy", "method": None}})
    write_params(tmp_path, {"ipc": 1, "external": {"bigger": {"path": "artifacts/digits/ipc2/distilled/toy",
                                                              "method": None}}})
    with pytest.raises(ParamsError, match="ipc = 1"):
        run_main(import_set, monkeypatch, "bigger", "--data", "data/digits", "--out", str(tmp_path / "x"))
    write_params(tmp_path, {"external": {"sre2l": {"path": "x", "method": None}}})
    with pytest.raises(ParamsError, match="built-in sets"):
        params.load()
    write_params(tmp_path, {"external": {"mine": {"path": "x", "method": "delt"}}})
    with pytest.raises(ParamsError, match="already names another evaluated set"):
        params.load()


def test_export_and_import_runs_are_typed_functions_tests_call_in_process(tmp_path, monkeypatch, offline):
    from pathlib import Path

    from stages.pipeline import params

    set_dir, data, _ = make_set(tmp_path)
    done = export_hub.run(set_dir, tmp_path / "hub", data, no_soft_labels=True, license_id="cc-by-4.0")
    assert done == {"images": 6, "labels": "logits", "fkd_epochs": 0, "metrics": True}  # metrics found beside it
    assert not (tmp_path / "hub" / "fkd").exists() and (tmp_path / "hub" / "metrics.json").is_file()

    import_project(tmp_path, monkeypatch, {"theirs": {"path": str(tmp_path / "hub")}})
    card = import_set.run(params.load(), "theirs", Path("data/digits"), Path("out"))
    assert card.method == "theirs" and card.labels == import_set.LABELS and card.params["external"]["format"] == "hub"
    assert card.synthesis == {"imported": 6, "per_class": [2, 2, 2]} and card.params["origin"]["method"] == "toy"
