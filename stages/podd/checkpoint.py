"""The poster stage's resumable state: a hidden folder beside the output (DVC deletes outputs before a run).

state.safetensors holds the tensors (poster, labels, the outer Adam's moments), state.json the rest and
the settings it was made under; a checkpoint made under other settings is ignored, never resumed.
Both files are replaced together (written to a temp folder, then renamed), so a kill mid-save leaves
the previous checkpoint.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stages.pipeline.artifacts import read_json
from stages.pipeline.errors import ArtifactError
from stages.pipeline.outputs import atomic_dir

TENSORS = ("poster", "labels")


class Checkpoint:
    def __init__(self, out: Path, settings: dict):
        self.folder = out.with_name(f".{out.name}.checkpoint")
        self.settings = json.loads(json.dumps(settings))  # as it reads back from JSON

    def save(self, state: dict) -> None:
        tensors = {k: state[k].cpu().contiguous() for k in TENSORS}
        for i, moments in state["adam"]["state"].items():
            tensors |= {f"adam.{i}.{name}": value.cpu().reshape(-1) if value.dim() == 0 else value.cpu()
                        for name, value in moments.items()}
        rest = {k: v for k, v in state.items() if k not in (*TENSORS, "adam")}
        with atomic_dir(self.folder) as tmp:
            save_file(tensors, tmp / "state.safetensors")
            (tmp / "state.json").write_text(json.dumps({"settings": self.settings, **rest}, indent=1))

    def load(self) -> dict | None:
        if not (self.folder / "state.json").exists():
            return None
        saved = read_json(self.folder / "state.json")
        if not isinstance(saved, dict) or "settings" not in saved:
            raise ArtifactError(f"{self.folder / 'state.json'}: not a poster state; the progress folder "
                                f"{self.folder} can be removed to start afresh")
        if saved.pop("settings") != self.settings:
            print(f"poster: {self.folder} was made under other settings; starting afresh")
            return None
        # fresh (aligned) copies: tensors read at arbitrary file offsets can take vector kernels' unaligned
        # paths, which round differently in the last bit and break bit-equality with an uninterrupted run
        try:
            tensors = {k: v.clone() for k, v in load_file(self.folder / "state.safetensors").items()}
        except (SafetensorError, OSError) as e:
            raise ArtifactError(f"{self.folder / 'state.safetensors'}: torn or not safetensors ({e}); the progress "
                                f"folder {self.folder} can be removed to start afresh") from None
        if any(k not in tensors for k in TENSORS):
            raise ArtifactError(f"{self.folder / 'state.safetensors'}: tensors {sorted(tensors)} lack {TENSORS}; "
                                f"the progress folder {self.folder} can be removed to start afresh")
        moments: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("adam."):
                _, i, name = key.split(".")
                moments.setdefault(int(i), {})[name] = value.reshape(()) if name == "step" else value
        return {**saved, **{k: tensors[k] for k in TENSORS}, "adam": {"state": moments}}

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
