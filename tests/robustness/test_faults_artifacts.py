"""Fault injection, models/artifacts and resources: one case per fault, each through a real stage process.

Every case builds one broken input (a teacher checkpoint, a diffusion folder, a captions folder, a full disk),
runs the stage that reads it, and asserts the one error line (kind and message naming the file, line or
component) and that nothing was left for DVC to cache. The matrix as run is printed by `pytest -s -k matrix`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from stages.captions.jsonl import caption_line, record_captions
from stages.data.folder import list_images, read_classes
from stages.data.latents_folder import write_latents
from stages.models import build, save_checkpoint
from tests.conftest import TINY, assert_nothing_left, assert_refused, run_stage, workdir

ENOSPC_SHIM = Path(__file__).parent / "enospc"
TEACHER = "artifacts/digits/teachers/convnet"
CONVNET = TINY["models"]["convnet"]


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    """A tiny Stable Diffusion folder built from configs (tests/support/models.py), as the diffusion stage writes."""
    from tests.support.models import tiny_stable_diffusion

    return tiny_stable_diffusion(tmp_path_factory.mktemp("faults-sd") / "sd")


def copy_teacher(prepared: Path, folder: Path) -> Path:
    target = folder / "teacher"
    shutil.copytree(prepared / TEACHER, target)
    return target


def rank(folder: Path, teacher: Path):
    out = folder / "artifacts" / "ranking.csv"
    return run_stage(folder, "rank", "--teacher", str(teacher), "--data", "data/digits", "--out", str(out),
                     check=False), out


def train_paths(folder: Path) -> list[str]:
    train = folder / "data" / "digits" / "train"
    return [p.relative_to(train).as_posix() for p, _ in list_images(train, read_classes(folder / "data" / "digits"))]


def fake_latents(folder: Path) -> Path:
    """A latents folder over the real train paths (random values: prototypes fails before clustering)."""
    paths = train_paths(folder)
    classes = read_classes(folder / "data" / "digits")
    labels = torch.tensor([classes.index(p.split("/")[0]) for p in paths])
    out = folder / "latents"
    write_latents(out, torch.randn(len(paths), 4, 2, 2, generator=torch.Generator().manual_seed(0)), labels, paths)
    return out


def captions_lines(folder: Path) -> list[str]:
    return [caption_line(p, p.split("/")[0], f"a digit {p.split('/')[0]}", "test") for p in train_paths(folder)]


def captions_folder(folder: Path, lines: list[str], recorded: bool = True) -> Path:
    """A captions folder holding `lines`; `recorded`: its SHA256SUMS is made over them (a bad line is then one
    the folder's maker wrote). Returns captions.jsonl."""
    captions = folder / "captions" / "captions.jsonl"
    captions.parent.mkdir(exist_ok=True)
    captions.write_text("".join(lines))
    if recorded:
        record_captions(captions.parent)
    return captions


def prototypes_vlcp(folder: Path, lines: list[str], recorded: bool = True):
    captions = captions_folder(folder, lines, recorded)
    out = folder / "artifacts" / "prototypes" / "vlcp"
    result = run_stage(folder, "prototypes", "vlcp", "--latents", str(fake_latents(folder)), "--data", "data/digits",
                       "--captions", str(captions.parent), "--out", str(out), check=False)
    assert not out.with_name("vlcp.json").exists() and not out.with_name("vlcp.safetensors").exists()
    return result, out.with_name("vlcp.json"), captions


# --- each case: (folder, prepared, sd_dir) -> (result, output path, expected kind, message regex) ---------------

def teacher_weights_for_another_class_count(folder, prepared, sd):
    teacher = copy_teacher(prepared, folder)  # meta.json: 10 classes; the weights: a 7-class head
    other = build("convnet", 7, 16, CONVNET)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, teacher / "model.safetensors",
              metadata={"arch": "convnet"})
    result, out = rank(folder, teacher)
    return result, out, "ArtifactError", (rf"{teacher}/model.safetensors: does not fit arch 'convnet' with 10 classes "
                                          rf"of {teacher}/meta.json \(size mismatch for .*torch.Size\(\[7, ")


def teacher_trained_on_another_class_count(folder, prepared, sd):
    teacher = folder / "teacher"  # a whole teacher (meta + weights) for a 7-class dataset
    teacher.mkdir()
    meta = json.loads((prepared / TEACHER / "meta.json").read_text())
    save_checkpoint(build("convnet", 7, 16, CONVNET), teacher, {**meta, "num_classes": 7, "classes_sha256": "f" * 64})
    result, out = rank(folder, teacher)
    return result, out, "ArtifactError", (rf"{teacher}/meta.json: trained on another class order \(7 classes, "
                                          r"classes_sha256 ffffffffffff")


def teacher_meta_names_another_arch(folder, prepared, sd):
    teacher = copy_teacher(prepared, folder)  # convnet weights, meta.json says resnet18_modified
    meta = json.loads((teacher / "meta.json").read_text())
    (teacher / "meta.json").write_text(json.dumps({**meta, "arch": "resnet18_modified",
                                                   "config": TINY["models"]["resnet18_modified"]}))
    result, out = rank(folder, teacher)
    return result, out, "ArtifactError", (rf"{teacher}/model.safetensors: holds 'convnet' weights, "
                                          rf"{teacher}/meta.json says arch 'resnet18_modified'")


def teacher_meta_names_another_width(folder, prepared, sd):
    teacher = copy_teacher(prepared, folder)  # same arch, other config: every tensor's shape differs
    meta = json.loads((teacher / "meta.json").read_text())
    (teacher / "meta.json").write_text(json.dumps({**meta, "config": {**CONVNET, "width": 2 * CONVNET["width"]}}))
    result, out = rank(folder, teacher)
    return result, out, "ArtifactError", rf"{teacher}/model.safetensors: does not fit arch 'convnet' .*size mismatch"


def teacher_weights_truncated(folder, prepared, sd):
    teacher = copy_teacher(prepared, folder)
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result, out = rank(folder, teacher)
    return result, out, "ArtifactError", rf"{weights}: not a readable safetensors file \(.*\); retrain the teacher"


def teacher_weights_garbage(folder, prepared, sd):
    teacher = copy_teacher(prepared, folder)
    (teacher / "model.safetensors").write_bytes(os.urandom(4096))
    result, out = rank(folder, teacher)
    return result, out, "ArtifactError", rf"{teacher}/model.safetensors: not a readable safetensors file"


def teacher_meta_not_json(folder, prepared, sd):
    teacher = copy_teacher(prepared, folder)
    (teacher / "meta.json").write_text('{"arch": "convnet",')
    result, out = rank(folder, teacher)
    return result, out, "ArtifactError", rf"{teacher}/meta.json: not valid JSON"


def diffusion_without(component: str, consumer: str):
    """The diffusion folder with one component removed, read by `consumer` (latents or diffusion_check)."""
    def case(folder, prepared, sd):
        broken = folder / "diffusion"
        shutil.copytree(sd, broken)
        target = broken / component
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        out = folder / "artifacts" / consumer
        if consumer == "latents":
            args = ["--diffusion", str(broken), "--data", "data/digits", "--out", str(out)]
        else:
            args = ["--diffusion", str(broken), "--teacher", str(prepared / TEACHER), "--data", "data/digits",
                    "--out", str(out)]
        result = run_stage(folder, consumer, *args, check=False)
        if component == "model_index.json":
            expected = rf"{broken}/model_index.json: missing; {broken} is not a diffusers pipeline folder"
        else:
            expected = rf"{target}: component '{component}' \(\w+\) missing"
        return result, out, "ArtifactError", expected
    return case


def diffusion_unet_without_weights(folder, prepared, sd):
    broken = folder / "diffusion"
    shutil.copytree(sd, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    out = folder / "artifacts" / "diffusion_check"
    result = run_stage(folder, "diffusion_check", "--diffusion", str(broken), "--teacher", str(prepared / TEACHER),
                       "--data", "data/digits", "--out", str(out), check=False)
    return result, out, "ArtifactError", rf"{broken}/unet: component 'unet' has no weights \(\*.safetensors\)"


def captions_line_for_a_missing_image(folder, prepared, sd):
    lines = captions_lines(folder)
    lines[4] = caption_line("3/not_there.png", "3", "a digit 3", "test")
    result, out, captions = prototypes_vlcp(folder, lines)
    return result, out, "ArtifactError", rf"{captions}:5: caption for '3/not_there.png', which is not a train image"


def captions_duplicate_line(folder, prepared, sd):
    lines = captions_lines(folder)
    lines.insert(10, lines[2])
    result, out, captions = prototypes_vlcp(folder, lines)
    return result, out, "ArtifactError", rf"{captions}:11: duplicate caption for '.*' \(first at line 3\)"


def captions_line_not_json(folder, prepared, sd):
    lines = captions_lines(folder)
    lines[6] = lines[6][:20] + "\n"  # a torn line
    result, out, captions = prototypes_vlcp(folder, lines)
    return result, out, "ArtifactError", rf"{captions}:7: not valid JSON"


def captions_line_missing_key(folder, prepared, sd):
    lines = captions_lines(folder)
    record = json.loads(lines[0])
    del record["caption"]
    lines[0] = json.dumps(record) + "\n"
    result, out, captions = prototypes_vlcp(folder, lines)
    return result, out, "ArtifactError", (rf"{captions}:1: expected exactly the keys \['path', 'class', 'caption', "
                                          r"'captioner'\], found \['captioner', 'class', 'path'\]")


def captions_image_without_caption(folder, prepared, sd):
    lines = captions_lines(folder)
    dropped = json.loads(lines.pop(-1))["path"]
    result, out, captions = prototypes_vlcp(folder, lines)
    return result, out, "ArtifactError", rf"{captions}: no caption for train image '{dropped}' \(1 missing\)"


def captions_malformed_in_diffusion_training(folder, prepared, sd):
    """The other consumer: the diffusion stage's train mode (caption_fraction > 0) reads the same file."""
    lines = captions_lines(folder)
    lines[1] = "not json at all\n"
    captions = captions_folder(folder, lines)
    out = folder / "artifacts" / "diffusion"
    result = run_stage(folder, "diffusion", "--data", "data/digits", "--captions", str(captions.parent), "--out",
                       str(out), "--metrics", str(folder / "artifacts" / "diffusion.json"), check=False)
    assert not (folder / "artifacts" / "diffusion.json").exists()
    return result, out, "ArtifactError", rf"{captions}:2: not valid JSON"


def captions_edited_after_their_record(folder, prepared, sd):
    """Valid lines, but not the ones the caption stage recorded: the record refuses them, naming the file."""
    lines = captions_lines(folder)
    captions = captions_folder(folder, lines)
    lines[4] = lines[4].replace("a digit", "another digit")
    result, out, _ = prototypes_vlcp(folder, lines, recorded=False)  # rewrites captions.jsonl, not the record
    return result, out, "ArtifactError", (rf"{captions}: content differs from {captions.parent}/SHA256SUMS \(changed "
                                          r"after the captions folder was made\)$")


def captions_without_a_record(folder, prepared, sd):
    result, out, captions = prototypes_vlcp(folder, captions_lines(folder), recorded=False)
    return result, out, "ArtifactError", rf"{captions.parent}/SHA256SUMS: missing; the captions folder"


def captions_as_one_file(folder, prepared, sd):
    """Captions made before they were a folder: refused with what to do."""
    captions = folder / "captions.jsonl"
    captions.write_text("".join(captions_lines(folder)))
    out = folder / "artifacts" / "prototypes" / "vlcp"
    result = run_stage(folder, "prototypes", "vlcp", "--latents", str(fake_latents(folder)), "--data", "data/digits",
                       "--captions", str(captions), "--out", str(out), check=False)
    return result, out.with_name("vlcp.json"), "ArtifactError", (rf"{captions}: a file; captions are a folder "
                                                                 r"\(captions.jsonl \+ SHA256SUMS\)")


def synthesize_from_damaged_prototypes(damage: str):
    """synthesize reading prototypes@vlcp's pair (before any model loads): a record missing a key, or a
    truncated centroids file, is one error naming the file (no KeyError or safetensors traceback)."""
    def case(folder, prepared, sd):
        classes = read_classes(folder / "data" / "digits")
        ipc = TINY["ipc"]
        prefix = folder / "prototypes" / "vlcp"
        prefix.parent.mkdir()
        save_file({"centroids": torch.zeros(len(classes), ipc, 4, 2, 2)}, prefix.with_name("vlcp.safetensors"))
        record = {"method": "vlcp", "ipc": ipc, "params": {},
                  "classes": [{"class": c, "clusters": [{"text_prototype": f"digit {c}"}] * ipc} for c in classes]}
        if damage == "record missing a key":
            del record["params"]
            message = rf"{prefix}.json: params: Field required"
        else:
            tensors = prefix.with_name("vlcp.safetensors")
            tensors.write_bytes(tensors.read_bytes()[:100])
            message = rf"{prefix}.safetensors: not a readable safetensors file \("
        prefix.with_name("vlcp.json").write_text(json.dumps(record))
        out = folder / "artifacts" / "vlcp"
        result = run_stage(folder, "synthesize", "vlcp", "--diffusion", str(folder / "no-diffusion"), "--prototypes",
                           str(prefix), "--data", "data/digits", "--out", str(out), "--stats",
                           str(folder / "artifacts" / "vlcp.json"), check=False)
        assert not (folder / "artifacts" / "vlcp.json").exists()
        return result, out, "ArtifactError", message
    return case


def disk_full(stage: str, after: int):
    """`stage` writing onto a disk that fills after `after` bytes (tests/robustness/enospc/sitecustomize.py)."""
    def case(folder, prepared, sd, monkeypatch):
        out = folder / "artifacts" / stage.replace(" ", "_")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ENOSPC_SHIM), os.environ.get("PYTHONPATH", "")]))
        monkeypatch.setenv("DDPIPE_TEST_ENOSPC_UNDER", str(out.parent))
        monkeypatch.setenv("DDPIPE_TEST_ENOSPC_AFTER", str(after))
        if stage == "rank":
            out = out.with_suffix(".csv")
            result = run_stage(folder, "rank", "--teacher", str(prepared / TEACHER), "--data", "data/digits",
                               "--out", str(out), check=False)
        else:
            result = run_stage(folder, "baseline", *stage.split()[1:], "--data", "data/digits", "--out", str(out),
                               check=False)
        return result, out, "ResourceError", rf"{out}: no space left on device"
    return case


CASES = {
    "teacher: weights for another class count than meta.json": teacher_weights_for_another_class_count,
    "teacher: trained on a dataset with another class count": teacher_trained_on_another_class_count,
    "teacher: meta.json names another arch": teacher_meta_names_another_arch,
    "teacher: meta.json names another width": teacher_meta_names_another_width,
    "teacher: model.safetensors truncated": teacher_weights_truncated,
    "teacher: model.safetensors garbage": teacher_weights_garbage,
    "teacher: meta.json not JSON": teacher_meta_not_json,
    "diffusion: no vae/ (latents)": diffusion_without("vae", "latents"),
    "diffusion: no model_index.json (latents)": diffusion_without("model_index.json", "latents"),
    "diffusion: no unet/ (diffusion_check)": diffusion_without("unet", "diffusion_check"),
    "diffusion: no scheduler/ (diffusion_check)": diffusion_without("scheduler", "diffusion_check"),
    "diffusion: no text_encoder/ (diffusion_check)": diffusion_without("text_encoder", "diffusion_check"),
    "diffusion: unet/ without weights": diffusion_unet_without_weights,
    "captions: line for an image that does not exist": captions_line_for_a_missing_image,
    "captions: duplicate line": captions_duplicate_line,
    "captions: line not JSON": captions_line_not_json,
    "captions: line missing a key": captions_line_missing_key,
    "captions: a train image without caption": captions_image_without_caption,
    "captions: malformed line, diffusion train mode": captions_malformed_in_diffusion_training,
    "captions: captions.jsonl edited after its record": captions_edited_after_their_record,
    "captions: no SHA256SUMS": captions_without_a_record,
    "captions: one file, not a folder": captions_as_one_file,
    "prototypes: record missing a key (synthesize)": synthesize_from_damaged_prototypes("record missing a key"),
    "prototypes: centroids truncated (synthesize)": synthesize_from_damaged_prototypes("centroids truncated"),
    "disk full: baseline random, first byte": disk_full("baseline random", 0),
    "disk full: baseline random, mid-set": disk_full("baseline random", 6000),
    "disk full: baseline full (card only)": disk_full("baseline full", 100),
    "disk full: rank (CSV via pandas)": disk_full("rank", 20000),
}
NEEDS_SD = {name for name in CASES if name.startswith("diffusion:")}


# A missing component is one check (check_pipeline_folder); CI runs it for vae/ and model_index.json, the
# other components under `slow` (8-11 s each: a diffusers import per case).
SLOW_CASES = {f"diffusion: no {c}/ (diffusion_check)" for c in ("unet", "scheduler", "text_encoder")}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES else n for n in CASES])
def test_fault(name, prepared, request, monkeypatch):
    sd = request.getfixturevalue("sd_dir") if name in NEEDS_SD else None
    folder = workdir(prepared, "fault-" + "".join(c if c.isalnum() else "-" for c in name))
    (folder / "artifacts").mkdir()
    case = CASES[name]
    args = (folder, prepared, sd, monkeypatch) if name.startswith("disk full") else (folder, prepared, sd)
    result, out, kind, message = case(*args)
    assert_refused(result, kind, message)
    assert_nothing_left(out)
    beside = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
    assert not [n for n in beside if n.startswith(".") and ".tmp" in n], beside  # nor a write_json/csv temp
    print(f"\nMATRIX | {name} | {[line for line in result.stderr.splitlines() if line.startswith('error: ')][0]}")


def test_disk_full_shim_lets_a_roomy_disk_through(prepared, monkeypatch):
    """The shim is not what fails: with room to spare the same stage succeeds under it."""
    folder = workdir(prepared, "fault-roomy-disk")
    out = folder / "artifacts" / "random"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ENOSPC_SHIM), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("DDPIPE_TEST_ENOSPC_UNDER", str(out.parent))
    monkeypatch.setenv("DDPIPE_TEST_ENOSPC_AFTER", str(10 ** 7))
    run_stage(folder, "baseline", "random", "--data", "data/digits", "--out", str(out))
    assert len(list(out.rglob("*.png"))) == 60 and (out / "card.json").exists()  # two draws of 30


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 64 KiB tmpfs, only where we are root and may mount (skipped otherwise)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount refused: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_on_a_real_tmpfs(prepared, tiny_tmpfs):
    """Real ENOSPC from the kernel, native writes included: the random baseline (30 PNGs, 4 KiB pages each)."""
    folder = workdir(prepared, f"fault-tmpfs-{os.getpid()}-{tiny_tmpfs.parent.name}")
    out = tiny_tmpfs / "random"
    result = run_stage(folder, "baseline", "random", "--data", "data/digits", "--out", str(out), check=False)
    assert_refused(result, "ResourceError", rf"{tiny_tmpfs}/\.random\.tmp-\w+/.*: no space left on device")
    assert_nothing_left(out)
    assert list(tiny_tmpfs.iterdir()) == []
    print(f"\nMATRIX | disk full: baseline random on a 64 KiB tmpfs | "
          f"{[line for line in result.stderr.splitlines() if line.startswith('error: ')][0]}")
