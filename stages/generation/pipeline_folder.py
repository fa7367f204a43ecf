"""A diffusers pipeline folder checked before loading: every component present, weights in safetensors only.

The diffusion stage writes the folder (or copies a pretrained one); latents, synthesize and diffusion_check
read it. A folder with a component missing, or with only pickled weights (`*.bin`, `*.ckpt`, `*.pt`: loading
them would run whatever the pickle says), is refused here with the component named, never half-loaded.
The loaders are also called with `use_safetensors=True`, so diffusers and transformers never fall back to
a pickle either.
"""
from __future__ import annotations

import json
from pathlib import Path

from stages.pipeline.artifacts import verify_record
from stages.pipeline.errors import ArtifactError

INDEX = "model_index.json"
# What a component's folder holds besides weights: a model's config, a scheduler's, a tokenizer's...
CONFIGS = ("config.json", "scheduler_config.json", "tokenizer_config.json", "preprocessor_config.json")
PICKLED = ("*.bin", "*.ckpt", "*.pt", "*.pth", "*.pkl")


def components(folder: Path) -> dict[str, list]:
    """model_index.json's components that are set ({name: [library, class]})."""
    index = folder / INDEX
    if not index.is_file():
        raise ArtifactError(f"{index}: missing; {folder} is not a diffusers pipeline folder (rerun the diffusion "
                            "stage: dvc repro diffusion)")
    try:
        entries = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{index}: not valid JSON ({e})") from None
    if not isinstance(entries, dict):
        raise ArtifactError(f"{index}: expected an object of components")
    return {name: spec for name, spec in entries.items()
            if not name.startswith("_") and isinstance(spec, list) and len(spec) == 2 and spec[1] is not None}


def check_pipeline_folder(folder: str | Path, needed: list[str] | None = None, recorded: bool = True) -> None:
    """Refuse a folder missing a component of `needed` (default: every component model_index.json names).
    `recorded`: the folder is the diffusion stage's output, so its files must match its SHA256SUMS (a pretrained
    source folder the user names has no record)."""
    folder = Path(folder)
    listed = components(folder)
    for name in needed or sorted(listed):
        if name not in listed:
            raise ArtifactError(f"{folder / INDEX}: no {name!r} component; rerun the diffusion stage")
        part = folder / name
        if not part.is_dir():
            raise ArtifactError(f"{part}: component {name!r} ({listed[name][1]}) missing; rerun the diffusion stage "
                                "or fetch the whole folder (dvc pull)")
        config = next((c for c in CONFIGS if (part / c).is_file()), None)
        if config is None:
            raise ArtifactError(f"{part}: component {name!r} has none of {list(CONFIGS)}")
        if config == "config.json" and not any(part.glob("*.safetensors")):  # a model: it needs weights
            pickles = sorted(p.name for pattern in PICKLED for p in part.glob(pattern))
            if pickles:
                raise ArtifactError(f"{part}: component {name!r} has only pickled weights {pickles}: refused, never "
                                    "unpickled (a pickle can run code); convert them to safetensors")
            raise ArtifactError(f"{part}: component {name!r} has no weights (*.safetensors); rerun the diffusion "
                                "stage")
    if recorded:  # last: a folder that is complete but was changed since the stage wrote it
        verify_record(folder, "the diffusion folder")
