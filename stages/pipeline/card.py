"""card.json: what makes a distilled set shareable (method, params used, teacher, class order, recipe).

Validated on read. No timestamp and no duration: the same params and inputs give the same card bytes (when
and how fast a set was made is in the run log, stages/pipeline/runlog.py). The card also pins
the set's files: SHA256SUMS (the `sha256sum` format, so `sha256sum -c SHA256SUMS` works too) lists every
file of the set, and the card holds that list's own hash, so a set changed after it was made is refused.
"""
from __future__ import annotations

import math
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict

from stages.pipeline.errors import ArtifactError
from stages.pipeline.outputs import sha256_bytes, sha256_file, write_json

CARD = "card.json"
SUMS = "SHA256SUMS"


EVALUATION_NOTE = {
    "protocols": {"fkd": "student learns the stored FKD soft labels (relabel output)",
                  "teacher": "student learns the teacher's logits online",
                  "hard": "cross-entropy on each image's own label",
                  "static": "student learns the labels the set ships (card `labels`), mixed like the images: "
                            "logits by KD, probabilities as soft cross-entropy targets",
                  "noaug": "student learns the teacher's logits of each whole image: no crop, flip or mix"},
    "recipe": "the `evaluate` section of params.yaml at the commit that made this set",
}


class Content(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: int  # files listed in SHA256SUMS (every file of the set but the card and the list)
    sha256: str  # hash of SHA256SUMS itself


class Card(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str
    dataset: str
    ipc: Optional[Union[int, float]]  # None for the full train set
    classes: list[str]
    num_images: int
    images_from: Optional[str] = None  # project-relative folder holding the images, if not this one
    labels: Optional[str] = None  # soft labels shipped with the set (a safetensors file in it), if any
    draws: Optional[int] = None  # baseline@random: this many independent draws, in draw<k>/ (student seed k trains
                                 # on draw k); num_images counts one draw
    synthesis: Optional[dict] = None  # how the images were made: work done, derived counts
    params: dict
    teacher: Optional[dict]  # {"arch", "sha256"} of the teacher that shaped the images, if any
    evaluation: dict
    versions: dict
    reproducibility: dict  # whether rerunning the stage gives these bytes again (see `reproducibility`)
    content: Content


# Only what can change the set's bytes: Python's minor version and the packages that compute or encode the
# images. A patch release of Python, or DVC's version, changes no byte, so it goes to the run log instead
# (stages/pipeline/runlog.py): a card that named it would make users on 3.11.2 and 3.11.7 unable to share a cache.
def versions() -> dict:
    names = ("ddpipe", "torch", "torchvision", "numpy", "pillow")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {"python": ".".join(platform.python_version_tuple()[:2]), **found}


def reproducibility(device: str) -> dict:
    """On the CPU a rerun gives the same bytes (seeded, fixed thread count, tested); on a GPU it need not."""
    if str(device).startswith("cpu"):
        return {"device": "cpu", "bit_identical": True,
                "note": "same params, inputs, package versions and DDPIPE_THREADS give the same bytes"}
    return {"device": str(device), "bit_identical": False,
            "note": "GPU kernels (cuDNN algorithm choice, atomic adds in backward passes) may sum floats in another "
                    "order on each run: a rerun agrees to float tolerance, not bit for bit"}


def set_files(set_dir: Path) -> list[str]:
    """Every file of a set (posix paths relative to it), sorted, without the card and its SHA256SUMS."""
    return sorted(p.relative_to(set_dir).as_posix() for p in set_dir.rglob("*")
                  if p.is_file() and p.relative_to(set_dir).as_posix() not in (CARD, SUMS))


def write_sums(set_dir: Path) -> Content:
    files = set_files(set_dir)
    odd = [f for f in files if "\n" in f or "\\" in f]
    if odd:
        raise ArtifactError(f"{set_dir}: file names {odd[:3]} hold a newline or backslash; SHA256SUMS cannot list them")
    text = "".join(f"{sha256_file(set_dir / f)}  {f}\n" for f in files).encode()
    (set_dir / SUMS).write_bytes(text)
    return Content(files=len(files), sha256=sha256_bytes(text))


def write_card(set_dir: Path, device: str = "cpu", **fields) -> Card:
    """Write the card last: it hashes the set's files as they are now. `device`: where the images were computed."""
    card = Card(versions=versions(), reproducibility=reproducibility(device), content=write_sums(Path(set_dir)),
                **fields)
    write_json(set_dir / CARD, card.model_dump())
    return card


def read_card(set_dir: str | Path) -> Card:
    from stages.pipeline.artifacts import class_names, read_model

    path = Path(set_dir) / CARD
    card = read_model(Card, path, hint="a distilled set without its card is not usable")
    class_names(card.classes, f"{path}: classes", ArtifactError)  # each becomes a folder name
    if card.num_images < 0 or card.content.files < 0 or not re.fullmatch(r"[0-9a-f]{64}", card.content.sha256):
        raise ArtifactError(f"{path}: num_images {card.num_images}, content {card.content.model_dump()}: "
                            "counts must be non-negative and sha256 64 hex digits")
    if card.ipc is not None and not (isinstance(card.ipc, int) or math.isfinite(card.ipc)) or \
            card.ipc is not None and card.ipc <= 0:
        raise ArtifactError(f"{path}: ipc = {card.ipc!r}: must be a positive number or null")
    if (card.ipc is None) != (card.images_from is not None):  # only the full train set has no ipc
        raise ArtifactError(f"{path}: ipc = {card.ipc!r} with images_from = {card.images_from!r}: ipc is null "
                            "exactly for a set that uses the train folder's images (baseline full)")
    return card


def verify_content(set_dir: str | Path, card: Card) -> None:
    """Refuse a set whose files are not the ones its card was written over (edited, added, removed)."""
    set_dir = Path(set_dir)
    sums = set_dir / SUMS
    if not sums.is_file():
        raise ArtifactError(f"{sums}: missing; the set's files cannot be checked against {set_dir / CARD}")
    text = sums.read_bytes()
    if sha256_bytes(text) != card.content.sha256:
        raise ArtifactError(f"{sums}: does not match {set_dir / CARD} (content.sha256 {card.content.sha256[:12]}..., "
                        f"the list hashes to {sha256_bytes(text)[:12]}...): the list was edited or comes from "
                        "another set")
    from stages.pipeline.artifacts import parse_sums

    listed = parse_sums(sums, text.decode("utf-8", "replace"))  # no '..', absolute path or symlink out of the set
    if len(listed) != card.content.files:
        raise ArtifactError(f"{sums}: lists {len(listed)} files, {set_dir / CARD} says content.files = "
                            f"{card.content.files}")
    found = set(set_files(set_dir))
    missing, extra = sorted(set(listed) - found), sorted(found - set(listed))
    if missing:
        raise ArtifactError(f"{set_dir}: {len(missing)} file(s) of the set are missing, e.g. {missing[:3]} "
                        f"(listed in {SUMS}); fetch the whole set again (dvc pull)")
    if extra:
        raise ArtifactError(f"{set_dir}: {len(extra)} file(s) not in {SUMS} were added after the set was made, "
                        f"e.g. {extra[:3]}")
    for name, digest in listed.items():
        if sha256_file(set_dir / name) != digest:
            raise ArtifactError(f"{set_dir / name}: content differs from {SUMS} (changed after the set was made)")
