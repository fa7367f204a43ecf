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

from safetensors.torch import load_file, save_file

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
        saved = json.loads((self.folder / "state.json").read_text())
        if saved.pop("settings") != self.settings:
            print(f"poster: {self.folder} was made under other settings; starting afresh")
            return None
        # fresh (aligned) copies: tensors read at arbitrary file offsets can take vector kernels' unaligned
        # paths, which round differently in the last bit and break bit-equality with an uninterrupted run
        tensors = {k: v.clone() for k, v in load_file(self.folder / "state.safetensors").items()}
        moments: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("adam."):
                _, i, name = key.split(".")
                moments.setdefault(int(i), {})[name] = value.reshape(()) if name == "step" else value
        return {**saved, **{k: tensors[k] for k in TENSORS}, "adam": {"state": moments}}

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
