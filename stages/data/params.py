"""The `prepare` section: where the dataset comes from and how it is written to data/<ds>."""
from __future__ import annotations

import re
from typing import Annotated, Literal, Optional

from pydantic import Field

from stages.pipeline.params import Fraction, Positive, Section

ORDER = 10


class Prepare(Section):
    image_size: Positive
    val_fraction: Fraction
    crops: Annotated[int, Field(ge=2)]  # photos only: crops per class, train + val
    root: Optional[str]
    download: bool
    classes: Optional[list[str]]
    on_corrupt: Literal["fail", "skip"]
    # (BaseModel has a .copy) false: a manifest of the source files instead of PNG copies (imagefolder only)
    copy_: bool = Field(alias="copy")


SECTIONS = {"prepare": Prepare}


def check(p) -> None:
    if p.dataset in ("cifar10", "cifar100", "imagefolder") and p.prepare.root is None:
        raise ValueError(f"prepare.root = None: dataset {p.dataset!r} needs a source folder")
