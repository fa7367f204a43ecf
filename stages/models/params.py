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


class Gpu(Section):
    """CUDA only (stages/models/accel.py); ignored on the CPU, whose bytes stay as they are."""
    bf16: bool
    channels_last: bool
    compile: bool


# null for torchvision and timm archs (dvc.yaml reads models.<arch>)
SECTIONS = {"models": dict[str, Optional[ArchConfig]], "gpu": Gpu}


def check(p) -> None:
    for name, config in p.models.items():
        if name not in OUR_ARCHS and config is not None:
            raise ValueError(f"models.{name} = {config.model_dump()}: not one of our architectures "
                             f"{sorted(OUR_ARCHS)} (torchvision and timm archs take no config: null)")
    size = p.prepare.image_size
    for key, depth in [*((f"models.{n}.depth", c.depth) for n, c in p.models.items() if n == "convnet" and c),
                       ("podd.inner.depth", p.podd.inner.depth)]:
        if depth is not None and size >> depth < 1:  # each ConvNet block halves the side
            raise ValueError(f"{key} = {depth}: pools a prepare.image_size = {size} px image below one pixel "
                             f"(at most {size.bit_length() - 1} blocks)")


def apply(p) -> None:
    """The `gpu` section takes effect in the process that loaded params (CUDA only)."""
    from stages.models import accel

    accel.configure(p.gpu)
