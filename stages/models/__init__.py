"""Architecture registry, and teacher checkpoints (safetensors weights + meta.json) in and out."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from stages.pipeline.artifacts import TeacherMeta, read_json, validated, verify_record, write_record
from stages.pipeline.errors import ArtifactError, PipelineError
from stages.models import accel
from stages.models.convnet import ConvNet
from stages.models.resnet import resnet18_modified, resnetap10

OUR_ARCHS = {"convnet": ConvNet, "resnet18_modified": resnet18_modified, "resnetap10": resnetap10}

# Channels-last doubles the ConvNet's CPU training throughput. It is not used for ResNets: with torch
# 2.15 on CPU, a 1x1 stride-2 convolution (the ResNet shortcut) in channels-last corrupts the heap when
# the batch size changes between steps (reproduced at widths 4 and 8; a crash, not a wrong number).
CHANNELS_LAST = {"convnet"}


def torchvision_archs() -> set[str]:
    import torchvision

    return set(torchvision.models.list_models(module=torchvision.models))


def is_registered(arch: str) -> bool:
    return arch in OUR_ARCHS or arch in torchvision_archs()


def build(arch: str, num_classes: int, image_size: int, config: dict | None = None,
          timm_name: str | None = None) -> nn.Module:
    """Our small-image nets take `config` (width, depth, norm); torchvision archs are built by name, and an
    imported timm teacher (teacher.source) by its timm model name."""
    if timm_name is not None:
        import timm

        model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    elif arch in OUR_ARCHS:
        model = OUR_ARCHS[arch](num_classes, image_size, **(config or {}))
    elif arch in torchvision_archs():
        import torchvision

        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    else:
        raise PipelineError(f"unknown arch {arch!r}: register it in stages/models or use a torchvision name")
    return model.to(memory_format=torch.channels_last) if arch in CHANNELS_LAST else model


def as_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` in the memory format the model's weights use (an input's format decides the conv kernels')."""
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    channels_last = weight is not None and weight.is_contiguous(memory_format=torch.channels_last) \
        and not weight.is_contiguous()
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def save_checkpoint(model: nn.Module, out_dir: Path, meta: dict) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out_dir / "model.safetensors", metadata={"arch": meta["arch"]})
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    write_record(out_dir, ["meta.json", "model.safetensors"])  # checked on every load, like a set's SHA256SUMS


def check_finite(model: nn.Module, where: str) -> None:
    """A teacher's weights (parameters and BatchNorm running statistics) are finite numbers: one NaN spreads to
    every logit, and the teacher, the ranking and every relabelled epoch would be NaN or silently wrong."""
    tensors = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers()
                                                if n.rsplit(".", 1)[-1] in ("running_mean", "running_var")]
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ArtifactError(f"{where}: weights {name!r} hold {bad:,} of {tensor.numel():,} values that are not "
                                "finite (NaN or infinity); a teacher's weights must be finite numbers")


def check_norm(mean, std, where: str) -> tuple[list[float], list[float]]:
    """Normalisation constants of [0, 1] pixels, as a teacher's meta.json holds them (TeacherMeta): three
    finite means in [0, 1] and three finite stds in (0, 1]."""
    for key, value, low in (("mean", mean, "in [0, 1]"), ("std", std, "in (0, 1]")):
        ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        if not ok or not all((0 <= v if key == "mean" else 0 < v) and v <= 1 for v in value):
            shown = list(value) if isinstance(value, (list, tuple)) else value
            raise ArtifactError(f"{where}: {key} = {shown!r}: expected three finite per-channel values {low}")
    return [float(v) for v in mean], [float(v) for v in std]


META_KEYS = ("arch", "config", "num_classes", "image_size", "classes_sha256")  # what rebuilding needs


def load_checkpoint(model_dir: str | Path, classes_sha256: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a model from meta.json and load its safetensors weights (never a pickle: a checkpoint that is
    not safetensors is refused unread). Returns (eval model, meta); a mismatch is an ArtifactError."""
    model_dir = Path(model_dir)
    meta_path, weights_path = model_dir / "meta.json", model_dir / "model.safetensors"
    for path in (meta_path, weights_path):
        if not path.exists():
            raise ArtifactError(f"{path}: missing; train the teacher first (dvc repro teacher)")
    raw = read_json(meta_path)
    absent = [k for k in META_KEYS if not isinstance(raw, dict) or k not in raw]
    if absent:
        raise ArtifactError(f"{meta_path}: keys {absent} missing; retrain the teacher")
    meta = validated(TeacherMeta, raw, str(meta_path)).model_dump()
    if classes_sha256 is not None and meta["classes_sha256"] != classes_sha256:
        raise ArtifactError(
            f"{meta_path}: trained on another class order ({meta['num_classes']} classes, classes_sha256 "
            f"{meta['classes_sha256'][:12]}, data has {classes_sha256[:12]}); retrain it on this dataset"
        )
    try:
        with safe_open(weights_path, "pt") as f:  # parses the header only: a pickle or torn file fails here
            saved_arch = (f.metadata() or {}).get("arch")
        weights = load_file(weights_path)
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{weights_path}: not a readable safetensors file ({e}); retrain the teacher or "
                            "fetch it again (dvc pull)") from None
    if saved_arch is not None and saved_arch != meta["arch"]:
        raise ArtifactError(f"{weights_path}: holds {saved_arch!r} weights, {meta_path} says arch {meta['arch']!r}")
    try:
        model = build(meta["arch"], meta["num_classes"], meta["image_size"], meta["config"], meta.get("timm"))
    except (TypeError, ValueError, RuntimeError, ImportError, PipelineError) as e:
        raise ArtifactError(f"{meta_path}: cannot build arch {meta['arch']!r} with config {meta['config']} "
                            f"({e})") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        # torch lists every mismatch over many lines; the first names the tensor and both shapes.
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise ArtifactError(f"{weights_path}: does not fit arch {meta['arch']!r} with {meta['num_classes']} "
                            f"classes of {meta_path} ({detail})") from None
    check_finite(model, str(weights_path))
    verify_record(model_dir, "the teacher")  # last: a teacher that parses but was changed since it was made
    return model.eval(), meta


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits for already-normalised float images (a tensor or a per-batch view), in eval mode, batched."""
    model.eval()
    device = next(model.parameters()).device  # the model's device in, the images' device out
    accel.prepare(model, device)
    logits = []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        with accel.autocast(device):  # bf16 on CUDA, logits back in fp32
            out = model(as_input(model, chunk.to(device)))
        logits.append(out.float().to(chunk.device))
    return torch.cat(logits)
