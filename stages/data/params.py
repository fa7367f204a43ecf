"""The `prepare` section: where the dataset comes from and how it is written to data/<ds>."""
from __future__ import annotations

from typing import Literal, Optional

from stages.pipeline.params import Fraction, Positive, Section

ORDER = 10


class Prepare(Section):
    image_size: Positive
    val_fraction: Fraction
    root: Optional[str]
    download: bool
    classes: Optional[list[str]]
    on_corrupt: Literal["fail", "skip"]


SECTIONS = {"prepare": Prepare}


def check(p) -> None:
    if p.dataset in ("cifar10", "cifar100", "imagefolder") and p.prepare.root is None:
        raise ValueError(f"prepare.root = None: dataset {p.dataset!r} needs a source folder")
