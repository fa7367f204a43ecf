"""Issue 30, "the doors the last wave opened": each reported input, and the one line it now ends in."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stages import export_hub
from tests.fuzz import run_inprocess

REPO = Path(__file__).resolve().parents[2]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


# --- 6. error lines are one line ---------------------------------------------------------------------------------

def test_a_path_holding_a_newline_or_an_escape_prints_as_one_escaped_line(tmp_path):
    bad = tmp_path / "set\nerror: Fake: injected\x1b[2J"
    outcome = run_inprocess(export_hub.main, ["--set", str(bad), "--out", str(tmp_path / "hub")], tmp_path)
    assert outcome.code == 2
    lines = outcome.stderr.splitlines()
    assert lines == [f"error: ArtifactError: {tmp_path}/set\\nerror: Fake: injected\\x1b[2J/card.json: missing; "
                     "--set must be a distilled set folder"]


def test_a_file_name_that_is_not_utf8_prints_escaped_not_a_traceback(tmp_path):
    """A name with a byte that is not UTF-8 (a lone surrogate in Python) cannot even be written to stderr as is."""
    bad = Path(os.fsdecode(b"set-\xff"))
    result = subprocess.run([sys.executable, "-m", "stages.export_hub", "--set", os.fsencode(bad), "--out", "hub"],
                            cwd=tmp_path, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.decode().splitlines() == [
        "error: ArtifactError: set-\\udcff/card.json: missing; --set must be a distilled set folder"]


# --- a small project for import_set: classes.json, params.yaml with `external` entries --------------------------

CLASSES = ["zero", "one", "two"]
IPC = 2


def png(rgb=(10, 20, 30), size=(8, 8)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def import_project(root: Path, external: dict) -> Path:
    import json

    from tests.conftest import write_params

    data = root / "data" / "digits"
    data.mkdir(parents=True, exist_ok=True)
    (data / "classes.json").write_text(json.dumps(CLASSES))
    write_params(root, {"ipc": IPC, "external": external})
    return root


def imagefolder(folder: Path, shade: int = 0) -> Path:
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(IPC):
            (folder / name / f"{i}.png").write_bytes(png((shade + 40 * c, 10 * i, 30 + 20 * i + c)))
    return folder


def hub_folder(folder: Path, labels: list, logits: list | None = None, names=CLASSES, images=None,
               readme: str | None = None, file: str = "data/train-00000-of-00001.parquet") -> Path:
    """A Parquet file with the `datasets` features in its metadata, as `Dataset.to_parquet` writes it."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    images = images or [png((20 * i, 0, 0)) for i in range(len(labels))]
    columns = {"image": pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)]),
               "label": pa.array(labels, pa.int64())}
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": names}}
    if logits is not None:
        columns["logits"] = pa.array(logits, pa.list_(pa.float32()))
        features["logits"] = {"_type": "List", "feature": {"_type": "Value", "dtype": "float32"}}
    table = pa.table(columns).replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})})
    (folder / file).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / file)
    if readme is not None:
        (folder / "README.md").write_text(readme)
    return folder


def import_run(root: Path, name: str, out: str = "out"):
    from stages import import_set

    return run_inprocess(import_set.main, [name, "--data", "data/digits", "--out", out], root)


def one_error(outcome) -> str:
    lines = error_lines(outcome.stderr)
    assert outcome.code == 2 and len(lines) == 1, (outcome.code, outcome.stderr[-1500:])
    return lines[0]


# --- 2. nothing is read from outside the root the user named ----------------------------------------------------

def test_an_imagefolder_set_with_a_link_out_of_it_is_refused(tmp_path):
    elsewhere = imagefolder(tmp_path / "elsewhere")
    theirs = imagefolder(tmp_path / "theirs")
    import_project(tmp_path, {"theirs": {"path": "theirs"}})
    (theirs / "one" / "1.png").unlink()
    (theirs / "one" / "1.png").symlink_to(elsewhere / "one" / "1.png")
    assert one_error(import_run(tmp_path, "theirs")) == (
        f"error: DataError: theirs/one/1.png: a symlink to {elsewhere}/one/1.png, outside the set folder theirs")
    (theirs / "one" / "1.png").unlink()
    (theirs / "one" / "1.png").write_bytes(png())
    shutil_rmtree(theirs / "two")
    (theirs / "two").symlink_to(elsewhere / "two")
    assert one_error(import_run(tmp_path, "theirs")) == (
        f"error: DataError: theirs/two: a symlink to {elsewhere}/two, outside the set folder theirs")
    assert not (tmp_path / "out").exists()


def shutil_rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def test_hub_readme_configs_pointing_outside_the_folder_are_refused(tmp_path):
    outside = hub_folder(tmp_path / "outside", [0, 0, 1, 1, 2, 2])
    hub = hub_folder(tmp_path / "hub", [0, 0, 1, 1, 2, 2])
    import_project(tmp_path, {"hub": {"path": "hub"}})
    lines = {}
    for name, pattern in (("absolute", f"{outside}/data/*.parquet"), ("dotdot", "../outside/data/*.parquet"),
                          ("url", "hf://datasets/someone/else/*.parquet")):
        (hub / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                       f"    path: {pattern}\n---\n# a card\n")
        lines[name] = one_error(import_run(tmp_path, "hub"))
    assert lines["absolute"] == (f"error: DataError: hub/README.md: configs: data_files '{outside}/data/*.parquet': "
                                 f"path '{outside}/data/*.parquet' leaves its folder (must be relative, without '..')")
    assert lines["dotdot"].startswith("error: DataError: hub/README.md: configs: data_files '../outside/data/*.parquet'"
                                      ": path '../outside/data/*.parquet' leaves its folder")
    assert "path 'hf://datasets/someone/else/*.parquet' leaves its folder" in lines["url"]
    (hub / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: linked/*.parquet\n---\n")
    (hub / "linked").mkdir()
    (hub / "linked" / "x.parquet").symlink_to(outside / "data" / "train-00000-of-00001.parquet")
    assert one_error(import_run(tmp_path, "hub")) == (
        f"error: DataError: hub/linked/x.parquet: a symlink to {outside}/data/train-00000-of-00001.parquet, "
        "outside the Hub folder hub")
    assert not (tmp_path / "out").exists()


def manifest_project(tmp_path: Path) -> tuple[Path, Path]:
    """A dataset prepared without copies (prepare.copy: false) from a 3-class source tree."""
    from stages import prepare
    from stages.pipeline import params
    from tests.conftest import TINY, write_params

    src = tmp_path / "src"
    for split in ("train", "val"):
        imagefolder(src / split)
    write_params(tmp_path, {**TINY, "dataset": "imagefolder", "ipc": 1,
                            "prepare": {"root": str(src), "copy": False, "image_size": 8}})
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        prepare.run(params.load(), Path("data/imagefolder"))
    finally:
        os.chdir(cwd)
    return tmp_path / "data" / "imagefolder", src


def test_a_manifest_reads_only_inside_the_source_root_params_yaml_names(tmp_path, monkeypatch):
    import json

    import pyarrow.parquet as pq

    from stages.data.prepared import open_images
    from stages.pipeline.outputs import write_json

    data, src = manifest_project(tmp_path)
    classes = sorted(CLASSES)  # prepare's order for an imagefolder
    monkeypatch.chdir(tmp_path)
    images = open_images(data / "train", classes)  # as stages read it
    assert images.images[list(range(len(images)))].shape == (6, 3, 8, 8)
    meta = json.loads((data / "meta.json").read_text())
    elsewhere = imagefolder(tmp_path / "elsewhere" / "train", shade=100).parent
    write_json(data / "meta.json", {**meta, "source_root": str(elsewhere)})
    outcome = run_inprocess(lambda: open_images(data / "train", classes), [], tmp_path)
    assert one_error(outcome) == (
        f"error: DataError: {data}/meta.json: source_root = '{elsewhere}' is not the folder params.yaml names "
        f"(prepare.root = '{src}'); nothing is read from outside it: rerun prepare (dvc repro prepare) for this root")
    write_json(data / "meta.json", meta)
    (src / "train" / "one" / "0.png").unlink()
    (src / "train" / "one" / "0.png").symlink_to(elsewhere / "train" / "one" / "0.png")
    outcome = run_inprocess(lambda: open_images(data / "train", classes).images[[0]], [], tmp_path)
    assert one_error(outcome) == (f"error: DataError: {src}/train/one/0.png: a symlink to {elsewhere}/train/one/"
                                  f"0.png, outside the source root {src}")
    # 3. a label out of range never reaches a teacher
    table = pq.read_table(data / "manifest.parquet").to_pydict()
    table["label"] = [7 if i == 0 else v for i, v in enumerate(table["label"])]
    import pyarrow as pa

    pq.write_table(pa.table(table, schema=pq.read_schema(data / "manifest.parquet")), data / "manifest.parquet")
    outcome = run_inprocess(lambda: open_images(data / "train", classes), [], tmp_path)
    assert one_error(outcome) == (f"error: DataError: {data}/manifest.parquet: row 0 of train: label 7 for "
                                  "'one/0.png' is not the index of its class (0..2, the class its name starts with)")


# --- 3. every value that becomes an index is checked where it is read -------------------------------------------

def test_hub_rows_with_a_label_outside_the_class_names_or_ragged_logits_are_refused(tmp_path):
    import_project(tmp_path, {"hub": {"path": "hub"}})
    hub = tmp_path / "hub"
    file = "hub/data/train-00000-of-00001.parquet"
    cases = {
        "negative": ([0, 0, 1, -1, 2, 2], None,
                     f"error: DataError: {file}: row 3: label -1 is not a class index (0..2 for the 3 ClassLabel "
                     "names)"),
        "too large": ([0, 0, 1, 1, 2, 3], None,
                      f"error: DataError: {file}: row 5: label 3 is not a class index (0..2 for the 3 ClassLabel "
                      "names)"),
        "ragged": ([0, 0, 1, 1, 2, 2], [[0.0, 1.0, 2.0]] * 5 + [[0.0, 1.0]],
                   f"error: DataError: {file}: row 5: column 'logits' has 2 values, expected one per class (3)"),
        "nan": ([0, 0, 1, 1, 2, 2], [[0.0, 1.0, 2.0]] * 5 + [[0.0, float("nan"), 2.0]],
                f"error: DataError: {file}: row 5: column 'logits' holds a value that is not a finite number"),
    }
    for name, (labels, logits, line) in cases.items():
        hub_folder(hub, labels, logits)
        assert one_error(import_run(tmp_path, "hub")) == line, name
    assert not (tmp_path / "out").exists()


# --- 4. caches never decide content ----------------------------------------------------------------------------

def test_importing_a_hub_folder_again_after_its_files_changed_reads_the_new_images(tmp_path):
    import numpy as np
    from PIL import Image

    import_project(tmp_path, {"hub": {"path": "hub"}})
    hub = tmp_path / "hub"
    first = [png((10 * i, 0, 0)) for i in range(6)]
    second = [png((0, 10 * i + 5, 0)) for i in range(6)]
    for images, out in ((first, "a"), (second, "b")):
        hub_folder(hub, [0, 0, 1, 1, 2, 2], images=images)
        assert import_run(tmp_path, "hub", out).code == 0
    for images, out in ((first, "a"), (second, "b")):
        got = [p for name in CLASSES for p in sorted((tmp_path / out / name).glob("*.png"))]
        assert [np.asarray(Image.open(p))[0, 0].tolist() for p in got] == \
            [np.asarray(Image.open(__import__("io").BytesIO(b)))[0, 0].tolist() for b in images]
