"""Writing stage outputs: atomically, deterministically, with content hashes."""
from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temp dir next to `path`; on success it replaces `path`, on error it vanishes.

    A killed or failing stage therefore never leaves a half-written output for DVC to cache.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):  # left by a SIGKILLed run of this stage
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.is_symlink():  # a link (DVC's cache.type symlink): the link goes, never what it points to
            path.unlink()
        elif path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path):
    """Yield a temp path beside `path`; on success it replaces `path`, on error it vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj) -> None:
    """Stable bytes: sorted keys, fixed indent, trailing newline; written via rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """A header from the first row's keys, one line per row; written via rename."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dir_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# --- what a stage may replace: its own output, never an input or another stage's artifact ----------------------

@dataclass(frozen=True)
class Kind:
    """What an output of some stage looks like on disk: `what` names it in messages, `test` recognises one."""
    what: str
    test: Callable[[Path], bool]


def _holds(folder: Path, *names: str) -> bool:
    return folder.is_dir() and all((folder / name).exists() for name in names)


def folder_kind(what: str, *names: str) -> Kind:
    """A folder holding every one of `names` (e.g. a teacher: meta.json and model.safetensors)."""
    return Kind(f"{what} ({', '.join(names)})", lambda p: _holds(p, *names))


def _json_object(path: Path) -> dict | None:
    try:
        if not path.is_file() or path.stat().st_size > 64 << 20:
            return None
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def set_kind(method: str | None = None) -> Kind:
    """A distilled set: a folder with card.json (whose `method` is `method`, when given)."""
    def test(p: Path) -> bool:
        card = _json_object(p / "card.json")
        return card is not None and (method is None or card.get("method") == method)
    return Kind("a distilled set (card.json" + (f", method {method!r})" if method else ")"), test)


def json_kind(what: str, **expected) -> Kind:
    """A JSON file holding an object with the keys `expected` names (a value other than None must match)."""
    def test(p: Path) -> bool:
        obj = _json_object(p)
        return obj is not None and all(k in obj and (v is None or obj[k] == v) for k, v in expected.items())
    return Kind(f"{what} (JSON with {', '.join(expected)})", test)


def file_kind(what: str, suffix: str, first_line: str | None = None) -> Kind:
    """A regular file named *suffix (whose first line is `first_line`, when given)."""
    def test(p: Path) -> bool:
        if not p.is_file() or p.suffix != suffix:
            return False
        if first_line is None:
            return True
        with open(p, "rb") as f:
            return f.readline(4096).rstrip(b"\r\n") == first_line.encode()
    return Kind(f"{what} (*{suffix})", test)


DATA = folder_kind("a prepared dataset", "classes.json", "meta.json")
TEACHER = folder_kind("a teacher", "meta.json", "model.safetensors")
FKD = Kind("FKD soft labels (fkd.json)",  # a set of draws has one per draw<k>/
           lambda p: (p / "fkd.json").is_file() or (p / "draw0" / "fkd.json").is_file())
CAPTIONS = folder_kind("a captions folder", "captions.jsonl")
LATENTS = folder_kind("a latents folder", "latents.safetensors", "index.csv")
DIFFUSION = folder_kind("a diffusion pipeline folder", "model_index.json")
DIFFUSION_CHECK = folder_kind("a diffusion check", "samples.png", "metrics.json")
HUB = Kind("a Hub dataset folder (README.md, data/*.parquet)",
           lambda p: (p / "README.md").is_file() and any((p / "data").glob("*.parquet")))
INIT = folder_kind("a DELT init folder", "selection.json")
REPORT = folder_kind("a report folder", "results.md", "results.csv")
# Every kind a stage writes as a folder: an output inside one of them would change another stage's artifact.
KNOWN = (DATA, set_kind(), TEACHER, FKD, CAPTIONS, LATENTS, DIFFUSION, DIFFUSION_CHECK, HUB, INIT, REPORT)
# The project's own files (relative to the working directory, where every stage runs): never an output.
PROJECT = ("params.yaml", "dvc.yaml", "dvc.lock", ".dvc", ".git", ".dvcignore", ".gitignore", "stages",
           "pyproject.toml")


TEMP_SUFFIX = "..tmp-12345678"  # atomic_dir's `.<name>.tmp-<8 random>` (Resume's `.<name>.resume` is shorter)


def describe(path: Path) -> str:
    """What an existing path is, for a message: a known artifact kind, else a file or a folder."""
    for kind in KNOWN:
        if kind.test(path):
            return kind.what
    if path.is_dir():
        return f"a folder of {sum(1 for _ in path.iterdir())} entries"
    return "a file" if path.is_file() else "something that is neither file nor folder"


def _relation(a: Path, b: Path) -> str | None:
    """How path `a` sits relative to `b` (both absolute, resolved): 'is', 'contains', 'is inside' or None."""
    if a == b:
        return "is"
    if a in b.parents:
        return "contains"
    if b in a.parents:
        return "is inside"
    return None


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def claim(stage: str, outputs: dict[str, tuple[Path | None, Kind]],
          inputs: dict[str, Path | list[Path] | None]) -> None:
    """Check, before any work, that a stage writes only its own outputs. Each output (`--arg`: (path, the kind
    of thing the stage writes there)) is refused, as a ParamsError naming the argument, when it

      * is, contains or is inside an input (`inputs`: argument → path or paths, symlinks followed), another
        output of the stage, the working directory or one of the project's files (params.yaml, dvc.yaml,
        .git, stages/, ...);
      * is inside an existing artifact of any kind (a set, a teacher, a dataset, ...);
      * already exists and is not what this stage writes there (an empty folder excepted): a stage replaces
        its own previous output, never another stage's artifact or a folder of other files.
    """
    from stages.pipeline.errors import ParamsError
    from stages.pipeline.paths import NAME_MAX

    here = _real(Path.cwd())
    guarded: list[tuple[str, Path]] = [("the working directory (the project)", here)]
    guarded += [(f"the project's {name}", here / name) for name in PROJECT if (here / name).exists()]
    for arg, value in inputs.items():
        for path in ([] if value is None else value if isinstance(value, (list, tuple)) else [value]):
            guarded.append((f"the input {arg} {path}", _real(Path(path))))
    claimed: list[tuple[str, Path]] = []
    for arg, (path, kind) in outputs.items():
        if path is None:
            continue
        path = Path(path)
        where = f"{arg.split()[0]} {path}"  # "--out (.json)": one of the files an --out prefix names
        long = next((part for part in path.parts if len(os.fsencode(part)) > NAME_MAX), None)
        if long is not None or len(os.fsencode(path.name)) + len(TEMP_SUFFIX) > NAME_MAX:
            part = long if long is not None else path.name
            raise ParamsError(f"{where}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes; with the "
                              f"{len(TEMP_SUFFIX)} ddpipe adds for its temp and progress folders it must stay within "
                              f"the {NAME_MAX}-byte limit of a file name")
        real = _real(path)
        for name, other in guarded + claimed:
            how = _relation(real, other)
            if how == "is inside" and other == here:  # outputs go inside the project: that is the point
                continue
            if how:
                raise ParamsError(f"{where}: {how} {name}; {stage} writes only its own output there, and "
                                  "would replace what it holds (choose another path)")
        for parent in real.parents:
            if parent == here:  # the project (and what holds it) is the user's, not an artifact
                break
            for known in KNOWN:
                if known.test(parent):
                    raise ParamsError(f"{where}: is inside {parent}, {known.what} that {stage} did not write; "
                                      "choose a path outside it")
        if path.exists() or path.is_symlink():
            empty = path.is_dir() and not path.is_symlink() and not any(path.iterdir())
            if not empty and not kind.test(path):
                raise ParamsError(f"{where}: already holds {describe(path)}, not {kind.what} as {stage} writes; "
                                  f"{stage} replaces only its own output: move or delete it yourself, or choose "
                                  "another path")
        claimed.append((f"its other output {where}", real))
