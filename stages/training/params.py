"""The `teacher` and `evaluate` sections: the training loop's two recipes (the squeeze step, the students)."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field, field_validator

from stages.models import OUR_ARCHS, is_registered
from stages.pipeline.params import NonNegFloat, Positive, PositiveFloat, Section, check_scale

ORDER = 30


def _registered(arch: str) -> str:
    if not is_registered(arch):
        raise ValueError(f"arch {arch!r} is not registered (ours or a torchvision model name)")
    return arch


class Teacher(Section):
    archs: Annotated[list[str], Field(min_length=1)]
    epochs: Positive
    batch_size: Positive
    lr: PositiveFloat
    momentum: NonNegFloat
    weight_decay: NonNegFloat
    crop_scale: list[float]
    flip: bool

    _scale = field_validator("crop_scale")(check_scale)
    _archs = field_validator("archs")(lambda archs: [_registered(a) for a in archs])


class Evaluate(Section):
    students: Annotated[list[str], Field(min_length=1)]
    teacher: str
    protocols: Annotated[list[Literal["fkd", "teacher", "hard", "static", "noaug"]], Field(min_length=1)]
    seeds: Positive
    epochs: Positive
    full_epochs: Positive
    batch_size: Union[Literal["auto"], Positive]
    optimizer: Literal["adamw", "sgd"]
    lr: PositiveFloat
    weight_decay: NonNegFloat
    temperature: PositiveFloat
    static_temperature: PositiveFloat
    crop_scale: list[float]
    flip: bool
    mix: Literal["cutmix", "mixup", "none"]
    mix_alpha: PositiveFloat
    eval_points: Positive

    _scale = field_validator("crop_scale")(check_scale)

    @field_validator("students")
    @classmethod
    def _students(cls, archs: list[str]) -> list[str]:
        archs = [_registered(a) for a in archs]
        if len(set(archs)) != len(archs):
            raise ValueError("lists a student twice")
        return archs


class Report(Section):
    """DD-Ranking's score weights (docs/evaluation-fairness.md)."""
    lrs_weight: Annotated[float, Field(ge=0, le=1)]
    ars_weight: Annotated[float, Field(ge=0, le=1)]


class Relabel(Section):
    topk: Optional[Positive]  # None: dense fp16 logits; k: FKD's top-k form (stages/training/soft_labels.py)


class Flags(Section):
    """When the report and diffusion_check say a set is not a distilled dataset (docs/faithfulness.md)."""
    noise_factor: PositiveFloat  # flagged as noise: teacher fidelity below noise_factor x chance (1 / classes)
    copies_margin: NonNegFloat  # flagged as near-copies: intra-class cosine above the real images' + margin


SECTIONS = {"teacher": Teacher, "evaluate": Evaluate, "report": Report, "relabel": Relabel,
            "flags": Flags}


def check(p) -> None:
    for arch in [*p.teacher.archs, *p.evaluate.students]:
        if arch in OUR_ARCHS and arch not in p.models:
            raise ValueError(f"models.{arch} = None: arch {arch!r} is used but has no config")
    if p.evaluate.teacher not in p.teacher.archs:
        raise ValueError(f"evaluate.teacher = {p.evaluate.teacher!r}: not one of teacher.archs {p.teacher.archs}")


def teacher_arch(p, key: str, arch: str) -> None:
    """Methods name their teachers by arch: each must be one teacher.archs trains."""
    if arch not in p.teacher.archs:
        raise ValueError(f"{key} = {arch!r}: not one of teacher.archs {p.teacher.archs}")
