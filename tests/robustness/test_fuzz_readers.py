"""The fuzz harness: every artifact kind a stage reads, damaged many ways, read by the real code.

Each kind starts from a valid file made by the real writer, generates damaged variants (tests/fuzz.py:
truncations, non-UTF-8 and NUL bytes, each key missing or of each wrong type, NaN and Infinity, extra and
duplicated keys and rows, path escapes, huge values) and runs the stage's main in-process (or, for kinds
only a long stage reads, the reader that stage calls) through cli.run, the path `python -m` takes. Every
case must end in exit 0 with the same output as the undamaged file gives, or exit 2 with one `error:` line
naming the damaged file, and no output or temp folder left. For the kinds read by running a stage, CI runs
a fixed share of the cases (every 2nd to 6th, in generation order); the `slow` variants ([all]) run every
one. A summary line per kind is appended to $DDPIPE_FUZZ_LOG when set.
"""
from __future__ import annotations

import json
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import TINY, merge, write_params
from tests.fuzz import FULL, byte_damage, judge, json_damage, report, run_inprocess, share, tree_digest
from tests.robustness.test_faults_artifacts import TEACHER


@pytest.fixture(scope="module")
def base(prepared, tmp_path_factory) -> Path:
    """A project folder: the prepared digits (classes.json and meta.json copied, images linked), the teacher,
    and a baseline random set made in-process."""
    from stages.methods.baselines import baseline

    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "data" / "digits").mkdir(parents=True)
    source = prepared / "data" / "digits"
    for name in ("classes.json", "meta.json"):
        shutil.copyfile(source / name, folder / "data" / "digits" / name)
    for split in ("train", "val"):
        (folder / "data" / "digits" / split).symlink_to(source / split)
    write_params(folder, TINY)
    outcome = run_inprocess(baseline.main, ["random", "--data", "data/digits", "--out", "set"], folder)
    assert outcome.code == 0, outcome.stderr
    return folder


def project(base: Path, tmp: Path) -> Path:
    """A fresh copy of the base project's small files (data meta, params, the set), big folders linked."""
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copytree(base / "data", tmp / "data", symlinks=True)
    shutil.copyfile(base / "params.yaml", tmp / "params.yaml")
    shutil.copytree(base / "set", tmp / "set")
    if (base / "metrics").is_dir():  # metrics_base's evaluate output
        shutil.copytree(base / "metrics", tmp / "metrics")
    return tmp


def run_cases(kind: str, cases: dict[str, bytes], target: str, run, base: Path, tmp_path: Path,
              out: str | None = None) -> None:
    """Write each variant to `target` (relative to a fresh project), run, judge against the undamaged run."""
    started = time.perf_counter()
    reference = project(base, tmp_path / "reference")
    expected = run(reference)
    assert expected[0].code == 0, expected[0].stderr
    results = {}
    for i, (name, data) in enumerate(cases.items()):
        folder = project(base, tmp_path / f"c{i}")
        path = folder / target
        path.unlink(missing_ok=True)
        path.write_bytes(data)
        outcome, digest = run(folder)
        results[name] = judge(outcome, Path(target).name, lambda: digest() == expected[1](),
                              folder / out if out else None)
        shutil.rmtree(folder)
    report(kind, results, started)


def baseline_run(folder: Path):
    from stages.methods.baselines import baseline

    outcome = run_inprocess(baseline.main, ["random", "--data", "data/digits", "--out", "out"], folder)
    return outcome, lambda: tree_digest(folder / "out")


# --- params.yaml ----------------------------------------------------------------------------------------------

@FULL
def test_params_yaml(base, tmp_path, full):
    import yaml

    raw = yaml.safe_load((base / "params.yaml").read_text())
    cases = {f"bytes:{k}": v for k, v in byte_damage((base / "params.yaml").read_bytes()).items()}
    small = {k: raw[k] for k in ("launcher", "dataset", "ipc", "seed", "class_names", "class_prompt", "prepare")}
    for name, text in json_damage(small).items():  # JSON is YAML: each variant is a params file
        try:
            changed = {**raw, **json.loads(text)} if isinstance(json.loads(text), dict) else json.loads(text)
        except ValueError:
            changed = None
        if name.endswith(":missing"):
            changed = {k: v for k, v in raw.items() if k != name.split(":")[0].split("/")[0]}
        cases[f"yaml:{name}"] = yaml.safe_dump(changed).encode() if changed is not None else text
    for launcher in ("python3", "bash -c 'rm -rf /'", "torchrun --no-python", "torchrun --nproc-per-node=2;ls",
                     "python -X dev", "torchrun --rdzv-endpoint $(id)"):
        cases[f"launcher:{launcher}"] = yaml.safe_dump({**raw, "launcher": launcher}).encode()
    for prompt in ("a photo of {}", "a {name} and {other}", "{0} {name}", "{name", "{name.attr}"):
        cases[f"class_prompt:{prompt}"] = yaml.safe_dump({**raw, "class_prompt": prompt}).encode()
    for seed in (2 ** 32, 2 ** 64, -1):
        cases[f"seed:{seed}"] = yaml.safe_dump({**raw, "seed": seed}).encode()
    cases["convnet-depth-too-deep"] = yaml.safe_dump(
        {**raw, "models": {**raw["models"], "convnet": {**raw["models"]["convnet"], "depth": 5}}}).encode()
    run_cases("params.yaml", share(cases, 6, full), "params.yaml", baseline_run, base, tmp_path, "out")


# --- the prepared dataset: classes.json and meta.json ---------------------------------------------------------

@FULL
@pytest.mark.parametrize("name", ["classes.json", "meta.json"])
def test_dataset_meta(base, tmp_path, name, full):
    path = base / "data" / "digits" / name
    cases = {**byte_damage(path.read_bytes()), **json_damage(json.loads(path.read_text()))}
    if name == "classes.json":
        classes = json.loads(path.read_text())
        for bad in ("../evil", "/abs", ".hidden", "a/b", "a\\b", "", "x\n", "C:"):
            cases[f"name:{bad!r}"] = json.dumps([bad, *classes[1:]]).encode()
    run_cases(name, share(cases, 10 if name == "meta.json" else 1, full), f"data/digits/{name}", baseline_run,
              base, tmp_path, "out")


# --- card.json, SHA256SUMS and the images of a set: stages.verify -----------------------------------------------

def verify_run(folder: Path):
    from stages import verify

    outcome = run_inprocess(verify.main, ["set", "--data", "data/digits"], folder)
    return outcome, lambda: outcome.stdout


@FULL
def test_card(base, tmp_path, full):
    card = json.loads((base / "set" / "card.json").read_text())
    cases = {**byte_damage((base / "set" / "card.json").read_bytes()), **json_damage(card)}
    for bad in ("../x", "/etc", "a/b"):
        cases[f"class:{bad}"] = json.dumps({**card, "classes": [bad, *card["classes"][1:]]}).encode()
    run_cases("card.json", share(cases, 6, full), "set/card.json", verify_run, base, tmp_path)


def test_sha256sums(base, tmp_path):
    text = (base / "set" / "SHA256SUMS").read_bytes()
    lines = text.splitlines(keepends=True)
    cases = dict(byte_damage(text))
    cases["duplicate-line"] = text + lines[0]
    cases["dropped-line"] = b"".join(lines[1:])
    cases["escape-dotdot"] = lines[0].split(b"  ")[0] + b"  ../../params.yaml\n" + b"".join(lines[1:])
    cases["escape-absolute"] = lines[0].split(b"  ")[0] + b"  /etc/passwd\n" + b"".join(lines[1:])
    cases["short-digest"] = lines[0][:10] + lines[0][64:] + b"".join(lines[1:])
    run_cases("SHA256SUMS", cases, "set/SHA256SUMS", verify_run, base, tmp_path)


@FULL
def test_set_images(base, tmp_path, full):
    image = sorted((base / "set").rglob("*.png"))[0].relative_to(base).as_posix()
    cases = byte_damage((base / image).read_bytes())
    run_cases("set image", share(cases, 2, full), image, verify_run, base, tmp_path)


# --- evaluate's metrics JSON: stages.report -------------------------------------------------------------------

@pytest.fixture(scope="module")
def metrics_base(base, prepared, tmp_path_factory) -> Path:
    """The base project and metrics/random.json made by the real evaluate (in-process, one short protocol)."""
    from stages import evaluate

    folder = project(base, tmp_path_factory.mktemp("metrics"))
    write_params(folder, merge(TINY, {"evaluate": {"protocols": ["hard", "noaug"], "eval_points": 1}}))
    outcome = run_inprocess(evaluate.main, ["--set", "set", "--labels", "unused", "--teacher", str(prepared / TEACHER),
                                            "--data", "data/digits", "--epochs", "1", "--out", "metrics/random.json"],
                            folder)
    assert outcome.code == 0, outcome.stderr
    return folder


def report_run(folder: Path):
    """report over metrics/ (no image grids: the sets folder holds none; the metrics are what is damaged)."""
    from stages import report

    outcome = run_inprocess(report.main, ["--metrics", "metrics", "--sets", "data", "--data", "data/digits",
                                          "--out", "report", "--summary", "summary.json"], folder)
    return outcome, lambda: tree_digest(folder / "report") + (tree_digest(folder / "summary.json")
                                                              if (folder / "summary.json").exists() else "")


# Variants the schema accepts as real values, which report tabulates as given (it has nothing to check them
# against): an optional key absent or null, another valid cosine or IPC. Their output differs from the reference.
METRICS_VALUES = {"draws:missing", "draws:null", "intra_class_cosine:null", "intra_class_cosine:negative",
                  "ipc:null", "ipc:float", "label_bytes:missing", "label_bytes:null", "label_bytes/hard:missing",
                  "label_bytes/hard:null", "label_bytes/noaug:missing", "label_bytes/noaug:null"}


@FULL
def test_metrics_json(metrics_base, tmp_path, full):
    started = time.perf_counter()
    good = (metrics_base / "metrics" / "random.json").read_bytes()
    cases = {**byte_damage(good), **json_damage(json.loads(good))}
    reference = project(metrics_base, tmp_path / "reference")
    expected = report_run(reference)
    assert expected[0].code == 0, expected[0].stderr
    results = {}
    for i, (name, data) in enumerate(share(cases, 8, full).items()):
        folder = project(metrics_base, tmp_path / f"c{i}")
        (folder / "metrics" / "random.json").write_bytes(data)
        outcome, digest = report_run(folder)
        results[name] = judge(outcome, "random.json", lambda: name in METRICS_VALUES or digest() == expected[1](),
                              folder / "report")
        shutil.rmtree(folder)
    report("metrics JSON (report)", results, started)


# --- ranking.csv: stages.methods.delt.select -------------------------------------------------------------------

@FULL
def test_ranking_csv(base, tmp_path, full):
    from stages.data.folder import list_images, read_classes

    train = base / "data" / "digits" / "train"
    classes = read_classes(base / "data" / "digits")
    rows, rank_in = [], {}
    for k, (p, label) in enumerate(list_images(train, classes)):
        rank_in[label] = rank_in.get(label, -1) + 1
        rows.append(f"{p.relative_to(train).as_posix()},{classes[label]},{label},{0.9 - 0.0001 * rank_in[label]:.8f},"
                    f"{rank_in[label]}")
    header = "path,class,label,score,rank\n"
    text = (header + "\n".join(rows) + "\n").encode()
    (base / "ranking.csv").write_bytes(text)
    cases = dict(byte_damage(text))
    body = rows[:]
    for how, row in {"nan-score": body[5].rsplit(",", 2)[0] + ",nan," + body[5].rsplit(",", 1)[1],
                     "inf-score": body[5].rsplit(",", 2)[0] + ",inf," + body[5].rsplit(",", 1)[1],
                     "text-score": body[5].rsplit(",", 2)[0] + ",high," + body[5].rsplit(",", 1)[1],
                     "negative-rank": body[5].rsplit(",", 1)[0] + ",-1",
                     "wrong-label": body[5].replace(",0,", ",3,", 1),
                     "escape": "0/../../../params.yaml" + body[5][body[5].index(","):],
                     "absolute": "/etc/passwd" + body[5][body[5].index(","):],
                     "extra-field": body[5] + ",x"}.items():
        cases[how] = (header + "\n".join([*body[:5], row, *body[6:]]) + "\n").encode()
    cases["duplicate-row"] = (header + "\n".join([*body, body[3]]) + "\n").encode()
    cases["header-only"] = header.encode()
    cases["wrong-header"] = ("path,class,label,rank,score\n" + "\n".join(body) + "\n").encode()
    cases["empty"] = b""

    def select_run(folder: Path):
        from stages.methods.delt import select

        shutil.copyfile(base / "ranking.csv", folder / "ranking.csv") if not (folder / "ranking.csv").exists() \
            else None
        outcome = run_inprocess(select.main, ["--ranking", "ranking.csv", "--data", "data/digits", "--out", "init"],
                                folder)
        return outcome, lambda: tree_digest(folder / "init")

    run_cases("ranking.csv", share(cases, 2, full), "ranking.csv", select_run, base, tmp_path, "init")


# --- images read by prepare, and names that become paths --------------------------------------------------------

def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its pixels are absent): what a decompression bomb looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@FULL
def test_prepare_images_and_names(tmp_path, full):
    from PIL import Image

    from stages import prepare

    def source(root: Path) -> None:
        rng = np.random.default_rng(0)
        for split, n in (("train", 2), ("val", 1)):
            for c in ("a", "b"):
                (root / split / c).mkdir(parents=True)
                for i in range(n):
                    Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")

    def setup(folder: Path) -> Path:
        folder.mkdir()
        source(folder / "src")
        write_params(folder, {**TINY, "dataset": "imagefolder", "ipc": 1,
                              "prepare": {"root": "src", "image_size": 8}})
        return folder

    def prepare_run(folder: Path):
        outcome = run_inprocess(prepare.main, ["--out", "data/imagefolder"], folder)
        return outcome, lambda: tree_digest(folder / "data" / "imagefolder")

    started = time.perf_counter()
    reference = setup(tmp_path / "reference")
    expected = prepare_run(reference)
    assert expected[0].code == 0, expected[0].stderr
    image = "src/train/a/1.png"
    cases = {f"image:{k}": (image, v) for k, v in byte_damage((reference / image).read_bytes()).items()}
    cases["image:bomb-header"] = (image, png_header(200_000, 200_000))
    for bad in ("../../outside", "/etc/ddpipe-escape", ".hidden", "a\x01b", ".."):
        cases[f"val_annotations class {bad!r}"] = ("src/val/val_annotations.txt", f"0.png\t{bad}\n".encode())
    cases["val_annotations image escape"] = ("src/val/val_annotations.txt", b"../../params.yaml\ta\n")
    cases["val_annotations non-utf8"] = ("src/val/val_annotations.txt", b"0.png\ta\xff\n")
    results = {}
    for i, (name, (target, data)) in enumerate(share(cases, 2, full).items()):
        folder = setup(tmp_path / f"c{i}")
        if "val_annotations" in name:
            (folder / "src" / "val" / "images").mkdir()
            shutil.copyfile(folder / "src" / "val" / "a" / "0.png", folder / "src" / "val" / "images" / "0.png")
        (folder / target).write_bytes(data)
        outcome, digest = prepare_run(folder)
        results[name] = judge(outcome, Path(target).name, lambda: digest() == expected[1](),
                              folder / "data" / "imagefolder")
        assert not Path("/tmp/ddpipe-escape").exists() and not (tmp_path / "outside").exists(), name
        shutil.rmtree(folder)
    report("images and names (prepare)", results, started)


# --- readers of kinds only long stages read: called through cli.run -----------------------------------------------

def reader_cases(kind: str, folder: Path, target: Path, cases: dict[str, bytes], read, tmp_path: Path,
                 restore=None, also_ok=()) -> None:
    """Like run_cases for a reader: exit 0 must return what the undamaged file returns (`read` gives a digest,
    or one of `also_ok`); `restore` rebuilds the folder before each case (default: the file is put back)."""
    started = time.perf_counter()
    original = target.read_bytes()
    restore = restore or (lambda: target.write_bytes(original))
    box: dict = {}

    def main():
        box["value"] = read()

    assert run_inprocess(main).code == 0
    expected = box.pop("value")
    results = {}
    for name, data in cases.items():
        restore()
        target.write_bytes(data)
        outcome = run_inprocess(main)
        value = box.pop("value", None)
        results[name] = judge(outcome, target.name, lambda: value == expected or value in also_ok)
    restore()
    report(kind, results, started)


def digest_tensors(*values) -> str:
    import hashlib

    h = hashlib.sha256()
    for v in values:
        h.update(v.numpy().tobytes() if isinstance(v, torch.Tensor) else
                 v.tobytes() if isinstance(v, np.ndarray) else repr(v).encode())
    return h.hexdigest()


def test_teacher(prepared, tmp_path):
    from stages.models import load_checkpoint

    teacher = shutil.copytree(prepared / TEACHER, tmp_path / "teacher")
    meta = json.loads((teacher / "meta.json").read_text())
    read = lambda: digest_tensors(*load_checkpoint(teacher, meta["classes_sha256"])[0].state_dict().values())  # noqa: E731
    reader_cases("teacher meta.json", teacher, teacher / "meta.json",
                 {**byte_damage((teacher / "meta.json").read_bytes()), **json_damage(meta)},
                 read, tmp_path)
    weights = (teacher / "model.safetensors").read_bytes()
    reader_cases("teacher model.safetensors", teacher, teacher / "model.safetensors", byte_damage(weights), read,
                 tmp_path)
    sums = (teacher / "SHA256SUMS").read_bytes()
    reader_cases("teacher SHA256SUMS", teacher, teacher / "SHA256SUMS",
                 {**byte_damage(sums), "escape": sums.split(b"  ")[0] + b"  ../../x\n"}, read, tmp_path)


def test_labels_safetensors(base, tmp_path):
    from stages.data.distilled import load_set, read_labels, write_labels
    from stages.pipeline.card import read_card, verify_content

    set_dir = shutil.copytree(base / "set", tmp_path / "set")
    card, images = load_set(set_dir, base / "data" / "digits")
    card = card.model_copy(update={"labels": "labels.safetensors"})
    n, c = len(images), len(card.classes)
    values = torch.randn(n, c)
    target = set_dir / "labels.safetensors"
    write_labels(set_dir, "labels.safetensors", values, images.paths)
    good = target.read_bytes()
    cases = dict(byte_damage(good))
    for how, (tensors, metadata) in {
        "no-metadata": ({"logits": values}, None),
        "paths-not-json": ({"logits": values}, {"paths": "[not json"}),
        "paths-not-list": ({"logits": values}, {"paths": json.dumps({"a": 1})}),
        "paths-duplicate": ({"logits": values}, {"paths": json.dumps([images.paths[0], *images.paths[:-1]])}),
        "paths-escape": ({"logits": values}, {"paths": json.dumps(["../../x", *images.paths[1:]])}),
        "nan-values": ({"logits": values.masked_fill(values > 1, float("nan"))}, {"paths": json.dumps(images.paths)}),
        "int-values": ({"logits": values.long()}, {"paths": json.dumps(images.paths)}),
        "short": ({"logits": values[:-1]}, {"paths": json.dumps(images.paths[:-1])}),
        "two-kinds": ({"logits": values, "probabilities": values.softmax(1)}, {"paths": json.dumps(images.paths)}),
        "bad-probabilities": ({"probabilities": values}, {"paths": json.dumps(images.paths)}),
    }.items():
        save_file(tensors, target, metadata=metadata)
        cases[how] = target.read_bytes()
    target.write_bytes(good)
    relist(set_dir)  # the labels are a file of the set: SHA256SUMS and the card list them

    def read():  # as evaluate reads them: parsed, then (load_set) the set's files against SHA256SUMS
        values = read_labels(set_dir, card, images)
        verify_content(set_dir, read_card(set_dir))
        return digest_tensors(*values)

    reader_cases("labels.safetensors", set_dir, target, cases, read, tmp_path)


def relist(set_dir: Path) -> None:
    """Rewrite SHA256SUMS and the card's record of it over the set's files as they are now."""
    from stages.pipeline.card import write_sums

    card = json.loads((set_dir / "card.json").read_text())
    card["content"] = write_sums(set_dir).model_dump()
    (set_dir / "card.json").write_text(json.dumps(card))


def test_fkd_labels(base, tmp_path):
    from stages.data.augment import Augment, plan_epoch
    from stages.evaluate import fkd_plans
    from stages.pipeline.artifacts import fkd_files
    from stages.training.soft_labels import epoch_file, write_epoch

    labels = tmp_path / "labels"
    labels.mkdir()
    n, c, batch = 12, 10, 4
    rng = np.random.default_rng(0)
    plan = plan_epoch(n, batch, rng, Augment((0.5, 1.0), True, "cutmix", 1.0, 16))
    write_epoch(epoch_file(labels, 0), plan, torch.randn(n, c))
    meta = {"epochs": 1, "batch_size": batch, "num_images": n, "seed": 1, "files": fkd_files(labels)}
    (labels / "fkd.json").write_text(json.dumps(meta))

    def read():
        plan, logits = fkd_plans(labels, 1, batch, n, c)(0)
        return digest_tensors(plan.order, plan.boxes, plan.partner, plan.lam, logits)

    reader_cases("fkd.json", labels, labels / "fkd.json",
                 {**byte_damage((labels / "fkd.json").read_bytes()), **json_damage(meta)}, read, tmp_path)
    parquet = epoch_file(labels, 0)
    good = parquet.read_bytes()
    cases = dict(byte_damage(good))
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)

    def variant(name: str, new: pa.Table) -> None:
        pq.write_table(new, parquet)
        cases[name] = parquet.read_bytes()

    variant("short-of-rows", table.slice(0, n - 2))
    image = table.column("image").to_numpy().copy()
    image[3] = n + 5
    variant("image-out-of-range", table.set_column(0, "image", pa.array(image)))
    image[3] = image[4]
    variant("image-duplicate", table.set_column(0, "image", pa.array(image)))
    lam = table.column("lam").to_numpy().copy()
    lam[2] = float("nan")
    variant("nan-lambda", table.set_column(table.column_names.index("lam"), "lam", pa.array(lam)))
    variant("missing-column", table.drop(["flip"]))
    variant("no-metadata", table.replace_schema_metadata(None))
    variant("wrong-type", table.set_column(0, "image", pa.array([str(i) for i in range(n)])))
    parquet.write_bytes(good)
    reader_cases("FKD Parquet", labels, parquet, cases, read, tmp_path)


def test_captions(tmp_path):
    from stages.captions.jsonl import FILE, caption_line, read_captions, record_captions

    paths = ["0/a.png", "0/b.png", "1/c.png"]
    folder = tmp_path / "captions"
    folder.mkdir()
    target = folder / FILE
    lines = [caption_line(p, p[0], f"a digit {p[0]}", "attributes") for p in paths]
    target.write_text("".join(lines))
    record_captions(folder)
    sums = (folder / "SHA256SUMS").read_bytes()
    cases = dict(byte_damage(target.read_bytes()))
    record = json.loads(lines[1])
    for name, text in json_damage(record).items():
        cases[f"line2:{name}"] = (lines[0] + text.decode().replace("\n", " ") + "\n" + lines[2]).encode()
    cases["duplicate-line"] = "".join([*lines, lines[0]]).encode()
    cases["escape"] = (lines[0] + caption_line("../../x.png", "0", "x", "a") + lines[2]).encode()
    cases["not-a-train-image"] = (lines[0] + caption_line("0/zz.png", "0", "x", "a") + lines[2]).encode()
    cases["other-caption-text"] = (lines[0] + caption_line("0/b.png", "0", "a bold digit", "attributes") +
                                   lines[2]).encode()

    put_back = lambda: (target.write_bytes("".join(lines).encode()), (folder / "SHA256SUMS").write_bytes(sums))  # noqa: E731
    # the lines are checked before the record: a damaged line is refused by what is wrong with it, a file that
    # still parses by the record (content differs); either way naming captions.jsonl
    reader_cases("captions JSONL", folder, target, cases, lambda: read_captions(folder, paths), tmp_path,
                 restore=put_back)
    reader_cases("captions SHA256SUMS", folder, folder / "SHA256SUMS",
                 {**byte_damage(sums), "escape": sums.split(b"  ")[0] + b"  ../x\n", "duplicate": sums + sums,
                  "other-file": sums.replace(FILE.encode(), b"other.jsonl")},
                 lambda: read_captions(folder, paths), tmp_path, restore=put_back)


def test_prototypes(tmp_path):
    """prototypes@vlcp's pair as synthesize reads it (load_prototypes): the JSON record and the centroids."""
    from stages.prototypes import write_outputs
    from stages.synthesize import load_prototypes

    classes = ["0", "1"]
    cluster = lambda c, k: {"size": 1, "members": [f"{c}/{k}.png"], "text_prototype": f"a digit {c}, {k}",  # noqa: E731
                            "text_prototype_path": f"{c}/{k}.png", "top_words": [["bold", 1]], "fallback": False}
    record = {"method": "vlcp", "ipc": 2, "seed": 0, "params": {"tpk": 5}, "latent_shape": [4, 2, 2],
              "classes": [{"class": c, "prompt": f"digit {c}", "images": 2, "outliers": [],
                           "clusters": [cluster(c, k) for k in range(2)]} for c in classes]}
    prefix = tmp_path / "vlcp"
    tensors, record_path = write_outputs(prefix, record, torch.randn(2, 2, 4, 2, 2))

    def read():  # what synthesize takes from the pair: centroids and prompts (params only go to the card)
        centroids, loaded = load_prototypes(prefix, "vlcp", 2, classes)
        return digest_tensors(centroids), [[cl.text_prototype for cl in e.clusters] for e in loaded.classes]

    cases = {**byte_damage(record_path.read_bytes()), **json_damage(record)}
    for name, change in {"no-text-prototype": lambda r: r["classes"][1]["clusters"][0].pop("text_prototype"),
                         "null-text-prototype": lambda r: r["classes"][0]["clusters"][1].update(text_prototype=None),
                         "one-cluster-short": lambda r: r["classes"][1]["clusters"].pop(),
                         "class-not-a-string": lambda r: r["classes"][0].update({"class": 0}),
                         "clusters-not-a-list": lambda r: r["classes"][0].update(clusters={}),
                         "other-method": lambda r: r.update(method="d4m")}.items():
        changed = json.loads(json.dumps(record))
        change(changed)
        cases[name] = json.dumps(changed).encode()
    reader_cases("prototypes JSON", tmp_path, record_path, cases, read, tmp_path)

    good = tensors.read_bytes()
    extra = {}
    for name, values in {"nan": {"centroids": torch.full((2, 2, 4, 2, 2), float("nan"))},
                         "float64": {"centroids": torch.randn(2, 2, 4, 2, 2, dtype=torch.float64)},
                         "4d": {"centroids": torch.randn(2, 2, 4, 2)},
                         "other-ipc": {"centroids": torch.randn(2, 3, 4, 2, 2)},
                         "no-centroids": {"latents": torch.randn(2, 2, 4, 2, 2)},
                         "extra-tensor": {"centroids": torch.randn(2, 2, 4, 2, 2), "x": torch.zeros(1)}}.items():
        save_file(values, tensors)
        extra[name] = tensors.read_bytes()
    tensors.write_bytes(good)
    # a byte flipped in the float data is another valid tensor: only a content record would tell, and the
    # prototypes pair has none (synthesize records the file's sha256 in the set's card)
    damaged = {k: v for k, v in byte_damage(good).items() if k != "flipped-byte"}
    reader_cases("prototypes safetensors", tmp_path, tensors, {**damaged, **extra}, read, tmp_path)


def test_latents(tmp_path):
    from stages.data.latents_folder import INDEX, TENSORS, read_latents, write_latents

    folder = tmp_path / "latents"
    paths = ["0/a.png", "0/b.png", "1/c.png", "1/d.png"]
    write_latents(folder, torch.randn(4, 4, 2, 2), torch.tensor([0, 0, 1, 1]), paths)
    read = lambda: digest_tensors(*read_latents(folder))  # noqa: E731
    text = (folder / INDEX).read_bytes()
    rows = text.decode().splitlines(keepends=True)
    cases = dict(byte_damage(text))
    cases["non-integer-row"] = "".join([rows[0], "x" + rows[1][1:], *rows[2:]]).encode()
    cases["float-label"] = "".join([*rows[:2], rows[2].rstrip("\n") + ".0\n", *rows[3:]]).encode()
    cases["duplicate-path"] = "".join([*rows[:3], rows[3].replace("1/d.png", "1/c.png"), *rows[4:]]).encode()
    cases["escape"] = "".join([*rows[:2], rows[2].replace("0/b.png", "../../b.png"), *rows[3:]]).encode()
    cases["extra-row"] = text + b"4,1/e.png,1\n"
    reader_cases("latents index.csv", folder, folder / INDEX, cases, read, tmp_path)
    tensors = (folder / TENSORS).read_bytes()
    extra = {}
    for name, values in {"nan": torch.full((4, 4, 2, 2), float("nan")), "3d": torch.randn(4, 4, 2)}.items():
        save_file({"latents": values, "labels": torch.tensor([0, 0, 1, 1])}, folder / TENSORS)
        extra[name] = (folder / TENSORS).read_bytes()
    (folder / TENSORS).write_bytes(tensors)
    reader_cases("latents.safetensors", folder, folder / TENSORS, {**byte_damage(tensors), **extra}, read, tmp_path)


def test_diffusion_folder_index(tmp_path):
    from stages.generation.pipeline_folder import check_pipeline_folder
    from stages.pipeline.artifacts import write_record

    folder = tmp_path / "sd"
    (folder / "scheduler").mkdir(parents=True)
    (folder / "scheduler" / "scheduler_config.json").write_text("{}")
    index = {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "DDIMScheduler"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    write_record(folder)
    sums = (folder / "SHA256SUMS").read_bytes()
    reader_cases("diffusion model_index.json", folder, folder / "model_index.json",
                 {**byte_damage((folder / "model_index.json").read_bytes()), **json_damage(index)},
                 lambda: check_pipeline_folder(folder, ["scheduler"]), tmp_path)
    config = folder / "scheduler" / "scheduler_config.json"
    reader_cases("diffusion SHA256SUMS", folder, folder / "SHA256SUMS",
                 {**byte_damage(sums), "escape": sums.split(b"  ")[0] + b"  ../x\n", "duplicate": sums + sums},
                 lambda: check_pipeline_folder(folder, ["scheduler"]), tmp_path)
    reader_cases("diffusion component file", folder, config, {"changed": b'{"x": 1}', "empty": b""},
                 lambda: check_pipeline_folder(folder, ["scheduler"]), tmp_path)


def test_resume_state(tmp_path):
    from stages.pipeline.resume import Resume

    out = tmp_path / "out"

    def restore():  # a stale key makes Resume remove the folder: make it again
        shutil.rmtree(tmp_path / ".out.resume", ignore_errors=True)
        resume = Resume(out, {"a": 1})
        resume.save("state", {"step": torch.tensor(3), "w": torch.arange(5.0)})
        return resume

    resume = restore()
    key, state = resume.folder / "key.json", resume.folder / "state.pt"

    def read():
        loaded = Resume(out, {"a": 1}).load("state")
        return None if loaded is None else digest_tensors(loaded["step"], loaded["w"])

    # a key.json for other settings means "start afresh" (None): also a correct outcome
    reader_cases("resume key.json", resume.folder, key, {**byte_damage(key.read_bytes()),
                                                         **json_damage(json.loads(key.read_text()))}, read, tmp_path,
                 restore, also_ok=(None,))
    reader_cases("resume state.pt", resume.folder, state, byte_damage(state.read_bytes()), read, tmp_path, restore)
