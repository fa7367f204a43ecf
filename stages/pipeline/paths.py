"""Paths read from files (captions, SHA256SUMS, cards, ranking CSVs, latent indexes) stay inside their root.

Such a file may come from someone else (`dvc pull`, `dvc import`, a shared set), so a path in it is data,
not a command: `../`, an absolute path or a symlink leading out of the folder it names a file in is refused
with the file, line and path, before anything is opened. Every path a stage reads from a file goes
through `relative` (the text) or `inside` (the text and where it leads on disk).
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from stages.pipeline.errors import ArtifactError, PipelineError

# DVC's `cache.type = symlink` makes every tracked file a link to <cache>/files/md5/<2 hex>/<30 hex>:
# a link to such a content-addressed object reads nothing but cached data, so it is not an escape.
DVC_CACHE_OBJECT = re.compile(r"/files/md5/[0-9a-f]{2}/[0-9a-f]{30}(\.dir)?$")


def relative(text: str, source: str, error: type[PipelineError] = ArtifactError) -> PurePosixPath:
    """`text` as a relative posix path with no `..`, no absolute or drive prefix, no backslash or NUL;
    `source` names where it was read ("file:line") in the error."""
    ref = PurePosixPath(text) if isinstance(text, str) else None
    if ref is None or not text or "\\" in text or "\0" in text or ref.is_absolute() or ".." in ref.parts \
            or re.match(r"^[A-Za-z]:", text) or ref.parts in ((), (".",)):
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
