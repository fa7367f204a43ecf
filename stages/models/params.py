"""The `models` section: the knobs of our small-image architectures (torchvision archs take none)."""
from __future__ import annotations

from typing import Literal, Optional

from stages.models import OUR_ARCHS
from stages.pipeline.params import Positive, Section

ORDER = 20


class ArchConfig(Section):
    width: Positive
    depth: Optional[Positive] = None
    norm: Literal["batch", "instance"]


SECTIONS = {"models": dict[str, ArchConfig]}


def check(p) -> None:
    for name, config in p.models.items():
        if name not in OUR_ARCHS:
            raise ValueError(f"models.{name} = {config.model_dump()}: not one of our architectures "
                             f"{sorted(OUR_ARCHS)} (torchvision archs take no config)")
