"""Untrusted files: no pickle is ever loaded from disk, and no path read from a file leaves its root.

A planted pickle's __reduce__ would create a marker file when unpickled; each case first shows the payload is
live (an unsafe load creates the marker), then that the stage refuses the file and the marker never appears.
Paths from captions, SHA256SUMS, cards, ranking CSVs and latent indexes are tried with `../`, absolute paths
and symlinks leading out; each is refused naming the file (and line) and the path.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from stages.captions.jsonl import caption_line
from stages.data.latents_folder import write_latents
from stages.pipeline.paths import inside, relative
from stages.pipeline.errors import ArtifactError
from stages.pipeline.outputs import sha256_bytes, sha256_file
from stages.pipeline.resume import Resume
from tests.conftest import REPO, assert_nothing_left, assert_refused, run_stage, workdir
from tests.robustness.test_faults_artifacts import TEACHER, captions_lines, prototypes_vlcp, sd_dir, train_paths  # noqa: F401


class Payload:
    """Unpickling this calls open(marker, "w"): code run by merely loading the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path: Path, marker: Path) -> Path:
    """A torch-format pickle (what a `.bin`/`.pt` checkpoint is) carrying the payload, proven live."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, path)
    probe = marker.with_name(marker.name + ".probe")
    torch.save({"payload": Payload(probe)}, probe.with_suffix(".pt"))
    torch.load(probe.with_suffix(".pt"), weights_only=False)  # the unsafe load a careless loader would do
    assert probe.exists(), "the planted pickle is not live: the test would prove nothing"
    return path


# --- no pickle from disk --------------------------------------------------------------------------------------

def test_a_pickled_diffusion_component_is_refused_never_unpickled(prepared, sd_dir, tmp_path):
    folder = workdir(prepared, "untrusted-pickled-vae")
    broken = shutil.copytree(sd_dir, folder / "diffusion")
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "pwned-vae"
    plant(broken / "vae" / "diffusion_pytorch_model.bin", marker)
    out = folder / "latents"
    result = run_stage(folder, "latents", "--diffusion", str(broken), "--data", "data/digits", "--out", str(out),
                       check=False)
    assert_refused(result, "ArtifactError", rf"{broken}/vae: component 'vae' has only pickled weights "
                                            r"\['diffusion_pytorch_model.bin'\]: refused, never unpickled")
    assert_nothing_left(out)
    assert not marker.exists()


def test_diffusers_itself_is_told_safetensors_only(sd_dir, tmp_path, monkeypatch):
    """The second lock: even past our folder check, the loaders pass use_safetensors=True."""
    import stages.generation.img2img
    import stages.latents

    broken = shutil.copytree(sd_dir, tmp_path / "diffusion")
    marker = tmp_path / "pwned-unet"
    for part in ("vae", "unet"):
        (broken / part / "diffusion_pytorch_model.safetensors").unlink()
        plant(broken / part / "diffusion_pytorch_model.bin", marker)
    monkeypatch.setattr(stages.latents, "check_pipeline_folder", lambda *a, **k: None)
    monkeypatch.setattr(stages.generation.img2img, "check_pipeline_folder", lambda *a, **k: None)
    with pytest.raises(ArtifactError, match="not a diffusers VAE .*diffusion_pytorch_model.safetensors"):
        stages.latents.load_vae(broken)
    with pytest.raises(ArtifactError, match="not a Stable Diffusion pipeline folder"):
        stages.generation.img2img.load_pipeline(broken)
    assert not marker.exists()


def test_a_planted_resume_state_is_refused_never_unpickled(tmp_path):
    out = tmp_path / "artifacts" / "relabel"
    resume = Resume(out, {"epochs": 3}, [])
    marker = tmp_path / "pwned-resume"
    plant(resume.path("state.pt"), marker)
    with pytest.raises(ArtifactError, match=rf"{resume.folder}/state.pt: refused - not a plain weights-only state "
                                            rf".*; delete the progress folder {resume.folder} to start afresh"):
        resume.load("state")
    assert not marker.exists()
    resume.save("state", {"step": torch.tensor(3), "note": "plain"})  # plain state still round-trips
    assert resume.load("state")["note"] == "plain"


def test_a_pickle_named_model_safetensors_is_refused_never_unpickled(prepared, tmp_path):
    folder = workdir(prepared, "untrusted-pickled-teacher")
    teacher = shutil.copytree(prepared / TEACHER, folder / "teacher")
    marker = tmp_path / "pwned-teacher"
    plant(teacher / "model.safetensors", marker)
    out = folder / "ranking.csv"
    result = run_stage(folder, "rank", "--teacher", str(teacher), "--data", "data/digits", "--out", str(out),
                       check=False)
    assert_refused(result, "ArtifactError", rf"{teacher}/model.safetensors: not a readable safetensors file")
    assert_nothing_left(out)
    assert not marker.exists()


def test_no_loader_in_the_package_can_unpickle():
    """Every torch.load is weights_only=True, every from_pretrained of weights is safetensors-only, no pickle."""
    import re

    root = REPO / "stages"
    for path in root.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert not re.search(r"\bpickle\.loads?\(|allow_pickle=True|read_pickle|joblib\.load", text), path
        for call in re.findall(r"(\w+)\.from_pretrained\(((?:[^()]|\([^)]*\))*)\)", text, re.S):
            if not call[0].endswith(("Tokenizer", "Processor", "Config")):
                assert "use_safetensors=True" in call[1], f"{path}: {call[0]}.from_pretrained"


# --- paths read from files stay inside their root -----------------------------------------------------------

@pytest.mark.parametrize("text", ["../x.png", "a/../../x.png", "/etc/passwd", "", ".", "a\\..\\x.png", "C:/x.png"])
def test_the_helper_refuses_paths_leaving_their_folder(tmp_path, text):
    with pytest.raises(ArtifactError, match=r"list.txt:7: path .* leaves its folder"):
        inside(tmp_path, text, "list.txt:7")


def test_the_helper_follows_symlinks_but_allows_a_linked_root_and_dvc_cache_objects(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("x")
    (root / "a" / "link").symlink_to(outside / "secret")
    with pytest.raises(ArtifactError, match=rf"m:1: path 'a/link' leads out of {root} \(a symlink to "):
        inside(root, "a/link", "m:1")
    (tmp_path / "linked-root").symlink_to(root)  # where a dataset lives is the user's choice
    assert inside(tmp_path / "linked-root", "a", "m:1") == tmp_path / "linked-root" / "a"
    cached = outside / "cache" / "files" / "md5" / "ab" / ("c" * 30)  # DVC's cache.type = symlink
    cached.parent.mkdir(parents=True)
    cached.write_text("y")
    (root / "a" / "cached.png").symlink_to(cached)
    assert inside(root, "a/cached.png", "m:1") == root / "a" / "cached.png"
    assert relative("a/b.png", "m:1").parts == ("a", "b.png")


@pytest.mark.parametrize("path", ["../../../etc/passwd", "/etc/passwd", "3/../../x.png"])
def test_a_caption_path_leaving_the_train_folder_is_refused(prepared, path):
    folder = workdir(prepared, f"untrusted-caption-{abs(hash(path))}")
    (folder / "artifacts").mkdir()
    lines = captions_lines(folder)
    lines[2] = caption_line(path, "3", "a digit 3", "test")
    result, out, captions = prototypes_vlcp(folder, lines)
    assert_refused(result, "ArtifactError", rf"{captions}:3: path '{path}' leaves its folder")
    assert_nothing_left(out)


def relabel(folder: Path, set_dir: Path):
    out = folder / "soft_labels"
    result = run_stage(folder, "relabel", "--set", str(set_dir), "--teacher", str(folder.parent / TEACHER),
                       "--data", "data/digits", "--epochs", "1", "--out", str(out), check=False)
    return result, out


def relist(set_dir: Path, lines: list[str]) -> None:
    """Rewrite SHA256SUMS and the card's hash of it, as someone tampering with a shared set would."""
    text = "".join(line + "\n" for line in lines).encode()
    (set_dir / "SHA256SUMS").write_bytes(text)
    card = json.loads((set_dir / "card.json").read_text())
    card["content"] = {"files": len(lines), "sha256": sha256_bytes(text)}
    (set_dir / "card.json").write_text(json.dumps(card))


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_a_set_listing_files_outside_itself_is_refused(prepared, tmp_path, how):
    folder = workdir(prepared, f"untrusted-sums-{how}")
    set_dir = folder / "random"
    run_stage(folder, "baseline", "random", "--data", "data/digits", "--out", str(set_dir))
    lines = (set_dir / "SHA256SUMS").read_text().splitlines()
    secret = tmp_path / "secret.png"
    shutil.copyfile(prepared / "data" / "digits" / "train" / "0" / "0000.png", secret)
    if how == "symlink":  # a set file replaced by a link to a file elsewhere, listed with that file's hash
        name = lines[4].split("  ", 1)[1]
        (set_dir / name).unlink()
        (set_dir / name).symlink_to(secret)
        lines[4] = f"{sha256_file(secret)}  {name}"
        expected = rf"path '{name}' leads out of {set_dir} \(a symlink to {secret}\)"
    else:
        name = "../../../secret.png" if how == "dotdot" else str(secret)
        lines[4] = f"{sha256_file(secret)}  {name}"
        expected = rf"path '{name}' leaves its folder"
    relist(set_dir, lines)
    result, out = relabel(folder, set_dir)
    assert_refused(result, "ArtifactError", rf"{set_dir}/SHA256SUMS:5: {expected}")
    assert_nothing_left(out)


@pytest.mark.parametrize("images_from, expected", [
    ("/etc", r"path '/etc' leaves its folder"),
    ("data/../../etc", r"path 'data/../../etc' leaves its folder"),
    ("data/digits/escape", r"path 'escape' leads out of data/digits \(a symlink to "),
])
def test_the_full_set_reference_cannot_leave_the_dataset(prepared, tmp_path, images_from, expected):
    data, _ = minimal_data(prepared, tmp_path / "digits")  # a dataset folder of our own, with a link out of it
    (tmp_path / "elsewhere").mkdir()
    (data / "escape").symlink_to(tmp_path / "elsewhere")
    folder = workdir(prepared, f"untrusted-full-{abs(hash(images_from))}", data=data)
    set_dir = folder / "full"
    run_stage(folder, "baseline", "full", "--data", "data/digits", "--out", str(set_dir))
    card = json.loads((set_dir / "card.json").read_text())
    (set_dir / "card.json").write_text(json.dumps({**card, "images_from": images_from}))
    result, out = relabel(folder, set_dir)
    assert_refused(result, "ArtifactError", rf"{set_dir}/card.json: images_from: {expected}")
    assert_nothing_left(out)


def test_shipped_labels_must_be_a_file_of_the_set(prepared, tmp_path):
    from stages.data.distilled import load_set, read_labels

    folder = workdir(prepared, "untrusted-labels")
    set_dir = folder / "random"
    run_stage(folder, "baseline", "random", "--data", "data/digits", "--out", str(set_dir))
    card, images = load_set(set_dir, folder / "data" / "digits")
    # relative and absolute
    for labels, message in [("../../labels.safetensors", "leaves its folder"),
                            (str(tmp_path / "x"), "leaves its folder")]:
        with pytest.raises(ArtifactError, match=rf"{set_dir}/card.json: labels: path '{labels}' {message}"):
            read_labels(set_dir, card.model_copy(update={"labels": labels}), images)


def minimal_data(prepared: Path, root: Path, per_class: int = 3) -> tuple[Path, list[list[str]]]:
    """A dataset folder with `per_class` train images per class (all select needs) and its ranking rows."""
    source = prepared / "data" / "digits"
    root.mkdir()
    for name in ("classes.json", "meta.json"):
        shutil.copyfile(source / name, root / name)
    rows = []
    for label, name in enumerate(json.loads((source / "classes.json").read_text())):
        (root / "train" / name).mkdir(parents=True)
        for k, image in enumerate(sorted((source / "train" / name).iterdir())[:per_class]):
            shutil.copyfile(image, root / "train" / name / image.name)
            rows.append([f"{name}/{image.name}", name, label, f"{0.9 - 0.1 * k:.8f}", k])
    return root, rows


def select(folder: Path, rows: list[list]):
    ranking = folder / "ranking.csv"
    with open(ranking, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([["path", "class", "label", "score", "rank"], *rows])
    out = folder / "init"
    return run_stage(folder, "select", "--ranking", str(ranking), "--data", "data/digits", "--out", str(out),
                     check=False), out, ranking


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_ranking_paths_cannot_leave_the_train_folder(prepared, tmp_path, how):
    data, rows = minimal_data(prepared, tmp_path / "digits")
    folder = workdir(prepared, f"untrusted-ranking-{how}", data=data)
    secret = tmp_path / "secret.png"
    shutil.copyfile(data / "train" / "1" / rows[3][0].split("/")[1], secret)
    if how == "symlink":
        (data / "train" / "1" / "zz.png").symlink_to(secret)
        rows[4][0] = "1/zz.png"
        expected = rf"path '1/zz.png' leads out of data/digits/train \(a symlink to {secret}\)"
    else:
        rows[4][0] = "1/../../../secret.png" if how == "dotdot" else str(secret)
        expected = rf"path '{rows[4][0]}' leaves its folder"
    result, out, ranking = select(folder, rows)
    assert_refused(result, "ArtifactError", rf"{ranking}:6: {expected}")
    assert_nothing_left(out)


def test_a_latents_index_path_leaving_the_train_folder_is_refused(prepared):
    folder = workdir(prepared, "untrusted-latents")
    paths = train_paths(folder)
    paths[7] = "0/../../../../etc/passwd"
    labels = torch.tensor([int(p.split("/")[0]) for p in paths])
    latents = folder / "latents"
    write_latents(latents, torch.zeros(len(paths), 4, 2, 2), labels, paths)
    out = folder / "prototypes" / "d4m"
    result = run_stage(folder, "prototypes", "d4m", "--latents", str(latents), "--data", "data/digits", "--out",
                       str(out), check=False)
    assert_refused(result, "ArtifactError", rf"{latents}/index.csv:9: path '{paths[7]}' leaves its folder")
    assert not out.with_name("d4m.json").exists() and not out.with_name("d4m.safetensors").exists()
