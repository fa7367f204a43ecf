"""The `teacher` and `evaluate` sections: the training loop's two recipes (the squeeze step, the students)."""
from __future__ import annotations

import math
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from stages.models import OUR_ARCHS, is_registered
from stages.pipeline.params import NonNegFloat, Positive, PositiveFloat, Section, check_scale

ORDER = 30


def _registered(arch: str) -> str:
    if not is_registered(arch):
        raise ValueError(f"arch {arch!r} is not registered (ours or a torchvision model name)")
    return arch


class TeacherSource(Section):
    """A teacher whose weights come from outside (stages/models/pretrained.py) instead of being trained here."""
    type: Literal["torchvision", "timm", "file"]
    weights: Annotated[str, Field(min_length=1)]  # weights enum name | timm model name | path of the file
    head: Optional[Literal["imagenet", "dataset"]] = None  # the head's class order; null: imagenet (torchvision,
    mean: Optional[list[float]] = None  # timm) or dataset (file). Normalisation the weights expect; null: the
    std: Optional[list[float]] = None   # weights' own (torchvision, timm) or the data's (file)

    @model_validator(mode="after")
    def _norm(self) -> "TeacherSource":
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and (len(value) != 3 or not all(math.isfinite(v) for v in value)
                                      or (key == "std" and min(value) <= 0)):
                raise ValueError(f"{key} = {value}: three per-channel values, finite (std above 0), or null")
        return self


class Teacher(Section):
    archs: Annotated[list[str], Field(min_length=1)]
    source: dict[str, Union[Literal["train"], TeacherSource]]  # per arch; dvc.yaml reads teacher.source.<arch>
    epochs: Positive
    batch_size: Positive
    lr: PositiveFloat
    momentum: NonNegFloat
    weight_decay: NonNegFloat
    crop_scale: list[float]
    flip: bool

    _scale = field_validator("crop_scale")(check_scale)

    @field_validator("source", mode="before")
    @classmethod
    def _sources(cls, value):
        """Each entry is `train` or a TeacherSource mapping; a bad one is named by its own key, not by union."""
        if not isinstance(value, dict):
            return value  # pydantic names the type
        out = {}
        for arch, spec in value.items():
            if isinstance(spec, dict):
                try:
                    spec = TeacherSource.model_validate(spec)
                except ValidationError as e:
                    first = e.errors()[0]
                    key = ".".join(str(p) for p in first["loc"])
                    msg = first["msg"].removeprefix("Value error, ")
                    raise ValueError(f"{arch}.{key} = {first['input']!r}: {msg}" if key else f"{arch}: {msg}") \
                        from None
            elif spec != "train":
                raise ValueError(f"{arch} = {spec!r}: expected train or {{type: torchvision | timm | file, "
                                 "weights: ...}")
            out[arch] = spec
        return out

    @model_validator(mode="after")
    def _registered(self) -> "Teacher":
        for arch in self.archs:
            spec = self.source.get(arch)
            timm = isinstance(spec, TeacherSource) and spec.type == "timm"
            if not timm and not is_registered(arch):
                raise ValueError(f"archs = {self.archs}: arch {arch!r} is not registered (ours or a torchvision "
                                 "model name); a timm teacher names its model in teacher.source")
            if spec is None:
                raise ValueError(f"source.{arch} = None: every arch in archs needs a source (train, or "
                                 "{type: torchvision | timm | file, weights: ...})")
        return self


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
    together: Union[Literal["auto"], bool]  # the seeds of a (student, protocol) as one vmapped model
    zeta: Annotated[float, Field(ge=1)]  # the lr cosine reaches 0 after zeta x the run (EDC's smoothing: > 1)
    ema: Optional[Annotated[float, Field(gt=0, lt=1)]]  # validate an EMA of the weights with this decay (EDC)
    loss: Literal["kl", "mse_ce"]  # on logit targets: KL at a temperature, or EDC's MSE + ce_weight x CE
    ce_weight: NonNegFloat

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
    teachers: Optional[list[str]] = None  # None: evaluate.teacher labels; a list: their mean logits (EDC's relabel)


class Flags(Section):
    """When the report and diffusion_check say a set is not a distilled dataset (docs/faithfulness.md)."""
    noise_factor: PositiveFloat  # flagged as noise: teacher fidelity below noise_factor x chance (1 / classes)
    copies_margin: NonNegFloat  # flagged as near-copies: intra-class cosine above the real images' + margin
    hard_margin: NonNegFloat  # flagged as noise too: `hard` students within this of chance (whatever the fidelity)


SECTIONS = {"teacher": Teacher, "evaluate": Evaluate, "report": Report, "relabel": Relabel,
            "flags": Flags}


def check(p) -> None:
    for arch in [*p.teacher.archs, *p.evaluate.students]:
        if arch in OUR_ARCHS and p.models.get(arch) is None:
            raise ValueError(f"models.{arch} = None: arch {arch!r} is used but has no config")
        if arch not in p.models:  # dvc.yaml lists models.<arch> among the stage's params
            raise ValueError(f"models.{arch}: missing; arch {arch!r} is used (a torchvision or timm arch "
                             f"takes `{arch}: null`)")
    if p.evaluate.teacher not in p.teacher.archs:
        raise ValueError(f"evaluate.teacher = {p.evaluate.teacher!r}: not one of teacher.archs {p.teacher.archs}")
    if p.relabel.teachers is not None:
        if not p.relabel.teachers:
            raise ValueError("relabel.teachers = []: name at least one teacher, or null for evaluate.teacher")
        teacher_archs(p, "relabel.teachers", p.relabel.teachers)


def teacher_arch(p, key: str, arch: str) -> None:
    """Methods name their teachers by arch: each must be one teacher.archs trains."""
    if arch not in p.teacher.archs:
        raise ValueError(f"{key} = {arch!r}: not one of teacher.archs {p.teacher.archs}")


def teacher_archs(p, key: str, archs: list[str]) -> None:
    """A method's list of teachers (INFER's teachers, EDC's observers): each one teacher.archs trains, once."""
    for i, arch in enumerate(archs):
        teacher_arch(p, f"{key}[{i}]", arch)
    if len(set(archs)) != len(archs):
        raise ValueError(f"{key} = {archs}: lists a teacher twice")
