"""Each input that once ended in a traceback, a write outside the output or a silent wrong result, with the one
line the user now sees (run in-process through cli.run, as tests/robustness/test_fuzz_readers.py does).
docs/hardening.md quotes these lines. Also: the launcher check, and outputs that do not depend on Python's patch
release.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY, write_params
from tests.fuzz import leftovers, run_inprocess
from tests.robustness.test_faults_artifacts import TEACHER
from tests.robustness.test_fuzz_readers import base, baseline_run, metrics_base, png_header, project, report_run, \
    verify_run  # noqa: F401


def refused(outcome, kind: str, message: str, out: Path | None = None) -> str:
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error: ")]
    assert outcome.code == 2 and len(errors) == 1, (outcome.code, outcome.stderr[-2000:])
    assert re.match(f"error: {kind}: {message}", errors[0]), errors[0]
    assert out is None or not leftovers(out), leftovers(out)
    if os.environ.get("DDPIPE_FAULT_LOG"):  # the lines as run, for docs/hardening.md
        with open(os.environ["DDPIPE_FAULT_LOG"], "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').rsplit(' (', 1)[0]}\t{errors[0]}\n")
    return errors[0]


def with_params(folder: Path, **override) -> None:
    raw = yaml.safe_load((folder / "params.yaml").read_text())
    for key, value in override.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))


# --- class 3: params --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case, setup, message", [
    ("not-utf8", lambda f: (f / "params.yaml").write_bytes((f / "params.yaml").read_bytes() + b"# caf\xe9\n"),
     r"params.yaml: not UTF-8 \(invalid continuation byte at byte \d+\)"),
    ("seed-2**32", lambda f: with_params(f, seed=2 ** 32),
     r"params.yaml: seed = 4294967296: Input should be less than 4294967296"),
    ("class_prompt-other-placeholder", lambda f: with_params(f, class_prompt="a {name} on {background}"),
     r"params.yaml: class_prompt = 'a \{name\} on \{background\}': only \{name\} may be a placeholder"),
    ("convnet-too-deep", lambda f: with_params(f, **{"models.convnet.depth": 5}),
     r"params.yaml: models.convnet.depth = 5: pools a prepare.image_size = 16 px image below one pixel"),
    ("launcher-shell", lambda f: with_params(f, launcher="python; rm -rf ~"),
     r"params.yaml: launcher = 'python; rm -rf ~': 'python;' is not a supported launcher"),
    ("launcher-torchrun-option", lambda f: with_params(f, launcher="torchrun --no-python"),
     r"params.yaml: launcher = 'torchrun --no-python': '--no-python' is not one of torchrun's options"),
], ids=lambda v: v if isinstance(v, str) and " " not in v and ":" not in v else "")
def test_params_faults_are_one_line(base, tmp_path, case, setup, message):
    folder = project(base, tmp_path / case)
    setup(folder)
    refused(baseline_run(folder)[0], "ParamsError", message, folder / "out")


def test_val_fraction_leaving_a_class_empty(tmp_path):
    from stages import prepare

    tmp_path.joinpath("p").mkdir()
    write_params(tmp_path / "p", {**TINY, "prepare": {"val_fraction": 0.002}})
    refused(run_inprocess(prepare.main, ["--out", "data/digits"], tmp_path / "p"), "ParamsError",
            r"params.yaml: prepare.val_fraction = 0.002: leaves a class with no train or val image",
            tmp_path / "p" / "data" / "digits")


@pytest.mark.parametrize("launcher, ok", [
    ("python", True), ("torchrun --standalone --nproc-per-node=8", True),
    ("torchrun --nnodes 2 --rdzv-endpoint host:29400 --rdzv-backend c10d", True),
    ("python3", False), ("torchrun --nproc-per-node=$(id)", False), ("torchrun -m x", False), ("", False),
    ("torchrun --standalone=1", False), ("sh -c python", False),
])
def test_launcher_is_python_or_torchrun_with_its_options(launcher, ok):
    from stages.pipeline.launcher import check_launcher

    if ok:
        assert check_launcher(launcher) == launcher
    else:
        with pytest.raises(ValueError):
            check_launcher(launcher)


# --- classes 1-3: dataset, ranking, card, images ------------------------------------------------------------------

def test_val_annotations_cannot_write_outside_the_output(tmp_path):
    from PIL import Image

    from stages import prepare

    folder = tmp_path / "p"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (folder / "src" / split / c).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(folder / "src" / split / c / "0.png")
    (folder / "src" / "val" / "images").mkdir()
    Image.new("RGB", (4, 4)).save(folder / "src" / "val" / "images" / "v.png")
    escape = tmp_path / "escaped"
    (folder / "src" / "val" / "val_annotations.txt").write_text(f"v.png\t../../../{escape.name}\n")
    write_params(folder, {**TINY, "dataset": "imagefolder", "ipc": 1, "prepare": {"root": "src", "image_size": 4}})
    out = folder / "data" / "imagefolder"
    line = refused(run_inprocess(prepare.main, ["--out", "data/imagefolder"], folder), "DataError",
                   rf"src/val/val_annotations.txt:1: class: name '../../../{escape.name}' is not a single safe path "
                   "component", out)
    assert not escape.exists() and not list(tmp_path.rglob("v.png"))[1:], line


def test_an_image_above_the_pixel_limit_is_a_resource_error(tmp_path, monkeypatch):
    from PIL import Image

    from stages import prepare

    folder = tmp_path / "p"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (folder / "src" / split / c).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(folder / "src" / split / c / "0.png")
    (folder / "src" / "train" / "a" / "big.png").write_bytes(png_header(100_000, 100_000))
    write_params(folder, {**TINY, "dataset": "imagefolder", "ipc": 1, "prepare": {"root": "src", "image_size": 4}})
    refused(run_inprocess(prepare.main, ["--out", "data/imagefolder"], folder), "ResourceError",
            r"src/train/a/big.png: 100000x100000 = 10,000,000,000 pixels, above the limit of 89,478,485 "
            r"\(DDPIPE_MAX_PIXELS\)", folder / "data" / "imagefolder")
    monkeypatch.setenv("DDPIPE_MAX_PIXELS", "10")  # a limit of the user's: 4x4 images are over it too
    refused(run_inprocess(prepare.main, ["--out", "data/imagefolder"], folder), "ResourceError",
            r"src/train/a/0.png: 4x4 = 16 pixels, above the limit of 10")


def test_a_damaged_data_meta_json(base, tmp_path):
    folder = project(base, tmp_path / "p")
    meta = folder / "data" / "digits" / "meta.json"
    meta.write_text(meta.read_text()[:100])
    refused(baseline_run(folder)[0], "DataError", r"data/digits/meta.json: not valid JSON", folder / "out")
    meta.write_text(json.dumps({**json.loads((base / "data/digits/meta.json").read_text()), "image_size": "16"}))
    refused(baseline_run(folder)[0], "DataError", r"data/digits/meta.json: image_size: Input should be a valid "
                                                  "integer", folder / "out")


def ranking_text(base: Path) -> list[str]:
    from stages.data.folder import list_images, read_classes

    train = base / "data" / "digits" / "train"
    classes = read_classes(base / "data" / "digits")
    rows, seen = ["path,class,label,score,rank"], {}
    for p, label in list_images(train, classes):
        seen[label] = seen.get(label, -1) + 1
        rows.append(f"{p.relative_to(train).as_posix()},{classes[label]},{label},{0.9 - 1e-4 * seen[label]:.8f},"
                    f"{seen[label]}")
    return rows


@pytest.mark.parametrize("case, damage, message", [
    ("duplicate-row", lambda r: [*r, r[2]], r"ranking.csv:\d+: '0/\d+.png' listed twice \(first at line 3\)"),
    ("nan-score", lambda r: [r[0], r[1].rsplit(",", 2)[0] + ",nan,0", *r[2:]],
     r"ranking.csv:2: score nan is not a probability in \[0, 1\]"),
    ("non-numeric", lambda r: [r[0], r[1].rsplit(",", 2)[0] + ",high,0", *r[2:]],
     r"ranking.csv:2: label '0', score 'high', rank '0': expected integer, number, integer"),
    ("empty", lambda r: [], r"ranking.csv: empty"),
    ("not-utf8", None, r"ranking.csv: not UTF-8"),
], ids=lambda v: v if isinstance(v, str) and " " not in v and ":" not in v else "")
def test_ranking_faults(base, tmp_path, case, damage, message):
    from stages.methods.delt import select

    folder = project(base, tmp_path / case)
    rows = ranking_text(base)
    data = ("\n".join(damage(rows)) + "\n").encode() if damage else ("\n".join(rows) + "\n").encode() + b"\xff\n"
    (folder / "ranking.csv").write_bytes(b"" if case == "empty" else data)
    outcome = run_inprocess(select.main, ["--ranking", "ranking.csv", "--data", "data/digits", "--out", "init"], folder)
    refused(outcome, "ArtifactError", message, folder / "init")


def test_card_not_utf8_and_counts_checked_by_verify(base, tmp_path):
    folder = project(base, tmp_path / "p")
    card = folder / "set" / "card.json"
    card.write_bytes(card.read_bytes().replace(b'"random"', b'"r\xe9ndom"', 1))
    refused(verify_run(folder)[0], "ArtifactError", r"set/card.json: not UTF-8")
    raw = json.loads((base / "set" / "card.json").read_text())
    card.write_text(json.dumps({**raw, "content": {**raw["content"], "files": raw["content"]["files"] + 1}}))
    refused(verify_run(folder)[0], "ArtifactError",
            rf"set/SHA256SUMS: lists {raw['content']['files']} files, set/card.json says content.files = "
            rf"{raw['content']['files'] + 1}")
    card.write_text(json.dumps({**raw, "ipc": 2}))
    refused(verify_run(folder)[0], "ArtifactError", r"set: holds 30 images, above card.json's ipc 2 x 10 classes")
    card.write_text(json.dumps({**raw, "ipc": 1e308}))  # a count the set cannot hold, not a bigger budget
    refused(verify_run(folder)[0], "ArtifactError",
            r"set/card.json: ipc = 1e\+308 x 10 classes is more than the 30 images the set holds")
    assert raw["draws"] == 2  # random's draws live in draw<k>/: a card that forgets them is refused by name
    card.write_text(json.dumps({k: v for k, v in raw.items() if k != "draws"}))
    refused(verify_run(folder)[0], "ArtifactError",
            r"set/card.json: no class folder .*set/0: the set's folders do not match its card \(draws = None\)")


def damaged_metrics(case: str, raw: dict, text: bytes) -> bytes:
    if case == "not-json":
        return text[:len(text) // 2]
    if case == "not-utf8":
        return text.replace(b'"random"', b'"r\xe9ndom"', 1)
    if case == "nan":
        return text.replace(b'"mean": ', b'"mean": NaN, "was": ', 1)
    changed = {"missing-key": {k: v for k, v in raw.items() if k != "train_bytes"},
               "wrong-type": {**raw, "teacher_fidelity": "0.9"},
               "seeds": {**raw, "seeds": 3}}[case]
    return json.dumps(changed).encode()


@pytest.mark.parametrize("case, message", [
    ("not-json", r"metrics/random.json: not valid JSON \(.* at line \d+, column \d+\)"),
    ("not-utf8", r"metrics/random.json: not UTF-8 \(invalid continuation byte at byte \d+\)"),
    ("nan", r"metrics/random.json: not valid JSON \(NaN is not a number JSON allows\)"),
    ("missing-key", r"metrics/random.json: train_bytes: Field required"),
    ("wrong-type", r"metrics/random.json: teacher_fidelity: Input should be a valid number"),
    ("seeds", r"metrics/random.json: \(top level\): students.convnet.hard.per_seed_top1: 2 values, seeds = 3"),
])
def test_a_damaged_metrics_json_stops_report(metrics_base, tmp_path, case, message):
    """report reads each metrics file through its schema: one line naming the file, no report folder."""
    folder = project(metrics_base, tmp_path / case)
    path = folder / "metrics" / "random.json"
    path.write_bytes(damaged_metrics(case, json.loads(path.read_text()), path.read_bytes()))
    refused(report_run(folder)[0], "ArtifactError", message, folder / "report")
    assert not (folder / "summary.json").exists()


def test_verify_run_is_a_typed_function_tests_call_in_process(base, tmp_path, monkeypatch, capsys):
    """verify.run(set, data) in this process: the verdict it prints, with and without the dataset; a damaged
    set raises the error cli.run turns into the one line."""
    from stages import verify
    from stages.pipeline.errors import ArtifactError

    folder = project(base, tmp_path / "p")
    monkeypatch.chdir(folder)
    card = json.loads((folder / "set" / "card.json").read_text())
    verdict = verify.run(Path("set"), Path("data/digits"))
    assert verdict == (f"set: ok - random on digits, ipc 3, 30 images of 10 classes, {card['content']['files']} "
                       "files match SHA256SUMS")
    assert verify.run(Path("set")) == verdict and capsys.readouterr().out == f"{verdict}\n{verdict}\n"
    next((folder / "set").rglob("*.png")).write_bytes(b"not a png")
    with pytest.raises(ArtifactError, match=r"set/draw\d/.*\.png: content differs from SHA256SUMS"):
        verify.run(Path("set"))


# --- class 3: shipped labels, FKD, teacher, latents, resume -------------------------------------------------------

def run_reader(read):
    box = {}
    return run_inprocess(lambda: box.setdefault("v", read()))


def test_labels_faults(base, tmp_path):
    from safetensors.torch import save_file

    from stages.data.distilled import load_set, read_labels

    set_dir = shutil.copytree(base / "set", tmp_path / "set")
    card, images = load_set(set_dir, base / "data" / "digits")
    card = card.model_copy(update={"labels": "labels.safetensors"})
    path = set_dir / "labels.safetensors"
    values = torch.randn(len(images), 10)
    for metadata, message in [(None, "no 'paths' metadata"),
                              ({"paths": "[1,"}, r"metadata 'paths': not valid JSON")]:
        save_file({"logits": values}, path, metadata=metadata)
        refused(run_reader(lambda: read_labels(set_dir, card, images)), "ArtifactError",
                rf"{path}: {message}")
    path.write_bytes(b"\xff" * 8 + b"{bad header")
    refused(run_reader(lambda: read_labels(set_dir, card, images)), "ArtifactError",
            rf"{path}: not a readable safetensors file")


def test_fkd_faults(tmp_path):
    import pyarrow.parquet as pq

    from stages.data.augment import Augment, plan_epoch
    from stages.evaluate import fkd_plans
    from stages.pipeline.artifacts import fkd_files
    from stages.training.soft_labels import epoch_file, write_epoch

    n = 8
    plan = plan_epoch(n, 4, __import__("numpy").random.default_rng(0), Augment((0.5, 1), True, "cutmix", 1.0, 16))
    write_epoch(epoch_file(tmp_path, 0), plan, torch.randn(n, 10))
    good = epoch_file(tmp_path, 0).read_bytes()
    meta = {"epochs": 1, "batch_size": 4, "num_images": n}
    (tmp_path / "fkd.json").write_text(json.dumps(meta))
    read = lambda: fkd_plans(tmp_path, 1, 4, n, 10)(0)  # noqa: E731
    epoch = epoch_file(tmp_path, 0)
    epoch.write_bytes(good[:len(good) // 2])
    refused(run_reader(read), "ArtifactError", rf"{epoch}: not a readable FKD epoch file")
    pq.write_table(pq.read_table(__import__("io").BytesIO(good)).slice(0, n - 1), epoch)
    refused(run_reader(read), "ArtifactError", rf"{epoch}: 7 rows with logits \(7, 10\), expected 8 rows x 10 classes")
    table = pq.read_table(__import__("io").BytesIO(good))
    import pyarrow as pa
    order = table.column("image").to_numpy().copy()
    order[0] = 99
    pq.write_table(table.set_column(0, "image", pa.array(order)), epoch)
    refused(run_reader(read), "ArtifactError", rf"{epoch}: image column is not a permutation of the set's 8 images")
    epoch.write_bytes(good)
    (tmp_path / "fkd.json").write_text("{not json")
    refused(run_reader(read), "ArtifactError", rf"{tmp_path}/fkd.json: not valid JSON")
    (tmp_path / "fkd.json").write_text(json.dumps({"epochs": 1, "batch_size": 4}))
    refused(run_reader(read), "ArtifactError", rf"{tmp_path}/fkd.json: num_images: Field required")
    (tmp_path / "fkd.json").write_text(json.dumps({**meta, "files": {epoch.name: "0" * 64}}))
    refused(run_reader(read), "ArtifactError", rf"{epoch}: content differs from fkd.json's record")
    (tmp_path / "fkd.json").write_text(json.dumps({**meta, "files": fkd_files(tmp_path)}))
    assert run_reader(read).code == 0


def test_teacher_meta_missing_a_key_and_its_content_record(prepared, tmp_path):
    from stages.models import load_checkpoint

    teacher = shutil.copytree(prepared / TEACHER, tmp_path / "teacher")
    meta = json.loads((teacher / "meta.json").read_text())
    (teacher / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "mean"}))
    refused(run_reader(lambda: load_checkpoint(teacher)), "ArtifactError",
            rf"{teacher}/meta.json: mean: Field required")
    (teacher / "meta.json").write_text(json.dumps({**meta, "val_top1": 1.0}, indent=2, sort_keys=True) + "\n")
    refused(run_reader(lambda: load_checkpoint(teacher)), "ArtifactError",
            rf"{teacher}/meta.json: content differs from {teacher}/SHA256SUMS \(changed after the teacher was made\)")
    (teacher / "SHA256SUMS").unlink()
    refused(run_reader(lambda: load_checkpoint(teacher)), "ArtifactError", rf"{teacher}/SHA256SUMS: missing")


def test_latents_index_with_a_non_integer_row(tmp_path):
    from stages.data.latents_folder import read_latents, write_latents

    write_latents(tmp_path, torch.zeros(2, 4, 2, 2), torch.tensor([0, 1]), ["0/a.png", "1/b.png"])
    index = tmp_path / "index.csv"
    index.write_text(index.read_text().replace("\n1,", "\none,"))
    refused(run_reader(lambda: read_latents(tmp_path)), "ArtifactError",
            rf"{index}:3: row 'one', label '1': expected row 1 and label 1 of latents.safetensors")


def test_torn_resume_state_says_the_folder_can_be_removed(tmp_path):
    from stages.pipeline.resume import Resume

    resume = Resume(tmp_path / "out", {"a": 1})
    resume.save("state", {"w": torch.zeros(100)})
    state = resume.folder / "state.pt"
    state.write_bytes(state.read_bytes()[:200])
    refused(run_reader(lambda: Resume(tmp_path / "out", {"a": 1}).load("state")), "ArtifactError",
            rf"{state}: refused - not a plain weights-only state .*; delete the progress folder {resume.folder} to "
            "start afresh")
    (resume.folder / "key.json").write_text('{"key": "ab')
    refused(run_reader(lambda: Resume(tmp_path / "out", {"a": 1})), "ArtifactError",
            rf"{resume.folder}/key.json: torn or not JSON .*; "
            rf"delete the progress folder {resume.folder} to start afresh")


# --- class 6: outputs do not depend on Python's patch release -------------------------------------------------------

def test_outputs_do_not_depend_on_the_python_patch_release(base, tmp_path, monkeypatch):
    """The same stage under two patch releases of one Python gives the same bytes (a card names only 3.11)."""
    import platform

    digests = []
    for patch in ("3.11.2", "3.11.7"):
        monkeypatch.setattr(platform, "python_version", lambda patch=patch: patch)
        monkeypatch.setattr(platform, "python_version_tuple", lambda patch=patch: tuple(patch.split(".")))
        folder = project(base, tmp_path / patch)
        outcome, digest = baseline_run(folder)
        assert outcome.code == 0, outcome.stderr
        digests.append(digest())
        card = json.loads((folder / "out" / "card.json").read_text())
        assert card["versions"]["python"] == "3.11" and "dvc" not in card["versions"]
    assert digests[0] == digests[1]


def test_the_run_log_keeps_the_full_python_version(tmp_path, monkeypatch):
    import platform

    from stages.pipeline import runlog

    monkeypatch.setenv("DDPIPE_RUN_LOG", str(tmp_path / "runs.jsonl"))
    runlog.record("x", "out", 1.0)
    assert runlog.read()[0]["python"] == platform.python_version()
