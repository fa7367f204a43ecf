"""Teachers from outside (teacher.source), offline: torchvision weights from a temporary hub cache, timm
weights from a temporary Hugging Face cache, the same weights as a file in several checkpoint layouts, the
ImageNet-subset class mapping, the offline error, and a planted pickle that must never run."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

from stages.models import load_checkpoint
from stages.models.pretrained import imagenet_wnids, import_teacher, read_weights
from stages.pipeline.errors import ArtifactError, ParamsError, ResourceError
from stages.training.params import TeacherSource
from tests.conftest import REPO, TINY, assert_refused, merge, run_stage, write_params
from tests.tiny import CIFAR10

WEIGHTS = "ResNet18_Weights.IMAGENET1K_V1"
SIZE = 32


def ten_wnids() -> list[str]:
    wnids = imagenet_wnids()
    return [wnids[i] for i in (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)]  # ImageNette's ten


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """A prepared 10-WNID imagefolder (a 1000-class head's subset), and the project folder around it."""
    root = tmp_path_factory.mktemp("subset")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for c in ten_wnids():
            (root / "src" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(
                    root / "src" / split / c / f"{i}.png")
    (root / "stages").symlink_to(REPO / "stages")
    write_params(root, merge(TINY, {"dataset": "imagefolder", "ipc": 1,
                                    "prepare": {"root": str(root / "src"), "image_size": SIZE}}))
    run_stage(root, "prepare", "--out", "data/imagefolder")
    return root


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A torch hub cache holding random ResNet-18 weights under the file name torchvision expects."""
    home = tmp_path_factory.mktemp("torch_home")
    weights = torchvision.models.get_weight(WEIGHTS)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000)
    path = home / "hub" / "checkpoints" / Path(weights.url).name
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    return home, model.eval()


def classes_of(project=None):
    if project is None:  # the in-process tests need only the class order prepare writes: sorted folder names
        return sorted(ten_wnids())
    return json.loads((project / "data" / "imagefolder" / "classes.json").read_text())


def spec(**kw):
    return TeacherSource.model_validate(kw)


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_torchvision_teacher_from_the_hub_cache_maps_a_wnid_subset(hub, monkeypatch):
    home, reference = hub
    monkeypatch.setenv("TORCH_HOME", str(home))
    classes = classes_of()
    t = import_teacher("resnet18", spec(type="torchvision", weights=WEIGHTS), classes, SIZE, None,
                       ([0.5] * 3, [0.25] * 3))
    x = torch.randn(4, 3, SIZE, SIZE)
    index = [imagenet_wnids().index(c) for c in classes]
    assert torch.allclose(logits(t.model, x), logits(reference, x)[:, index], atol=1e-5)
    assert t.mean == [0.485, 0.456, 0.406] and t.std == [0.229, 0.224, 0.225]  # the weights' own
    assert t.record["mapping"] == {"head": "imagenet", "head_size": 1000, "index": index}
    assert t.record["file"].endswith("resnet18-f37072fd.pth") and len(t.record["sha256"]) == 64


def test_a_class_outside_the_head_is_refused_by_name(hub, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(hub[0]))
    with pytest.raises(ParamsError, match="class 'airplane' of classes.json is not an ImageNet-1K WNID"):
        import_teacher("resnet18", spec(type="torchvision", weights=WEIGHTS), ["n01440764", "airplane"], SIZE,
                       None, ([0.5] * 3, [0.25] * 3))


@pytest.mark.parametrize("layout", ["plain.pth", "state_dict_module.pth", "model_key.pt", "weights.safetensors"])
def test_the_same_weights_as_a_file_in_each_checkpoint_layout(hub, tmp_path, layout):
    reference = hub[1]
    state = reference.state_dict()
    path = tmp_path / layout
    if layout == "plain.pth":
        torch.save(state, path)
    elif layout == "state_dict_module.pth":  # DDP-saved, with the training state around it
        torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif layout == "model_key.pt":
        torch.save({"model": state, "optimizer": {"lr": torch.tensor(0.1)}}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    classes = classes_of()
    t = import_teacher("resnet18", spec(type="file", weights=str(path), head="imagenet"), classes, SIZE, None,
                       ([0.5] * 3, [0.25] * 3))
    x = torch.randn(2, 3, SIZE, SIZE)
    index = [imagenet_wnids().index(c) for c in classes]
    assert torch.allclose(logits(t.model, x), logits(reference, x)[:, index], atol=1e-5)
    assert (t.mean, t.std) == ([0.5] * 3, [0.25] * 3)  # a file teacher sees the data's normalisation


class Planted:
    """Unpickling this would create `marker` (pathlib.Path.touch is called with it)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "teacher.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "extra": Planted(marker)}, path)
    with pytest.raises(ArtifactError) as err:
        read_weights(path)
    assert not marker.exists()
    assert "refused unread" in str(err.value) and "\n" not in str(err.value)


def test_torchvision_arch_with_weights_of_another_arch_is_refused():
    with pytest.raises(ParamsError, match="are not weights of arch 'resnet34'"):
        import_teacher("resnet34", spec(type="torchvision", weights=WEIGHTS), ["n01440764"], SIZE, None,
                       ([0.5] * 3, [0.25] * 3))


def test_timm_teacher_from_the_hugging_face_cache(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from huggingface_hub import constants

    name = "test_resnet.r160_in1k"
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    snapshot = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, snapshot / "model.safetensors")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    classes = classes_of()
    t = import_teacher("tiny_timm", spec(type="timm", weights=name), classes, SIZE, None, ([0.5] * 3, [0.25] * 3))
    x = torch.randn(2, 3, SIZE, SIZE)
    index = [imagenet_wnids().index(c) for c in classes]
    assert torch.allclose(logits(t.model, x), logits(reference, x)[:, index], atol=1e-5)
    assert t.record["file"].endswith("model.safetensors")

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(Exception) as err:
        import_teacher("tiny_timm", spec(type="timm", weights=name), classes, SIZE, None, ([0.5] * 3, [0.25] * 3))
    assert type(err.value).__name__ == "ResourceError" and "models--timm--test_resnet.r160_in1k" in str(err.value)


def teacher_run(project, arch, source, env=None, out=None):
    write_params(project, merge(TINY, {
        "dataset": "imagefolder", "ipc": 1, "prepare": {"root": str(project / "src"), "image_size": SIZE},
        "models": {arch: None}, "teacher": {"archs": ["convnet", "resnet18_modified", arch],
                                             "source": {arch: source}}}))
    return run_stage(project, "teacher", "--arch", arch, "--data", "data/imagefolder", "--out",
                     out or f"artifacts/imagefolder/teachers/{arch}", check=False, env=env)


@pytest.mark.slow  # a stage process (~10 s alone, more on a busy machine); the import itself is tested above
def test_the_teacher_stage_imports_and_the_folder_loads_like_a_trained_one(subset, hub):
    result = teacher_run(subset, "resnet18", {"type": "torchvision", "weights": WEIGHTS},
                         {"TORCH_HOME": str(hub[0])})
    assert result.returncode == 0, result.stderr
    out = subset / "artifacts" / "imagefolder" / "teachers" / "resnet18"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"]["type"] == "torchvision" and meta["source"]["weights"] == WEIGHTS
    assert meta["num_classes"] == 10 and len(meta["source"]["mapping"]["index"]) == 10
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["top1"] <= 1 and set(metrics) == {"top1", "top5"}
    data_meta = json.loads((subset / "data" / "imagefolder" / "meta.json").read_text())
    model, _ = load_checkpoint(out, data_meta["classes_sha256"])  # what rank/recover/relabel/evaluate call
    assert model.fc.out_features == 10


# an unreachable proxy stands for "no internet"; the hub cache is empty
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def test_offline_without_the_weights_names_weights_cache_and_remedy(tmp_path, monkeypatch):
    for key, value in {"TORCH_HOME": str(tmp_path / "empty"), **OFFLINE}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ResourceError) as err:
        import_teacher("resnet18", spec(type="torchvision", weights=WEIGHTS), classes_of(), SIZE, None,
                       ([0.5] * 3, [0.25] * 3))
    expected = tmp_path / "empty" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert f"torchvision weights {WEIGHTS} are not in the torch hub cache ({expected})" in str(err.value)
    assert "offline copy https://download.pytorch.org/models/resnet18-f37072fd.pth to" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.slow  # the same through the stage's command line: one error line, exit 2, no output folder
def test_offline_stage_run_is_one_resource_error_line(subset, tmp_path):
    result = teacher_run(subset, "resnet18", {"type": "torchvision", "weights": WEIGHTS},
                         {"TORCH_HOME": str(tmp_path / "empty"), **OFFLINE}, out="artifacts/offline")
    assert_refused(result, "ResourceError", f"teacher.source.resnet18: torchvision weights {WEIGHTS} are not in "
                                            "the torch hub cache")
    assert not (subset / "artifacts" / "offline").exists()


def test_a_torchvision_layout_small_image_resnet_loads_as_resnet18_modified(tmp_path):
    """The papers' CIFAR/Tiny teachers: torchvision's ResNet-18 with a 3x3 stem and no max-pool, saved by a
    torchvision-reference trainer as {"model": state_dict}; loaded as our resnet18_modified (width 64)."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10)
    reference.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    reference.maxpool = torch.nn.Identity()
    path = tmp_path / "observer.pth"
    torch.save({"model": reference.state_dict(), "epoch": 200}, path)
    t = import_teacher("resnet18_modified", spec(type="file", weights=str(path)), CIFAR10, SIZE,
                       {"width": 64, "norm": "batch"}, ([0.5] * 3, [0.25] * 3))
    x = torch.randn(2, 3, SIZE, SIZE)
    assert torch.allclose(logits(t.model, x), logits(reference, x), atol=1e-4)
    assert t.record["mapping"] == {"head": "dataset", "head_size": 10, "index": list(range(10))}


def test_gpu_settings_do_nothing_on_the_cpu():
    """bf16, channels-last and compile apply on CUDA only: on the CPU the model, its memory format and the
    autocast context are untouched, so CPU bytes stay as they were (tests/pipeline/reproduced/test_determinism.py
    checks whole runs)."""
    from stages.models import accel, build

    model = build("resnet18_modified", 10, SIZE, {"width": 4, "norm": "batch"})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert accel.prepare(model, torch.device("cpu")) is model and accel.compiled(model, "cpu") is model
    assert model.conv1.weight.is_contiguous()  # not switched to channels-last
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with accel.autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu") and torch.randn(2, 2).mm(torch.randn(2, 2)).dtype == torch.float32
