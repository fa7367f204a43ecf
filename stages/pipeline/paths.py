"""One rule for paths and links wherever data comes in: nothing is read from outside the root the user named.

A root is a folder the user named: prepare.root, an external set's folder (import_set), a Hub folder and the
files its README's `configs` point at, a manifest dataset's source root (params.yaml's prepare.root), a set,
a teacher, a captions folder. Names read from files (captions, SHA256SUMS, cards, ranking CSVs, latent indexes,
manifests, README configs) may come from someone else (`dvc pull`, `dvc import`, a shared set), so a path in
them is data, not a command. The rule:

  * a path read from a file is relative, without `..`, a drive, a URL scheme, a backslash or NUL (`relative`);
  * every file and folder is checked where it leads on disk before it is opened: a symlink (of a file, a
    class folder, an annotation path, a data file) that leads out of the root is refused, naming the link and
    its target (`Root.check`, `inside`). The root itself may be a link: where the user keeps data is theirs;
  * a link into DVC's cache (`cache.type = symlink`: content-addressed objects, or the project's .dvc/cache)
    reads nothing but cached data, so it is followed.

Every entry point goes through `Root` (folders walked or opened by the stage) or `inside` (a name read from
a file); the error lines are made here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from stages.pipeline.errors import ArtifactError, DataError, PipelineError

# DVC's `cache.type = symlink` makes every tracked file a link to <cache>/files/md5/<2 hex>/<30 hex>:
# a link to such a content-addressed object reads nothing but cached data, so it is not an escape.
DVC_CACHE_OBJECT = re.compile(r"/files/md5/[0-9a-f]{2}/[0-9a-f]{30}(\.dir)?$")
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def relative(text: str, source: str, error: type[PipelineError] = ArtifactError) -> PurePosixPath:
    """`text` as a relative posix path with no `..`, no absolute or drive prefix, no URL, no backslash or NUL;
    `source` names where it was read ("file:line") in the error."""
    ref = PurePosixPath(text) if isinstance(text, str) else None
    if ref is None or not text or "\\" in text or "\0" in text or ref.is_absolute() or ".." in ref.parts \
            or re.match(r"^[A-Za-z]:", text) or URL.match(text) or ref.parts in ((), (".",)):
        raise error(f"{source}: path {text!r} leaves its folder (must be relative, without '..')")
    return ref


def inside(root: str | Path, text: str, source: str, error: type[PipelineError] = ArtifactError) -> Path:
    """root/text, refused when `text` is not a plain relative path or a symlink on the way leads out of
    `root` (root itself may be a link: where the user keeps a dataset is theirs to choose)."""
    path = Path(root) / relative(text, source, error)
    base, target = Path(root).resolve(), path.resolve()
    if target != base and base not in target.parents and not DVC_CACHE_OBJECT.search(target.as_posix()):
        raise error(f"{source}: path {text!r} leads out of {root} (a symlink to {target})")
    return path


class Root:
    """A folder the user named, read without leaving it: every path checked must resolve inside `root`, inside
    the project's DVC cache (.dvc/cache of the working directory) or to a DVC cache object; else `error`
    names the path, where it leads and the root (`label` says what the root is: "the dataset root")."""

    def __init__(self, root: str | Path, error: type[PipelineError] = DataError, label: str = "the dataset root"):
        self.root = Path(root)
        self.error, self.label = error, label
        try:
            self.allowed = [self.root.resolve()] + [c.resolve() for c in [Path(".dvc") / "cache"] if c.is_dir()]
        except RuntimeError:
            raise error(f"{root}: a symlink loop") from None

    def check(self, path: str | Path) -> Path:
        """`path` (under the root, as listed or joined), after checking where it leads; returned unchanged."""
        path = Path(path)
        try:
            real = path.resolve()
        except (RuntimeError, OSError):  # a symlink loop
            raise self.error(f"{path}: a symlink loop") from None
        if not any(real.is_relative_to(a) for a in self.allowed) and not DVC_CACHE_OBJECT.search(real.as_posix()):
            what = f"a symlink to {real}" if path.is_symlink() else f"resolves to {real}"
            raise self.error(f"{path}: {what}, outside {self.label} {self.root}")
        return path

    def inside(self, text: str, source: str) -> Path:
        """root/text for a name read from a file (`source`: "file:line"): relative, and leading nowhere else."""
        return self.check(self.root / relative(text, source, self.error))

    def entries(self, folder: str | Path) -> list[Path]:
        """The folder's entries that are not hidden, sorted, each checked (a link leading out is refused)."""
        folder = self.check(folder)
        return sorted(self.check(p) for p in folder.iterdir() if not p.name.startswith("."))

    def files(self, folder: str | Path) -> list[Path]:
        """Every file under folder, recursively and sorted, hidden entries skipped. Each directory is checked
        before it is entered, so the first link that leaves the root is the one named; a link back up the
        tree is walked once."""
        found, seen = [], set()
        for dirpath, dirnames, filenames in os.walk(self.check(folder), followlinks=True):
            here = Path(dirpath)
            if here.resolve() in seen:
                dirnames[:] = []
                continue
            seen.add(here.resolve())
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and self.check(here / d)]
            found += [self.check(here / name) for name in filenames if not name.startswith(".")]
        return sorted(found)


NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems
_UNSAFE_IN_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


def file_name(prefix: str, stem: str, suffix: str) -> str:
    """prefix + stem + suffix as one file name within NAME_MAX bytes: the stem (a name from elsewhere, which
    ddpipe prefixes with a rank or a place) loses characters at its end until the name fits, and characters
    that cannot be in a name (/, \\, control characters) become '_'. The prefix keeps names in a folder unique."""
    stem = _UNSAFE_IN_NAME.sub("_", stem)
    room = NAME_MAX - len(prefix.encode()) - len(suffix.encode())
    if room < 0:
        raise ValueError(f"{prefix!r} + {suffix!r} leaves no room for a name")
    while len(stem.encode("utf-8", "surrogatepass")) > room:
        stem = stem[:-1]
    return prefix + stem + suffix
