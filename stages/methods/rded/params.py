"""The `rded` section: how RDED draws, scores and stitches real crops (docs/methods/rded.md)."""
from __future__ import annotations

from pydantic import field_validator

from stages.pipeline.params import Positive, Section, check_scale
from stages.training.params import teacher_arch

ORDER = 85


class Rded(Section):
    """RDED (Sun et al., CVPR 2024): real crops scored by an observer teacher, stitched factor x factor."""
    observer: str  # the teacher whose cross-entropy on the true class scores each crop
    candidates: Positive  # real images drawn per class (RDED's --mipc); capped at the class size
    crops: Positive  # random crops per candidate image, the best one kept (--num-crop)
    factor: Positive  # patches per side of a distilled image (--factor)
    crop_scale: list[float]  # RandomResizedCrop area range of the candidate crops (square)

    _scale = field_validator("crop_scale")(check_scale)


SECTIONS = {"rded": Rded}


def check(p) -> None:
    teacher_arch(p, "rded.observer", p.rded.observer)
