"""Teachers whose weights come from outside: torchvision's or timm's pretrained weights, or a local file.

`import_teacher` returns a model whose outputs are the dataset's classes in classes.json order, so the
teacher folder it is saved into is the same as a trained teacher's: the external head's rows are narrowed
to the dataset's classes (a 10-WNID subset of ImageNet keeps those 10 rows of the 1000-way classifier,
which gives exactly those 10 logits). Nothing here unpickles code: torch checkpoints are read with
`torch.load(weights_only=True)` only.
"""
from __future__ import annotations

import hashlib
import pickle
import re
import urllib.error
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError
from torch import nn

from stages.pipeline.errors import ArtifactError, ParamsError, ResourceError

IMAGENET_CLASSES = 1000
CHECKPOINT_KEYS = ("state_dict", "model")  # where training scripts nest the weights (SRe2L, RDED, timm's)
PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel's and torch.compile's wrappers


@dataclass
class Imported:
    model: nn.Module  # outputs in classes.json order
    mean: list[float]
    std: list[float]
    record: dict  # for meta.json: source, weights, file and its sha256, the class mapping


def imagenet_wnids() -> list[str]:
    """ImageNet-1K's WNIDs in the standard (sorted synset) order every 1000-way head uses, from timm's package
    data (installed, never downloaded)."""
    from importlib.resources import files

    wnids = (files("timm") / "data" / "_info" / "imagenet_synsets.txt").read_text().split()
    if len(wnids) != IMAGENET_CLASSES:
        raise ArtifactError(f"timm's imagenet_synsets.txt lists {len(wnids)} WNIDs, expected {IMAGENET_CLASSES}")
    return wnids


def class_index(head: str, head_size: int, classes: list[str], where: str) -> list[int]:
    """For each dataset class (classes.json order), the teacher output that scores it."""
    if head == "dataset":
        if head_size != len(classes):
            raise ArtifactError(f"{where}: its head has {head_size} outputs, the data has {len(classes)} classes "
                                "(head: dataset means one output per class in classes.json order)")
        return list(range(len(classes)))
    if head_size != IMAGENET_CLASSES:
        raise ArtifactError(f"{where}: its head has {head_size} outputs, not ImageNet-1K's {IMAGENET_CLASSES} "
                            "(head: imagenet)")
    position = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    missing = [c for c in classes if c not in position]
    if missing:
        raise ParamsError(f"{where}: class {missing[0]!r} of classes.json is not an ImageNet-1K WNID "
                          f"({len(missing)} of {len(classes)} classes are not); an ImageNet head covers "
                          "class folders named by WNID (n01440764, ...), else use a teacher with head: dataset")
    return [position[c] for c in classes]


def narrow_head(model: nn.Module, index: list[int], where: str) -> nn.Module:
    """Keep the classifier rows `index` (in that order): the model then outputs exactly those logits."""
    head_size = output_size(model)
    if index == list(range(head_size)):
        return model
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == head_size]
    if not linears:
        raise ArtifactError(f"{where}: no linear classifier with {head_size} outputs to narrow to the "
                            f"{len(index)} classes of the data")
    head = linears[-1]  # the classifier is the last layer of that width
    rows = torch.tensor(index)
    with torch.no_grad():
        head.weight = nn.Parameter(head.weight[rows].clone())
        if head.bias is not None:
            head.bias = nn.Parameter(head.bias[rows].clone())
    head.out_features = len(index)
    if hasattr(model, "num_classes"):  # timm models keep it (reset_classifier, pretrained_cfg)
        model.num_classes = len(index)
    return model


def output_size(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ArtifactError(f"{type(model).__name__}: no linear classifier")
    return linears[-1].out_features


def first_line(e: BaseException) -> str:
    """An exception's first sentence as one short line (torch's and safetensors' messages span several)."""
    text = " ".join((str(e).strip().splitlines() or [type(e).__name__])[0].split()).split(". ")[0]
    return text[:200] or type(e).__name__


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state(model: nn.Module, state: dict, where: str) -> None:
    """load_state_dict (strict), one line on a mismatch: the first tensor torch names, and both shapes."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise ArtifactError(f"{where}: does not fit the model ({detail})") from None


# --- torchvision ---------------------------------------------------------------------------------------------

def torchvision_teacher(arch: str, weights_name: str, where: str) -> tuple[nn.Module, list, list, dict]:
    import torchvision

    try:
        weights = torchvision.models.get_weight(weights_name)
    except (ValueError, KeyError, AttributeError) as e:
        raise ParamsError(f"{where}: {weights_name!r} is not a torchvision weights name such as "
                          f"ResNet18_Weights.IMAGENET1K_V1 ({e})") from None
    enum = torchvision.models.get_model_weights(arch)
    if not isinstance(weights, enum):
        raise ParamsError(f"{where}: {weights_name} are not weights of arch {arch!r} (its weights: "
                          f"{', '.join(f'{enum.__name__}.{w.name}' for w in enum)})")
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    try:  # the hub cache first; a download (hash-checked by torch.hub) only when the file is not there
        state = torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", check_hash=True,
                                                   weights_only=True, progress=False)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise ResourceError(f"{where}: torchvision weights {weights_name} are not in the torch hub cache "
                            f"({path}) and cannot be downloaded ({getattr(e, 'reason', e)}); with internet the same "
                            f"command downloads them, offline copy {weights.url} to {path} (TORCH_HOME moves the "
                            "cache)") from None
    except pickle.UnpicklingError as e:
        raise ArtifactError(f"{path}: not a weights-only checkpoint ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:  # torn, truncated, garbage
        raise ArtifactError(f"{path}: the torch hub cache's copy of {weights_name} is damaged ({first_line(e)}); "
                            "delete it and the same command downloads it again (or copy it from "
                            f"{weights.url})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(f"{path}: the torch hub cache's copy of {weights_name} holds no state dict of tensors")
    model = torchvision.models.get_model(arch, weights=None, num_classes=len(weights.meta["categories"]))
    load_state(model, state, str(path))
    transform = weights.transforms()
    record = {"file": str(path), "sha256": sha256(path), "url": weights.url}
    return model, list(transform.mean), list(transform.std), record


# --- timm ----------------------------------------------------------------------------------------------------

def timm_teacher(name: str, where: str) -> tuple[nn.Module, list, list, dict]:
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError:
        cfg = None
    if cfg is None:
        raise ParamsError(f"{where}: {name!r} is not a timm model with pretrained weights (timm.list_pretrained() "
                          "lists them, e.g. resnet18.a1_in1k)")
    repo = cfg.hf_hub_id
    try:
        model = timm.create_model(name, pretrained=True)
    except (OSError, urllib.error.URLError, ConnectionError, TimeoutError, ValueError) as e:
        source = (f"the Hugging Face cache ({Path(constants.HF_HUB_CACHE) / ('models--' + repo.replace('/', '--'))})"
                  if repo else f"the torch hub cache ({Path(torch.hub.get_dir()) / 'checkpoints'})")
        fetch = (f"`huggingface-cli download {repo}` on a machine with internet, then copy its cache folder (HF_HOME "
                 "moves the cache)" if repo else f"copy {cfg.url} there (TORCH_HOME moves the cache)")
        raise ResourceError(f"{where}: timm weights {name} are not in {source} and cannot be downloaded "
                            f"({type(e).__name__}); with internet the same command downloads them, offline use "
                            f"{fetch}") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, SafetensorError) as e:
        source = (Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--")) if repo
                  else Path(torch.hub.get_dir()) / "checkpoints")
        raise ArtifactError(f"{source}: the cached timm weights {name} are damaged ({first_line(e)}); delete "
                            "that cache folder and the same command downloads them again") from None
    record = {"hf_hub_id": repo}
    if repo:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(repo, filename)
            if isinstance(cached, str):
                record.update(file=cached, sha256=sha256(Path(cached)))
                break
    return model, list(cfg.mean), list(cfg.std), record


# --- a local file --------------------------------------------------------------------------------------------

def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a weights-only torch checkpoint (never unpickling code), unwrapped from
    a `state_dict`/`model` key and the `module.` prefix."""
    if not path.is_file():
        raise ArtifactError(f"{path}: teacher weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise ArtifactError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the restricted unpickler refused a global: nothing was run
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = re.sub(r"\s+", " ", first)[:200]
        raise ArtifactError(f"{path}: refused unread - not a weights-only checkpoint, unpickling it could run "
                            f"code ({first}); save its state_dict (tensors only) or convert it to safetensors") \
            from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:200]
        raise ArtifactError(f"{path}: not a readable torch checkpoint ({reason})") from None
    for key in CHECKPOINT_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ArtifactError(f"{path}: holds no state dict of tensors (top level, or under one of "
                            f"{list(CHECKPOINT_KEYS)})")
    return {strip(k): v for k, v in obj.items()}


def strip(key: str) -> str:
    for prefix in PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def torchvision_resnet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's ResNet-18 key layout (layer<i>.<j>., downsample.) → ours (layers.<k>., shortcut.): the
    papers' small-image ResNet-18 teachers are torchvision models with a 3x3 stem and no max-pool."""
    out = {}
    for key, value in state.items():
        m = re.match(r"layer([1-4])\.([01])\.(.*)$", key)
        if m:
            rest = m.group(3).replace("downsample.", "shortcut.")
            key = f"layers.{(int(m.group(1)) - 1) * 2 + int(m.group(2))}.{rest}"
        out[key] = value
    return out


def file_teacher(arch: str, path: Path, head_size: int, image_size: int, config: dict | None) -> tuple[nn.Module, dict]:
    from stages.models import build

    state = read_weights(path)
    if arch == "resnet18_modified" and "layer1.0.conv1.weight" in state:
        state = torchvision_resnet_keys(state)
    model = build(arch, head_size, image_size, config)
    load_state(model, state, f"{path} (arch {arch!r}, {head_size} outputs)")
    return model, {"file": str(path), "sha256": sha256(path)}


def import_teacher(arch: str, spec, classes: list[str], image_size: int, config: dict | None,
                   data_norm: tuple[list, list]) -> Imported:
    """The teacher `spec` (params' TeacherSource) describes, narrowed to `classes`."""
    where = f"teacher.source.{arch}"
    head = spec.head or ("dataset" if spec.type == "file" else "imagenet")
    if spec.type == "torchvision":
        model, mean, std, record = torchvision_teacher(arch, spec.weights, where)
    elif spec.type == "timm":
        model, mean, std, record = timm_teacher(spec.weights, where)
    else:
        head_size = len(classes) if head == "dataset" else IMAGENET_CLASSES
        model, record = file_teacher(arch, Path(spec.weights), head_size, image_size, config)
        mean, std = data_norm
    mean, std = spec.mean or mean, spec.std or std
    from stages.models import check_finite, check_norm

    check_finite(model, record.get("file") or f"{where} ({spec.weights})")
    mean, std = check_norm(mean, std, f"{where} ({spec.weights})")
    index = class_index(head, output_size(model), classes, f"{where} ({spec.weights})")
    model = narrow_head(model, index, where)
    record = {"type": spec.type, "weights": spec.weights, **record,
              "mapping": {"head": head, "head_size": IMAGENET_CLASSES if head == "imagenet" else len(classes),
                          "index": index}}
    return Imported(model.eval(), [float(v) for v in mean], [float(v) for v in std], record)
