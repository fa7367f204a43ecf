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
    card = "hub/" + "README.md"  # (spelt apart: tests/core/test_docs.py reads `<folder>/<name>.md` as a doc reference)
    assert lines["absolute"] == (f"error: DataError: {card}: configs: data_files '{outside}/data/*.parquet': "
                                 f"path '{outside}/data/*.parquet' leaves its folder (must be relative, without '..')")
    assert lines["dotdot"].startswith(f"error: DataError: {card}: configs: data_files '../outside/data/*.parquet'"
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


# --- 3. teachers: finite weights and normalisation ---------------------------------------------------------------

CONVNET = {"width": 16, "depth": 2, "norm": "batch"}


def nan_teacher_file(path: Path, value: float = float("nan")) -> Path:
    import torch
    from safetensors.torch import save_file

    from stages.models import build

    model = build("convnet", len(CLASSES), 16, CONVNET)
    save_file({k: (torch.full_like(v, value) if v.is_floating_point() else v).contiguous()
               for k, v in model.state_dict().items()}, path)
    return path


def test_a_teacher_file_of_nan_weights_is_refused(tmp_path):
    from stages.models.pretrained import import_teacher
    from stages.training.params import TeacherSource

    path = nan_teacher_file(tmp_path / "teacher.safetensors")
    spec = TeacherSource.model_validate({"type": "file", "weights": str(path)})
    outcome = run_inprocess(lambda: import_teacher("convnet", spec, CLASSES, 16, CONVNET, ([0.5] * 3, [0.2] * 3)))
    assert one_error(outcome).startswith(f"error: ArtifactError: {path}: weights '0.weight' hold 432 of 432 "
                                         "values that are not finite (NaN or infinity)")


def test_a_teacher_folder_of_infinite_weights_is_refused(tmp_path):
    import torch

    from stages.models import build, load_checkpoint, save_checkpoint

    model = build("convnet", len(CLASSES), 16, CONVNET)
    with torch.no_grad():
        model[9].weight[0, 0] = float("inf")
    (tmp_path / "t").mkdir()
    save_checkpoint(model, tmp_path / "t", {"arch": "convnet", "config": CONVNET, "num_classes": 3, "image_size": 16,
                                            "classes_sha256": "0" * 64, "mean": [0.5] * 3, "std": [0.2] * 3})
    outcome = run_inprocess(lambda: load_checkpoint(tmp_path / "t"))
    assert one_error(outcome) == (f"error: ArtifactError: {tmp_path}/t/model.safetensors: weights '9.weight' hold 1 "
                                  "of 768 values that are not finite (NaN or infinity); a teacher's weights must "
                                  "be finite numbers")


def test_a_teacher_mean_or_std_that_is_not_finite_is_refused(tmp_path):
    from stages.pipeline import params
    from tests.conftest import TINY, merge, write_params

    lines = []
    for key, value in (("mean", [".nan", 0.4, 0.4]), ("std", [0.2, ".inf", 0.2])):
        path = write_params(tmp_path, merge(TINY, {"teacher": {"source": {"convnet": {
            "type": "file", "weights": "t.safetensors", key: [0.0, 0.0, 0.0]}}}}))
        path.write_text(path.read_text().replace("- 0.0\n      - 0.0\n      - 0.0",
                                                 "\n".join(f"      - {v}" for v in value).lstrip()))
        lines.append(one_error(run_inprocess(params.load, [], tmp_path)))
    assert lines == [
        "error: ParamsError: params.yaml: teacher.source.convnet: mean = [nan, 0.4, 0.4]: three "
        "per-channel values, finite (std above 0), or null",
        "error: ParamsError: params.yaml: teacher.source.convnet: std = [0.2, inf, 0.2]: three "
        "per-channel values, finite (std above 0), or null"]


def test_a_truncated_file_in_the_torch_hub_cache_is_named_as_the_cache(tmp_path, monkeypatch):
    import torch
    import torchvision

    from stages.models.pretrained import import_teacher
    from stages.training.params import TeacherSource

    weights = torchvision.models.get_weight("ResNet18_Weights.IMAGENET1K_V1")
    cached = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(1000)}, cached)
    cached.write_bytes(cached.read_bytes()[:300])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = TeacherSource.model_validate({"type": "torchvision", "weights": "ResNet18_Weights.IMAGENET1K_V1"})
    outcome = run_inprocess(lambda: import_teacher("resnet18", spec, ["n01440764"], 32, None, ([0.5] * 3, [0.2] * 3)))
    assert one_error(outcome).startswith(
        f"error: ArtifactError: {cached}: the torch hub cache's copy of ResNet18_Weights.IMAGENET1K_V1 is damaged (")


# --- 3. shipped labels (verify) and FKD epochs (export_hub) ------------------------------------------------------

def test_verify_reads_the_shipped_labels(tmp_path):
    import torch

    from stages import verify
    from stages.data.distilled import write_labels
    from stages.pipeline.card import EVALUATION_NOTE, write_card

    set_dir = imagefolder(tmp_path / "set")
    paths = [f"{name}/{i}.png" for name in CLASSES for i in range(IPC)]
    logits = torch.zeros(len(paths), len(CLASSES))
    logits[3, 1] = float("nan")
    write_labels(set_dir, "labels.safetensors", logits, paths)
    write_card(set_dir, method="toy", dataset="digits", ipc=IPC, classes=CLASSES, num_images=len(paths),
               labels="labels.safetensors", params={}, teacher=None, evaluation=EVALUATION_NOTE)
    assert one_error(run_inprocess(verify.main, [str(set_dir)], tmp_path)) == (
        f"error: ArtifactError: {set_dir}/labels.safetensors: logits must be finite floats (torch.float32)")


def test_export_hub_refuses_fkd_epochs_that_differ_from_their_record(tmp_path):
    import numpy as np
    import torch

    from stages.data.augment import Augment, plan_epoch
    from stages.training.soft_labels import epoch_file, write_epoch
    from tests.pipeline.test_hub import make_set

    set_dir, data, _ = make_set(tmp_path)
    labels = set_dir.parent.parent / "soft_labels" / "toy"
    plan = plan_epoch(6, 4, np.random.default_rng(9), Augment((0.5, 1.0), False, "cutmix", 1.0, 8))
    write_epoch(epoch_file(labels, 1), plan, torch.randn(6, 3))  # a valid epoch, but not the one relabel recorded
    outcome = run_inprocess(export_hub.main, ["--set", str(set_dir), "--out", str(tmp_path / "hub")], tmp_path)
    assert one_error(outcome) == (f"error: ArtifactError: {labels}/epoch_0001.parquet: content differs from fkd.json's "
                                  "record (changed after relabel wrote it)")
    assert not (tmp_path / "hub").exists()


# --- 5. limits on every path -------------------------------------------------------------------------------------

def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's), with no pixel data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_a_hub_row_above_the_pixel_limit_is_refused_before_decoding(tmp_path):
    import_project(tmp_path, {"hub": {"path": "hub"}})
    images = [png()] * 5 + [png_header(100_000, 100_000)]
    hub_folder(tmp_path / "hub", [0, 0, 1, 1, 2, 2], images=images)
    assert one_error(import_run(tmp_path, "hub")) == (
        "error: ResourceError: hub/data/train-00000-of-00001.parquet: row 5: 100000x100000 = 10,000,000,000 pixels, "
        "above the limit of 89,478,485 (DDPIPE_MAX_PIXELS); decoding it would take 28,610 MiB")


def test_an_extreme_aspect_ratio_is_refused_before_prepare_resizes_it(tmp_path, monkeypatch):
    from PIL import Image

    from stages import prepare
    from tests.conftest import TINY, write_params

    src = imagefolder(tmp_path / "src" / "train").parent
    imagefolder(src / "val")
    Image.new("RGB", (20_000, 2)).save(src / "train" / "one" / "strip.png")  # 40,000 pixels: under any limit
    write_params(tmp_path, {**TINY, "dataset": "imagefolder", "prepare": {"root": "src", "image_size": 16}})
    monkeypatch.setenv("DDPIPE_MAX_PIXELS", "100000")
    outcome = run_inprocess(prepare.main, ["--out", "data/imagefolder"], tmp_path)
    assert one_error(outcome) == (
        "error: ResourceError: src/train/one/strip.png: 20000x2 resizes to 160000x16 = 2,560,000 pixels to make its "
        "shorter side 16, above the limit of 100,000 (DDPIPE_MAX_PIXELS); crop it nearer to square")
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_params_yaml_aliases_that_expand_into_gigabytes_are_refused_before_they_are_built(tmp_path):
    import time

    from stages.methods.baselines import baseline
    from tests.conftest import TINY, write_params

    path = write_params(tmp_path, TINY)
    bomb = "lol0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))  # 10^9 values, 1 KB
    path.write_text(path.read_text() + bomb)
    started = time.perf_counter()
    outcome = run_inprocess(baseline.main, ["random", "--data", "data/digits", "--out", "out"], tmp_path)
    assert one_error(outcome) == ("error: ParamsError: params.yaml: expands to more than 100,000 values (YAML aliases "
                                  "repeat what they name); refused before it is built")
    assert time.perf_counter() - started < 10
    path.write_text(path.read_text().replace(bomb, "loop: &self [*self]\n"))
    assert one_error(run_inprocess(baseline.main, ["random", "--data", "data/digits", "--out", "out"], tmp_path)) == (
        "error: ParamsError: params.yaml: a YAML alias inside the value it names (a recursive document); refused")


def test_a_long_file_name_is_shortened_below_the_file_system_limit(tmp_path):
    theirs = imagefolder(tmp_path / "theirs")
    long = "é" * 125 + ".png"  # 254 bytes: a legal name, too long once import_set prefixes its place
    (theirs / "one" / "1.png").rename(theirs / "one" / long)
    import_project(tmp_path, {"theirs": {"path": "theirs"}})
    outcome = import_run(tmp_path, "theirs")
    assert outcome.code == 0, outcome.stderr
    names = sorted(p.name for p in (tmp_path / "out" / "one").iterdir())
    assert names[0] == "0002_0.png" and names[1] == "0003_" + "é" * 123 + ".png"
    assert max(len(n.encode()) for n in names) <= 255


def test_sigterm_stops_a_stage_in_its_long_step_within_seconds(tmp_path):
    """A scheduler's SIGTERM reaches prepare mid-way through decoding a source tree: it stops within a few
    seconds, exit 143 and the one line that says nothing half-written was kept, and leaves nothing behind."""
    import signal
    import time

    import numpy as np
    from PIL import Image

    from tests.conftest import TINY, stage_env, write_params

    rng = np.random.default_rng(0)
    for split, n in (("train", 600), ("val", 30)):
        for name in CLASSES:
            (tmp_path / "src" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(
                    tmp_path / "src" / split / name / f"{i}.png", compress_level=0)
    write_params(tmp_path, {**TINY, "dataset": "imagefolder", "prepare": {"root": "src", "image_size": 32}})
    process = subprocess.Popen([sys.executable, "-m", "stages.prepare", "--out", "data/imagefolder"], cwd=tmp_path,
                               env={**stage_env(), "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "data").glob(".imagefolder.tmp-*/train")) and process.poll() is None:
        assert time.monotonic() < deadline, "prepare never started writing"
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    took = time.monotonic() - sent
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1] == "stopped by SIGTERM: nothing half-written was kept; rerun to resume"
    assert took < 5, f"stopped {took:.1f} s after SIGTERM"
    assert not (tmp_path / "data" / "imagefolder").exists() and not list((tmp_path / "data").glob(".*tmp*"))


def test_damaged_timm_weights_in_the_hugging_face_cache_are_named_as_the_cache(tmp_path, monkeypatch):
    import pytest
    import torch
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from stages.models.pretrained import import_teacher
    from stages.training.params import TeacherSource
    from tests.core.test_pretrained import ten_wnids

    timm = pytest.importorskip("timm")
    name = "test_resnet.r160_in1k"
    folder = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k"
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    model = timm.create_model(name, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, snapshot / "model.safetensors")
    (snapshot / "model.safetensors").write_bytes((snapshot / "model.safetensors").read_bytes()[:5000])
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    spec = TeacherSource.model_validate({"type": "timm", "weights": name})
    torch.manual_seed(0)
    outcome = run_inprocess(lambda: import_teacher("tiny_timm", spec, sorted(ten_wnids()), 32, None,
                                                   ([0.5] * 3, [0.25] * 3)))
    assert one_error(outcome).startswith(f"error: ArtifactError: {folder}: the cached timm weights {name} are "
                                         "damaged (")
