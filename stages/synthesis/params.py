"""The recover engine's sections: `sre2l`, `delt` and `infer`, each with its `recover` knobs
(docs/methods/sre2l.md#the-recover-engine)."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field, model_validator

from stages.pipeline.params import NonNegFloat, NonNegInt, Positive, PositiveFloat, Section
from stages.synthesis.schedules import infer_budget
from stages.training.params import teacher_arch

ORDER = 40


class Recover(Section):
    """The recover engine's knobs, shared by sre2l, delt and infer."""
    iterations: Positive
    lr: PositiveFloat
    r_bn: NonNegFloat
    first_bn_multiplier: NonNegFloat
    r_var: NonNegFloat
    jitter: NonNegInt
    roll: Literal["symmetric", "positive"]  # shifts in [-jitter, jitter], or [0, jitter] (the references)
    crop_min_scale: Annotated[float, Field(gt=0, le=1)]
    crop_schedule: Literal["fixed", "cosine"]
    flip: bool
    ipc_per_batch: Positive
    ipc_start: NonNegInt
    ipc_end: Optional[Positive]
    dwa_steps: NonNegInt
    dwa_rho: NonNegFloat

    @model_validator(mode="after")
    def _range(self) -> "Recover":
        if self.ipc_end is not None and self.ipc_end <= self.ipc_start:
            raise ValueError(f"ipc_end = {self.ipc_end}: must be above ipc_start = {self.ipc_start}")
        if self.ipc_start % self.ipc_per_batch:
            raise ValueError(f"ipc_start = {self.ipc_start}: must be a multiple of ipc_per_batch = "
                             f"{self.ipc_per_batch} so shards reproduce a single run exactly")
        return self


class Sre2l(Section):
    teacher: str
    recover: Recover


class Delt(Section):
    ranker: str
    criterion: Literal["top", "min", "medium"]
    teacher: str
    round_iterations: Positive
    min_iterations: Optional[Positive]
    # IPC above ipc_per_batch: batches of IPC indices x every class, or whole classes
    batch_order: Literal["ipc", "class"]
    recover: Recover

    @model_validator(mode="after")
    def _rounds(self) -> "Delt":
        if self.batch_order == "class" and (self.recover.ipc_start or self.recover.ipc_end is not None):
            raise ValueError("batch_order = 'class': batches are whole classes, so the run cannot be sharded by "
                             "recover.ipc_start / ipc_end (leave them 0 / null)")
        total = self.recover.iterations
        if total % self.round_iterations:
            raise ValueError(f"round_iterations = {self.round_iterations}: must divide recover.iterations = {total}")
        low = self.min_iterations
        if low is not None and (low > total or low % self.round_iterations):
            raise ValueError(f"min_iterations = {low}: must be a multiple of round_iterations = "
                             f"{self.round_iterations} and at most recover.iterations = {total}")
        return self


class Infer(Section):
    teachers: Annotated[list[str], Field(min_length=1)]
    ipc_init: Optional[Positive]
    recover: Recover


SECTIONS = {"sre2l": Sre2l, "delt": Delt, "infer": Infer}


def check(p) -> None:
    for key, arch in [("delt.ranker", p.delt.ranker), ("delt.teacher", p.delt.teacher),
                      ("sre2l.teacher", p.sre2l.teacher),
                      *((f"infer.teachers[{i}]", a) for i, a in enumerate(p.infer.teachers))]:
        teacher_arch(p, key, arch)
    if len(set(p.infer.teachers)) != len(p.infer.teachers):
        raise ValueError(f"infer.teachers = {p.infer.teachers}: lists a teacher twice")
    for key, section in [("sre2l", p.sre2l), ("delt", p.delt)]:
        end = section.recover.ipc_end
        if end is not None and end > p.ipc:
            raise ValueError(f"{key}.recover.ipc_end = {end}: above ipc = {p.ipc}")


def check_data(p, counts: dict[str, int]) -> None:
    """An explicit INFER ipc_init must fit the budget of ipc x classes images."""
    try:
        infer_budget(p.ipc, len(counts), len(p.infer.teachers), p.infer.ipc_init)
    except ValueError as e:
        raise ValueError(f"infer.{e}") from None
