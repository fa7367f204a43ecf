"""Resumable work for long stages: a hidden folder beside the output that a killed run leaves behind.

DVC deletes a stage's outputs before running it, so progress cannot live in the output itself: it goes to
`.<out name>.resume/` next to it (ignored by DVC through .dvcignore). The folder is keyed by everything
that decides the result — the stage's settings and the identity of its inputs — so a run under other
params or on other inputs starts afresh instead of resuming someone else's work. Every file in it is
replaced atomically (written beside, then renamed), so a kill mid-save leaves the previous state.

State is saved with `torch.save` and read back with `torch.load(weights_only=True)`: tensors, dicts,
lists, numbers and strings only, never arbitrary pickled objects. A state file that needs more (a planted
pickle) is refused with an error naming it.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

from stages.pipeline.errors import ArtifactError

KEY = "key.json"


def identity(path: str | Path) -> dict:
    """What an input is, cheaply: a file's sha256; a folder's file list with sizes and modification times
    (a changed, added or removed file, or a fresh `dvc checkout`, gives another identity: start afresh)."""
    path = Path(path)
    if path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return {"sha256": h.hexdigest()}
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        h.update(f"{file.relative_to(path).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"listing_sha256": h.hexdigest()}


class Resume:
    """`.<out>.resume/` for `out`: named state files and finished pieces, valid for one (settings, inputs)."""

    def __init__(self, out: str | Path, settings: dict, inputs: list[str | Path] = (), enabled: bool = True):
        out = Path(out)
        self.folder = out.with_name(f".{out.name}.resume")
        self.enabled = enabled  # under torchrun only rank 0 writes; the others read
        key = {"settings": json.loads(json.dumps(settings)), "inputs": {str(p): identity(p) for p in inputs}}
        self.key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        saved = self.folder / KEY
        if self.folder.exists() and (not saved.exists() or self._saved_key(saved) != self.key):
            if enabled:
                print(f"{self.folder}: made under other settings or inputs; starting afresh")
                shutil.rmtree(self.folder, ignore_errors=True)
            self.stale = True
        else:
            self.stale = False
        if enabled and not self.folder.exists():
            self.folder.mkdir(parents=True)
            _replace(self.folder / KEY, (json.dumps({"key": self.key, "settings": key}, indent=1) + "\n").encode())

    @classmethod
    def shared(cls, world, out: str | Path, settings: dict, inputs: list[str | Path] = ()) -> "Resume":
        """The folder every rank of a torchrun job keeps its own pieces in: rank 0 keys (or resets) it first,
        the others open it after a barrier (`world`: stages.pipeline.distributed.World)."""
        first = cls(out, settings, inputs) if world.main else None
        world.barrier()
        return first or cls(out, settings, inputs)

    def _saved_key(self, saved: Path) -> str | None:
        """The key a previous run wrote; a torn or foreign key.json is refused (the folder is ours to keep)."""
        try:
            key = json.loads(saved.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ArtifactError(f"{saved}: torn or not JSON ({e}); delete the progress folder {self.folder} to "
                                "start afresh") from None
        if not isinstance(key, dict) or not isinstance(key.get("key"), str):
            raise ArtifactError(f"{saved}: expected {{\"key\": \"<sha256>\", ...}}; delete the progress folder "
                                f"{self.folder} to start afresh")
        return key["key"]

    def path(self, name: str) -> Path:
        """A file or folder for finished pieces (e.g. one epoch's labels); write it via `write_bytes` or a
        temp name + rename so a kill never leaves a torn piece under its final name."""
        return self.folder / name

    def done(self, name: str) -> bool:
        return not self.stale and (self.folder / name).exists()

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.enabled:
            _replace(self.folder / name, data)

    def save(self, name: str, state: dict) -> None:
        """Save `state` (tensors, dicts, lists, numbers, strings) as `<name>.pt`."""
        if not self.enabled:
            return
        import torch  # here, not at the top: caption resumes through this class without torch

        tmp = self.folder / f".{name}.pt.tmp"
        torch.save(state, tmp)
        _sync_and_replace(tmp, self.folder / f"{name}.pt")

    def load(self, name: str) -> dict | None:
        """The state saved as `name`, or None. Refuses (never unpickles) anything but plain weights-only data."""
        path = self.folder / f"{name}.pt"
        if self.stale or not path.exists():
            return None
        import torch  # here, not at the top: caption resumes through this class without torch

        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError,
                TypeError, IndexError, zipfile.BadZipFile) as e:  # a planted pickle, a torn or truncated file
            first = (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__).split(". ")[0][:160]
            raise ArtifactError(f"{path}: refused - not a plain weights-only state ({first}); delete the progress "
                                f"folder {self.folder} to start afresh") from None

    def clear(self) -> None:
        """Called after the output was written: nothing is left to resume."""
        if self.enabled:
            shutil.rmtree(self.folder, ignore_errors=True)


def fresh(obj):
    """Fresh (aligned) copies of every tensor in `obj`: tensors read from a file can sit at odd offsets and
    take vector kernels' unaligned paths, which round differently in the last bit, and an optimizer keeps
    loaded moments as they are, so they must be copies (bit-equality with an uninterrupted run)."""
    import torch  # here, not at the top: caption resumes through this module without torch

    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: fresh(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(fresh(v) for v in obj)
    return obj


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    _sync_and_replace(tmp, path)


def _sync_and_replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
