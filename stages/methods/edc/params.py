"""The `edc` section: EDC's observers, its statistics pass and its recover (docs/methods/edc.md#knobs-edc, which
gives each knob's value in the paper and in each branch of shaoshitong/EDC)."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field

from stages.methods.rded.params import Rded
from stages.pipeline.params import Fraction, NonNegFloat, Positive, PositiveFloat, Section, UnitFloat
from stages.training.params import teacher_archs

ORDER = 44


class EdcStatistics(Section):
    """The statistics stage's pass over the real train set."""
    batch_size: Positive  # the reference's loader: conv statistics are per batch, averaged over batches
    crop: Literal["pad", "resized", "none"]  # pad: RandomCrop(size, padding=size/8) | resized: RandomResizedCrop
    flip: bool


class Edc(Section):
    observers: Annotated[list[str], Field(min_length=1)]  # teachers matched in turn, one per iteration
    statistics: EdcStatistics
    init: Literal["real", "rded"]  # real: random train images of the class (CIFAR, Tiny) | rded: RDED's set (ImageNet)
    rded: Rded  # init rded: RDED's selection, made in-process with these knobs (observer: one of `observers`)
    distinct_init: bool  # init real, false: each image draws its start independently (the reference; repeats possible)
    iterations: Positive
    lr: PositiveFloat  # Adam(0.5, 0.9), cosine to 0
    r_loss: NonNegFloat  # weight of the statistic-matching sum
    first_multiplier: NonNegFloat  # on the first matched layer
    momentum: UnitFloat  # α: the EMA of each statistic over the iterations (0 = the current batch's value)
    drop_rate: Annotated[float, Field(ge=0, lt=1)]  # chance a conv layer's term is skipped in an iteration
    patch_swap: bool  # the reference's class patch mean and variance targets stored under each other's name
    crop_min_scale: Annotated[float, Field(gt=0, le=1)]  # RandomResizedCrop area, one box per batch
    flip: bool  # a random flip per batch in recover, and of each real start image
    flatness: bool  # KL (T = 4) between the outputs on the images and on their EMA (same augmentation)
    flatness_weight: NonNegFloat
    ema_alpha: Fraction  # the images' EMA for the flatness term
    batch_size: Positive  # images optimised together, class-major (the reference's --batch-size)
    jpeg_quality: Optional[Annotated[int, Field(ge=1, le=95)]]  # the reference saves JPEG (PIL's default 75)


SECTIONS = {"edc": Edc}


def check(p) -> None:
    teacher_archs(p, "edc.observers", p.edc.observers)
    if p.edc.init == "rded" and p.edc.rded.observer not in p.edc.observers:
        raise ValueError(f"edc.rded.observer = {p.edc.rded.observer!r}: not one of edc.observers {p.edc.observers}")
