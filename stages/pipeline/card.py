"""card.json: what makes a distilled set shareable (method, params used, teacher, class order, recipe).

Validated on read. `created` honours SOURCE_DATE_EPOCH so reproducible runs can pin it.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from stages.pipeline.errors import DataError
from stages.pipeline.outputs import write_json

CARD = "card.json"


EVALUATION_NOTE = {
    "protocols": {"fkd": "student learns the stored FKD soft labels (relabel output)",
                  "teacher": "student learns the teacher's logits online",
                  "hard": "cross-entropy on each image's own label",
                  "static": "student learns the labels the set ships (card `labels`), mixed like the images: "
                            "logits by KD, probabilities as soft cross-entropy targets"},
    "recipe": "the `evaluate` section of params.yaml at the commit that made this set",
}


class Card(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str
    dataset: str
    ipc: Optional[Union[int, float]]  # None for the full train set
    classes: list[str]
    num_images: int
    images_from: Optional[str] = None  # project-relative folder holding the images, if not this one
    labels: Optional[str] = None  # soft labels shipped with the set (a safetensors file in it), if any
    synthesis: Optional[dict] = None  # how the images were made: work done, derived counts
    params: dict
    teacher: Optional[dict]  # {"arch", "sha256"} of the teacher that shaped the images, if any
    evaluation: dict
    versions: dict
    created: str


def versions() -> dict:
    names = ("ddpipe", "torch", "torchvision", "numpy", "pillow", "dvc")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {"python": platform.python_version(), **found}


def created() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch else datetime.datetime.now(
        datetime.UTC).replace(microsecond=0)
    return when.isoformat()


def write_card(set_dir: Path, **fields) -> Card:
    card = Card(versions=versions(), created=created(), **fields)
    write_json(set_dir / CARD, card.model_dump())
    return card


def read_card(set_dir: str | Path) -> Card:
    path = Path(set_dir) / CARD
    if not path.exists():
        raise DataError(f"{path}: missing; a distilled set without its card is not usable")
    try:
        return Card.model_validate(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(map(str, first["loc"]))
        raise DataError(f"{path}: {key}: {first['msg']}") from None
