"""The `podd` section: the poster's size, layout, RaT-BPTT and PoDD's own evaluation (docs/methods/podd.md)."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field, model_validator

from stages.pipeline.params import NonNegFloat, NonNegInt, Positive, PositiveFloat, Section

ORDER = 80


class PoddInner(Section):
    """The ConvNet (instance norm) trained in RaT-BPTT's inner loop and in PoDD's own evaluation."""
    width: Positive
    depth: Optional[Positive]
    lr: PositiveFloat


class PoddEval(Section):
    runs: Positive
    steps: Positive


class Podd(Section):
    ipc: PositiveFloat
    poster_width: Optional[Positive]
    poster_height: Optional[Positive]
    poster_class_num_x: Optional[Positive]
    poster_class_num_y: Optional[Positive]
    patch_num_x: Positive
    patch_num_y: Positive
    order: Literal["text", "identity", "random"]
    text_encoder: Optional[str]
    inner: PoddInner
    window: Positive
    minwindow: NonNegInt
    totwindow: Positive
    warmup_draw: Literal["step", "epoch"]  # warm-up length c redrawn every outer step, or once per epoch
    distill_batch_size: Positive
    batch_size: Positive
    epochs: Positive
    lr: PositiveFloat
    label_lr_scale: PositiveFloat
    clip_coef: Annotated[float, Field(ge=0, lt=1)]
    zca: bool
    zca_reg: NonNegFloat
    augment: list[Literal["flip", "rotate"]]
    train_y: bool
    comp_ipc: Positive
    checkpoint_every: Positive
    eval: PoddEval

    @model_validator(mode="after")
    def _consistent(self) -> "Podd":
        if self.minwindow + self.window > self.totwindow:
            raise ValueError(f"totwindow = {self.totwindow}: below minwindow + window = "
                             f"{self.minwindow} + {self.window}")
        for a, b in (("poster_width", "poster_height"), ("poster_class_num_x", "poster_class_num_y")):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise ValueError(f"{a} = {getattr(self, a)}, {b} = {getattr(self, b)}: set both or neither")
        crops = self.patch_num_x * self.patch_num_y
        if self.distill_batch_size > crops:
            raise ValueError(f"distill_batch_size = {self.distill_batch_size}: above the {crops} crops of "
                             f"patch_num_x x patch_num_y = {self.patch_num_x} x {self.patch_num_y}")
        return self


SECTIONS = {"podd": Podd}


def check_data(p, counts: dict[str, int]) -> None:
    """An explicit class grid must hold exactly the data's classes."""
    grid = (p.podd.poster_class_num_x, p.podd.poster_class_num_y)
    if grid[0] is not None and grid[0] * grid[1] != len(counts):
        raise ValueError(f"podd.poster_class_num_x x poster_class_num_y = {grid[0]} x {grid[1]}: "
                         f"must equal the {len(counts)} classes")
