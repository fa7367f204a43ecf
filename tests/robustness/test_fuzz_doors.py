"""The fuzz harness over the doors issue 30 closed: import_set (ImageFolder and Hub folders: Parquet, README
configs, ClassLabel names), export_hub's arguments, file and hub teachers (weights, mean/std, a damaged cache)
and manifest datasets.

Each kind starts from a valid input, makes damaged variants and runs the real code in this process through
cli.run (tests/fuzz.py). Every case must end in

  * exit 0 with the same output as the undamaged input gives (a case marked `may_change` - bytes of an image
    that still decode, a name ddpipe shortens - only needs a valid output); or
  * exit 2 with one `error:` line naming what was damaged, and no output or temp folder left;

and in both, nothing in the project outside the output written, changed or deleted. CI runs a fixed share of
the cases (every few, in generation order); the `slow` variants ([all]) run every one. A summary line per kind
goes to $DDPIPE_FUZZ_LOG when set.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tests.fuzz import FULL, Outcome, byte_damage, json_damage, leftovers, report, run_inprocess, share
from tests.robustness.test_doors import (CLASSES, hub_folder, import_project, imagefolder, nan_teacher_file, png,
                                         png_header)

HUB_FILE = "hub/data/train-00000-of-00001.parquet"


@dataclass
class Case:
    mutate: Callable[[Path], object]  # damages the project copy (may return argv for the run)
    damaged: str | tuple[str, ...]  # what the error line must name (one of)
    may_change: bool = False


def snapshot(root: Path, skip: list[Path]) -> str:
    """Every entry under root (files' bytes, links' targets), the output and its temp siblings left out."""
    h = hashlib.sha256()
    skipped = {p.resolve() if p.exists() else p for p in skip}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames
                             if not any(here / d == s or d.startswith(f".{s.name}.tmp") for s in skip))
        for name in sorted(filenames + [d for d in dirnames if (here / d).is_symlink()]):
            path = here / name
            if path in skipped or any(name.startswith(f".{s.name}.tmp") for s in skip):
                continue
            h.update(str(path.relative_to(root)).encode() + b"\0")
            h.update(os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
    return h.hexdigest()


def content(path: Path) -> str:
    """An output's files (names relative to it, bytes), or "absent"."""
    path = Path(path)
    if not path.exists():
        return "absent"
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        h.update(file.relative_to(path).as_posix().encode() + b"\0" + file.read_bytes())
    return h.hexdigest()


def judge(outcome: Outcome, case: Case, out: Path, before: str, after: str, valid: Callable[[], str | None],
          same: Callable[[], bool], fresh: bool = True) -> str | None:
    if before != after:
        return "the project outside the output changed"
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error: ")]
    if outcome.code == 2:
        names = case.damaged if isinstance(case.damaged, tuple) else (case.damaged,)
        if len(errors) != 1:
            return f"exit 2 with {len(errors)} error lines: {outcome.stderr[-400:]}"
        if not any(name in errors[0] for name in names):
            return f"error line does not name {names}: {errors[0]}"
        return f"left behind: {leftovers(out)}" if fresh and leftovers(out) else None
    if outcome.code == 0:
        problem = valid()
        if problem:
            return f"exit 0 with an invalid output: {problem}"
        return None if case.may_change or same() else "exit 0 with another output than the undamaged input gives"
    return f"exit {outcome.code}: {outcome.stderr[-1500:]}"


def run_kind(kind: str, base: Path, cases: dict[str, Case], run: Callable[[Path, list | None], Outcome], out: str,
             tmp_path: Path, fingerprint: Callable[[Path], str], valid: Callable[[Path], str | None] = lambda f: None):
    """Each case on a fresh copy of `base`: mutate, run, judge against the undamaged run's fingerprint."""
    started = time.perf_counter()
    reference = tmp_path / "reference"
    shutil.copytree(base, reference, symlinks=True)
    outcome = run(reference, None)
    assert outcome.code == 0, outcome.stderr
    expected = fingerprint(reference)
    results = {}
    for i, (name, case) in enumerate(cases.items()):
        folder = tmp_path / f"c{i}"
        shutil.copytree(base, folder, symlinks=True)
        argv = case.mutate(folder)
        argv = argv if isinstance(argv, tuple) and isinstance(argv[0], list) else None  # (argv, output)
        target = folder / (argv[1] if isinstance(argv, tuple) else out)
        # the output may be written only where nothing was (or an empty folder): an existing path it names
        # (an input, a folder above one, another artifact) is part of the project that must stay unchanged
        fresh = not (target.exists() or target.is_symlink()) or target.is_dir() and not any(target.iterdir())
        skip = [target] if fresh else []
        before = snapshot(folder, skip)
        outcome = run(folder, argv[0] if isinstance(argv, tuple) else argv)
        results[name] = judge(outcome, case, target, before, snapshot(folder, skip),
                              lambda: valid(folder), lambda: fingerprint(folder) == expected, fresh)
        shutil.rmtree(folder, ignore_errors=True)
    report(kind, results, started)


def write(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(data)


# --- import_set: an ImageFolder ------------------------------------------------------------------------------

def pixels_of(out: Path) -> str:
    """The imported set's pixels and labels in classes.json order (names aside: ddpipe may shorten them)."""
    from PIL import Image

    if not out.is_dir():
        return "absent"
    h = hashlib.sha256()
    for label, name in enumerate(CLASSES):  # each class's images as a set: a renamed file may move in the order
        for pixels in sorted(np.asarray(Image.open(f).convert("RGB")).tobytes() for f in (out / name).glob("*.png")):
            h.update(bytes([label]) + pixels)
    labels = out / "labels.safetensors"
    if labels.is_file():
        from safetensors.torch import load_file

        h.update(b"".join(v.numpy().tobytes() for _, v in sorted(load_file(labels).items())))
    return h.hexdigest()


def valid_set(folder: Path) -> str | None:
    from stages import verify

    outcome = run_inprocess(verify.main, ["out", "--data", "data/digits"], folder)
    return None if outcome.code == 0 else outcome.stderr[-300:]


def import_run(name: str):
    def run(folder: Path, argv) -> Outcome:
        from stages import import_set

        return run_inprocess(import_set.main, argv or [name, "--data", "data/digits", "--out", "out"], folder)
    return run


@pytest.fixture(scope="module")
def imagefolder_base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_if") / "project"
    import_project(root, {"theirs": {"path": "theirs"}})
    imagefolder(root / "theirs")
    imagefolder(root.parent / "elsewhere")
    return root


def imagefolder_cases(base: Path) -> dict[str, Case]:
    elsewhere = base.parent / "elsewhere"
    image = "theirs/one/0.png"
    cases = {f"bytes:{k}": Case(lambda f, d=d: write(f / image, d), image, may_change=True)
             for k, d in byte_damage((base / image).read_bytes()).items()}

    def link(target, at=image):
        def mutate(f):
            (f / at).unlink() if (f / at).is_file() or (f / at).is_symlink() else shutil.rmtree(f / at)
            (f / at).symlink_to(target if isinstance(target, Path) else f / target)
        return mutate

    cases.update({
        "bomb-header": Case(lambda f: write(f / image, png_header(100_000, 100_000)), image),
        "not-an-image": Case(lambda f: (f / "theirs/one/notes.txt").write_text("x"), "notes.txt"),
        "hidden-file": Case(lambda f: (f / "theirs/one/.DS_Store").write_text("x"), "-"),
        "sub-folder": Case(lambda f: (f / "theirs/one/sub").mkdir(), "-"),
        "missing-class": Case(lambda f: shutil.rmtree(f / "theirs/two"), "theirs"),
        "extra-class": Case(lambda f: imagefolder(f / "more") and shutil.move(f / "more/zero", f / "theirs/three"),
                            "three"),
        "empty-class": Case(lambda f: shutil.rmtree(f / "theirs/two") or (f / "theirs/two").mkdir(), "theirs/two"),
        "one-image-less": Case(lambda f: (f / "theirs/two/1.png").unlink(), "theirs"),
        "hidden-image": Case(lambda f: (f / "theirs/two/1.png").rename(f / "theirs/two/.1.png"), "theirs"),
        "link-file-out": Case(link(elsewhere / "one" / "0.png"), image),
        "link-class-out": Case(link(elsewhere / "two", "theirs/two"), "theirs/two"),
        "link-loop": Case(link(Path("0.png")), image),
        "link-dangling": Case(link(elsewhere / "nothing.png"), image),
        "link-inside": Case(link("theirs/two/1.png"), image, may_change=True),
        "link-set-out": Case(link(elsewhere, "theirs"), "-"),  # the folder the user named may be a link
        "set-is-a-file": Case(lambda f: shutil.rmtree(f / "theirs") or (f / "theirs").write_text("x"), "theirs"),
        "newline-name": Case(lambda f: (f / image).rename(f / "theirs/one/a\nb.png"), "-"),
        "long-name": Case(lambda f: (f / image).rename(f / "theirs/one" / ("é" * 125 + ".png")), "-"),
        "gray-image": Case(lambda f: write(f / image, png((7, 7, 7))), "-", may_change=True),
        "huge-image-ok": Case(lambda f: write(f / image, png(size=(64, 64))), image, may_change=True),
        "class-named-dotdot": Case(lambda f: (f / "theirs/..x").mkdir(), "-"),
    })
    cases["link-set-out"].may_change = True  # another folder's images: same shape, other pixels
    return cases


@FULL
def test_import_imagefolder(imagefolder_base, tmp_path, full):
    cases = imagefolder_cases(imagefolder_base)
    run_kind("import_set ImageFolder", imagefolder_base, share(cases, 4, full), import_run("theirs"), "out",
             tmp_path, lambda f: pixels_of(f / "out"), valid_set)


# --- import_set: a Hub folder (Parquet, README configs, ClassLabel names) -------------------------------------

LABELS = [0, 0, 1, 1, 2, 2]
LOGITS = [[float(i), 1.0, -1.0] for i in range(6)]


@pytest.fixture(scope="module")
def hub_base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_hub") / "project"
    import_project(root, {"hub": {"path": "hub"}})
    hub_folder(root / "hub", LABELS, LOGITS)
    hub_folder(root.parent / "elsewhere", LABELS, LOGITS)
    return root


def rewrite(folder: Path, **changes) -> None:
    """The Hub folder's Parquet file again, with some columns or the features metadata replaced."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / HUB_FILE
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"huggingface"])
    features = changes.pop("features", meta["info"]["features"])
    columns = {name: table.column(name) for name in table.column_names}
    for name, values in changes.items():
        if values is None:
            columns.pop(name, None)
        else:
            columns[name] = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    metadata = features if isinstance(features, (bytes, str)) else json.dumps({"info": {"features": features}})
    new = pa.table(columns).replace_schema_metadata({"huggingface": metadata})
    path.unlink()
    pq.write_table(new, path)


def readme(text: str) -> Callable[[Path], None]:
    return lambda f: (f / "hub" / "README.md").write_text(text)


def configs(data_files) -> str:
    return "---\n" + json.dumps({"configs": [{"config_name": "default", "data_files": data_files}]}) + "\n---\n# x\n"


def hub_cases(base: Path) -> dict[str, Case]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    elsewhere = base.parent / "elsewhere"
    file = base / HUB_FILE
    cases = {f"bytes:{k}": Case(lambda f, d=d: write(f / HUB_FILE, d), "train-00000-of-00001.parquet",
                                may_change=True) for k, d in byte_damage(file.read_bytes()).items()}
    features = json.loads(pq.read_schema(file).metadata[b"huggingface"])["info"]["features"]
    for k, d in json_damage(features, depth=2).items():
        cases[f"features:{k}"] = Case(lambda f, d=d: rewrite(f, features=json.dumps(
            {"info": {"features": json.loads(d)}} if d.strip().startswith((b"{", b"[", b'"')) else {})),
            "train-00000-of-00001.parquet")
    cases["features:not-json"] = Case(lambda f: rewrite(f, features=b"{nope"), "train-00000-of-00001.parquet")
    for label in (-1, 3, 2 ** 40, None):
        cases[f"label:{label}"] = Case(lambda f, v=label: rewrite(f, label=pa.array(LABELS[:5] + [v], pa.int64())),
                                       "train-00000-of-00001.parquet")
    names = features["label"]["names"]
    for how, new in {"duplicate": [names[0], *names[:-1]], "unknown": [*names[:-1], "eleven"],
                     "missing": names[:-1], "unsafe": ["../x", *names[1:]], "newline": ["a\nb", *names[1:]],
                     "reordered": names[::-1], "not-strings": [1, 2, 3]}.items():
        cases[f"names:{how}"] = Case(lambda f, n=new: rewrite(f, features={**features, "label": {
            "_type": "ClassLabel", "names": n}}), ("train-00000-of-00001.parquet",), may_change=how == "reordered")
    ragged = LOGITS[:5] + [LOGITS[5][:2]]
    for how, rows in {"ragged": ragged, "nan": LOGITS[:5] + [[float("nan"), 0.0, 0.0]],
                      "inf": LOGITS[:5] + [[float("inf"), 0.0, 0.0]], "null-row": LOGITS[:5] + [None],
                      "too-long": [r + [0.0] for r in LOGITS]}.items():
        cases[f"logits:{how}"] = Case(lambda f, r=rows: rewrite(f, logits=pa.array(r, pa.list_(pa.float32()))),
                                      "train-00000-of-00001.parquet")
    cases["logits:strings"] = Case(lambda f: rewrite(f, logits=pa.array([["a", "b", "c"]] * 6)),
                                   "train-00000-of-00001.parquet")
    cases["probabilities:not-a-distribution"] = Case(lambda f: rewrite(
        f, logits=None, probabilities=pa.array(LOGITS, pa.list_(pa.float32())),
        features={**{k: v for k, v in features.items() if k != "logits"}, "probabilities": features["logits"]}),
        "train-00000-of-00001.parquet")
    image_rows = pq.read_table(file).column("image").to_pylist()
    for how, row in {"bomb": {"bytes": png_header(100_000, 100_000), "path": "x.png"},
                     "garbage": {"bytes": b"GIF89a" + bytes(40), "path": "x.png"},
                     "reference": {"bytes": None, "path": "/etc/passwd"}, "null": None}.items():
        cases[f"image:{how}"] = Case(lambda f, r=row: rewrite(f, image=pa.array(image_rows[:5] + [r])),
                                     "train-00000-of-00001.parquet")
    cases.update({
        "readme:absolute": Case(readme(configs(str(elsewhere / HUB_FILE.removeprefix("hub/")))), "README.md"),
        "readme:dotdot": Case(readme(configs("../../elsewhere/data/*.parquet")), "README.md"),
        "readme:url": Case(readme(configs("hf://datasets/x/y/*.parquet")), "README.md"),
        "readme:no-train": Case(readme(configs([{"split": "test", "path": "data/*.parquet"}])), "README.md"),
        "readme:no-match": Case(readme(configs("nothing/*.parquet")), "README.md"),
        "readme:same-file": Case(readme(configs([{"split": "train", "path": "data/*.parquet"}])), "-"),
        "readme:recursive-glob": Case(readme(configs("**/*.parquet")), "-"),
        "readme:configs-not-a-list": Case(readme("---\nconfigs: 3\n---\n"), "README.md"),
        "readme:not-yaml": Case(readme("---\nconfigs: [\n---\n"), "README.md"),
        "readme:not-closed": Case(readme("---\nconfigs: []\n"), "README.md"),
        "readme:alias-bomb": Case(readme("---\na: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
            f"a{i}: &a{i} [{', '.join([f'*a{i - 1}' if i > 1 else '*a'] * 10)}]\n" for i in range(1, 8)) + "---\n"),
            "README.md"),
        "readme:not-utf8": Case(lambda f: (f / "hub" / "README.md").write_bytes(b"---\n\xff\xfe\n---\n"), "README.md"),
        "readme:no-front-matter": Case(readme("# just a card\n"), "-"),
        "file:linked-out": Case(lambda f: write(f / HUB_FILE, b"") or (f / HUB_FILE).unlink() or
                                (f / HUB_FILE).symlink_to(elsewhere / HUB_FILE.removeprefix("hub/")),
                                "train-00000-of-00001.parquet"),
        "file:test-split-beside": Case(lambda f: shutil.copy(f / HUB_FILE, f / "hub/data/test-00000-of-00001.parquet"),
                                       "-"),
        "file:second-train-part": Case(lambda f: shutil.copy(f / HUB_FILE, f / "hub/data/train-00001-of-00002.parquet"),
                                       "hub"),  # twice the images: another budget
        "file:none": Case(lambda f: (f / HUB_FILE).unlink(), "hub"),
    })
    return cases


@FULL
def test_import_hub_folder(hub_base, tmp_path, full):
    cases = hub_cases(hub_base)
    run_kind("import_set Hub folder", hub_base, share(cases, 6, full), import_run("hub"), "out", tmp_path,
             lambda f: pixels_of(f / "out"), valid_set)


# --- export_hub's arguments ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def export_base(tmp_path_factory) -> Path:
    from tests.pipeline.test_hub import make_set

    root = tmp_path_factory.mktemp("fuzz_export") / "project"
    root.mkdir()
    set_dir, _, _ = make_set(root)
    shutil.copytree(set_dir, set_dir.with_name("other"))
    (root / "params.yaml").write_text("evaluate: {}\n")
    return root


SET = "artifacts/digits/ipc2/distilled/toy"
SOFT = "artifacts/digits/ipc2/soft_labels/toy"
METRICS = "artifacts/digits/ipc2/metrics/toy.json"


def export_run(folder: Path, argv) -> Outcome:
    from stages import export_hub

    return run_inprocess(export_hub.main, argv or ["--set", SET, "--out", "hub", "--data", "data/digits"], folder)


def export_cases(base: Path) -> dict[str, Case]:
    def args(*extra, out="hub", set_=SET):
        return lambda f: (["--set", set_, "--out", out, "--data", "data/digits", *extra], out)

    cases = {}
    for value in (SET, "artifacts/digits/ipc2/distilled", "artifacts/digits/ipc2", "artifacts", ".", "..",
                  "data/digits", "data", SOFT, METRICS, "artifacts/digits/ipc2/distilled/other", f"{SET}/hub",
                  "params.yaml", f"{SOFT}/x"):
        cases[f"out:{value}"] = Case(args(out=value), f"--out {value}")
    cases["out:newline"] = Case(args(out="hub\nx"), "-")
    cases["out:own-previous"] = Case(lambda f: (export_run(f, None), args()(f))[1], "-")
    cases["out:empty-folder"] = Case(lambda f: ((f / "hub").mkdir(), args()(f))[1], "-")
    cases["out:a-file"] = Case(lambda f: ((f / "hub").write_text("mine"), args()(f))[1], "--out hub")
    for value in ("nothing", f"{SET}/card.json", "data/digits", SOFT):
        cases[f"set:{value}"] = Case(args(set_=value), value)
    cases["set:newline-name"] = Case(lambda f: (shutil.copytree(f / SET, f / (SET + "\nx")),
                                                args(set_=SET + "\nx")(f))[1], "-", may_change=True)
    cases["metrics:missing"] = Case(args("--metrics", "nothing.json"), "nothing.json")
    cases["metrics:a-folder"] = Case(args("--metrics", "data"), "data")
    for k, d in list(byte_damage((base / METRICS).read_bytes()).items())[:6]:
        cases[f"metrics:{k}"] = Case(lambda f, d=d: (write(f / METRICS, d), args()(f))[1], "toy.json")
    fkd = json.loads((base / SOFT / "fkd.json").read_text())
    for k, d in json_damage(fkd).items():
        cases[f"fkd.json:{k}"] = Case(lambda f, d=d: (write(f / SOFT / "fkd.json", d), args()(f))[1],
                                      ("fkd.json", "epoch_"), may_change=k == "top:extra-key")  # exported as written
    epoch = f"{SOFT}/epoch_0001.parquet"
    for k, d in byte_damage((base / epoch).read_bytes()).items():
        cases[f"epoch:{k}"] = Case(lambda f, d=d: (write(f / epoch, d), args()(f))[1], "epoch_0001.parquet")
    cases["epoch:extra"] = Case(lambda f: (shutil.copy(f / epoch, f / SOFT / "epoch_0002.parquet"), args()(f))[1],
                                "fkd.json")
    cases["epoch:missing"] = Case(lambda f: ((f / epoch).unlink(), args()(f))[1], "fkd.json")
    cases["data:other-classes"] = Case(lambda f: ((f / "data/digits/classes.json").write_text('["a", "b", "c"]'),
                                                  args()(f))[1], ("classes.json", "card.json"))
    return cases


@FULL
def test_export_hub_arguments(export_base, tmp_path, full, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = export_cases(export_base)

    def fingerprint(folder: Path) -> str:
        out = next((p for p in folder.iterdir() if p.name.startswith("hub") and p.is_dir()), None)
        return content(out) if out else "absent"

    run_kind("export_hub arguments", export_base, share(cases, 6, full), export_run, "hub", tmp_path, fingerprint)


# --- teachers: a weights file, mean/std, a damaged torch hub cache ---------------------------------------------

CONVNET = {"width": 16, "depth": 2, "norm": "batch"}


@pytest.fixture(scope="module")
def teacher_base(tmp_path_factory) -> Path:
    import torch
    from safetensors.torch import save_file

    from stages.models import build

    root = tmp_path_factory.mktemp("fuzz_teacher") / "project"
    root.mkdir()
    torch.manual_seed(0)
    model = build("convnet", len(CLASSES), 16, CONVNET)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "teacher.safetensors")
    torch.save(model.state_dict(), root / "teacher.pt")
    write_teacher_params(root, {})
    return root


def write_teacher_params(folder: Path, source: dict, weights: str = "teacher.safetensors") -> None:
    from tests.conftest import TINY, merge, write_params

    write_params(folder, merge(TINY, {"teacher": {"source": {"convnet": {"type": "file", "weights": weights,
                                                                          **source}}}}))


def teacher_run(folder: Path, argv) -> Outcome:
    def load():
        import torch

        from stages.models.pretrained import import_teacher
        from stages.pipeline import params

        p = params.load()
        imported = import_teacher("convnet", p.teacher.source["convnet"], CLASSES, 16, CONVNET,
                                  ([0.5] * 3, [0.25] * 3))
        state = {k: v.float() for k, v in imported.model.state_dict().items()}
        torch.save({"state": state, "mean": imported.mean, "std": imported.std}, "imported.pt")
    return run_inprocess(load, [], folder)


NORMS = {"nan": [float("nan"), 0.5, 0.5], "inf": [0.5, float("inf"), 0.5], "negative": [-0.5, 0.5, 0.5],
         "above-one": [0.5, 0.5, 1.5], "zero": [0.0, 0.0, 0.0], "two-values": [0.5, 0.5], "strings": ["a", "b", "c"],
         "null-entry": [0.5, None, 0.5]}


def teacher_cases(base: Path) -> dict[str, Case]:
    import torch
    from safetensors.torch import save_file

    file = base / "teacher.safetensors"
    cases = {f"bytes:{k}": Case(lambda f, d=d: write(f / "teacher.safetensors", d), "teacher.safetensors",
                                may_change=True) for k, d in byte_damage(file.read_bytes()).items()}
    from safetensors.torch import load_file

    state = load_file(file)

    def tensors(change):
        def mutate(f):
            new = dict(state)
            change(new)
            (f / "teacher.safetensors").unlink()
            save_file({k: v.contiguous() for k, v in new.items()}, f / "teacher.safetensors")
        return mutate

    first = "0.weight"
    cases.update({
        "all-nan": Case(lambda f: nan_teacher_file(f / "teacher.safetensors"), "teacher.safetensors"),
        "all-inf": Case(lambda f: nan_teacher_file(f / "teacher.safetensors", float("inf")), "teacher.safetensors"),
        "one-nan": Case(tensors(lambda s: s.__setitem__(first, s[first].clone().index_fill_(0, torch.tensor([0]),
                                                                                         float("nan")))),
                        "teacher.safetensors"),
        "nan-running-var": Case(tensors(lambda s: s.__setitem__("1.running_var", torch.full((16,), float("nan")))),
                                "teacher.safetensors"),
        "wrong-shape": Case(tensors(lambda s: s.__setitem__(first, torch.zeros(8, 3, 3, 3))), "teacher.safetensors"),
        "missing-key": Case(tensors(lambda s: s.pop(first)), "teacher.safetensors"),
        "extra-key": Case(tensors(lambda s: s.__setitem__("zz", torch.zeros(1))), "teacher.safetensors"),
        "int-weights": Case(tensors(lambda s: s.__setitem__(first, s[first].to(torch.int32))), "teacher.safetensors",
                            may_change=True),
        "pt-state-dict": Case(lambda f: write_teacher_params(f, {}, "teacher.pt"), "-"),
        "pt-pickled-class": Case(lambda f: (torch.save({"x": Path("x")}, f / "teacher.pt"),
                                            write_teacher_params(f, {}, "teacher.pt")), "teacher.pt"),
        "pt-truncated": Case(lambda f: (write(f / "teacher.pt", (f / "teacher.pt").read_bytes()[:500]),
                                        write_teacher_params(f, {}, "teacher.pt")), "teacher.pt"),
        "missing-file": Case(lambda f: (f / "teacher.safetensors").unlink(), "teacher.safetensors"),
    })
    for key in ("mean", "std"):
        for how, value in NORMS.items():
            cases[f"{key}:{how}"] = Case(lambda f, k=key, v=value: write_teacher_params(f, {k: v}),
                                         "teacher.source.convnet", may_change=(key, how) == ("mean", "zero"))
    cases["params:nan-spelled"] = Case(lambda f: (f / "params.yaml").write_text(
        (f / "params.yaml").read_text().replace("weights: teacher.safetensors", "weights: teacher.safetensors\n"
                                                "        std: [.nan, .nan, .nan]")), ("params.yaml", "teacher"))
    return cases


def teacher_fingerprint(folder: Path) -> str:
    path = folder / "imported.pt"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


@FULL
def test_file_teacher(teacher_base, tmp_path, full):
    cases = teacher_cases(teacher_base)
    run_kind("file teacher", teacher_base, share(cases, 3, full), teacher_run, "imported.pt", tmp_path,
             teacher_fingerprint)


@FULL
def test_torch_hub_cache(tmp_path, full, monkeypatch):
    """A torchvision teacher whose file in the torch hub cache is damaged: named as the cache's copy."""
    import torch
    import torchvision

    from stages.models.pretrained import import_teacher
    from stages.training.params import TeacherSource
    from tests.core.test_pretrained import ten_wnids

    name = "ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1"
    weights = torchvision.models.get_weight(name)
    home = tmp_path / "home"
    cached = home / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.shufflenet_v2_x0_5(num_classes=1000).state_dict(), cached)
    monkeypatch.setenv("TORCH_HOME", str(home))
    good = cached.read_bytes()
    spec = TeacherSource.model_validate({"type": "torchvision", "weights": name})
    classes = sorted(ten_wnids())

    def load() -> str:
        t = import_teacher("shufflenet_v2_x0_5", spec, classes, 32, None, ([0.5] * 3, [0.25] * 3))
        return hashlib.sha256(b"".join(v.numpy().tobytes() for v in t.model.state_dict().values())).hexdigest()

    expected = load()
    started, results = time.perf_counter(), {}
    for k, data in share(byte_damage(good), 3, full).items():
        cached.write_bytes(data)
        got = {}
        outcome = run_inprocess(lambda: got.setdefault("digest", load()))
        case = Case(lambda f: None, cached.name)
        results[k] = judge(outcome, case, tmp_path / "none", "", "", lambda: None,
                           lambda: got.get("digest") == expected)
    cached.write_bytes(good)
    report("torch hub cache", results, started)


# --- manifest datasets: manifest.parquet, meta.json's source_root, links -----------------------------------------

@pytest.fixture(scope="module")
def manifest_base(tmp_path_factory) -> Path:
    """A dataset prepared without copies from src/ (a relative prepare.root, so each copy reads its own)."""
    from stages import prepare
    from tests.conftest import TINY, write_params

    root = tmp_path_factory.mktemp("fuzz_manifest") / "project"
    for split in ("train", "val"):
        imagefolder(root / "src" / split)
    write_params(root, {**TINY, "dataset": "imagefolder", "ipc": 1,
                        "prepare": {"root": "src", "copy": False, "image_size": 8}})
    assert run_inprocess(prepare.main, ["--out", "data/imagefolder"], root).code == 0
    imagefolder(root.parent / "elsewhere" / "train")
    return root


def manifest_run(folder: Path, argv) -> Outcome:
    from stages.methods.baselines import baseline

    return run_inprocess(baseline.main, ["random", "--data", "data/imagefolder", "--out", "out"], folder)


def manifest_cases(base: Path) -> dict[str, Case]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = "data/imagefolder/manifest.parquet"
    meta_path = "data/imagefolder/meta.json"
    cases = {f"bytes:{k}": Case(lambda f, d=d: write(f / manifest, d), "manifest.parquet")
             for k, d in byte_damage((base / manifest).read_bytes()).items()}
    table = pq.read_table(base / manifest)

    def rows(column, change):
        def mutate(f):
            values = table.column(column).to_pylist()
            change(values)
            new = table.set_column(table.column_names.index(column), column,
                                   pa.array(values, table.schema.field(column).type))
            (f / manifest).unlink()
            pq.write_table(new, f / manifest)
        return mutate

    for column, value in (("label", 7), ("label", -1), ("label", 1), ("path", "../elsewhere/train/one/0.png"),
                          ("path", "/etc/passwd"), ("path", "train/one/../../../x"), ("name", "../x.png"),
                          ("name", "zz/0.png"), ("bytes", -1), ("bytes", 1), ("mtime_ns", 0)):
        cases[f"row0:{column}={value}"] = Case(rows(column, lambda v, x=value: v.__setitem__(0, x)),
                                               ("manifest.parquet", "src/train/one/0.png"))
    cases["row:duplicated"] = Case(lambda f: (f / manifest).unlink() or pq.write_table(
        pa.concat_tables([table, table.slice(0, 1)]), f / manifest), "manifest.parquet")
    cases["column:missing"] = Case(lambda f: (f / manifest).unlink() or pq.write_table(table.drop(["mtime_ns"]),
                                                                                          f / manifest),
                                   "manifest.parquet")
    meta = json.loads((base / meta_path).read_text())

    def source_root(value):
        def mutate(f):
            from stages.pipeline.outputs import write_json

            write_json(f / meta_path, {**meta, "source_root": value(f) if callable(value) else value})
        return mutate

    for how, value in {"elsewhere": lambda f: str(f.parent / "elsewhere"), "empty": "", "null": None, "number": 1,
                       "dotdot": "../elsewhere", "root": "/", "same-spelled-otherwise": lambda f: str(f / "src") + "/.",
                       "relative-same": "src"}.items():
        cases[f"source_root:{how}"] = Case(source_root(value), "meta.json")
    cases["source_root:relative-same"].damaged = "-"
    cases["source_root:same-spelled-otherwise"].damaged = "-"

    def link_out(f):
        target = f / "src/train/one/0.png"
        target.unlink()
        target.symlink_to(f.parent / "elsewhere" / "train" / "one" / "0.png")
    cases["link:file-out"] = Case(link_out, "src/train/one/0.png")
    cases["source:changed"] = Case(lambda f: (f / "src/train/one/0.png").write_bytes(png((1, 2, 3))),
                                   "src/train/one/0.png")
    return cases


@FULL
def test_manifest(manifest_base, tmp_path, full):
    cases = manifest_cases(manifest_base)
    run_kind("manifest", manifest_base, share(cases, 3, full), manifest_run, "out", tmp_path,
             lambda f: content(f / "out"))
