"""The `infer` section: its teachers, its base budget and its `recover` overrides."""
from __future__ import annotations

from typing import Annotated, Optional

from pydantic import Field

from stages.pipeline.params import Positive, Section
from stages.methods.infer.budget import infer_budget
from stages.recover_engine.params import Recover
from stages.training.params import teacher_archs

ORDER = 43


class Infer(Section):
    teachers: Annotated[list[str], Field(min_length=1)]
    ipc_init: Optional[Positive]
    recover: Recover



SECTIONS = {"infer": Infer}


def check(p) -> None:
    teacher_archs(p, "infer.teachers", p.infer.teachers)


def check_data(p, counts: dict[str, int]) -> None:
    """An explicit INFER ipc_init must fit the budget of ipc x classes images."""
    try:
        infer_budget(p.ipc, len(counts), len(p.infer.teachers), p.infer.ipc_init)
    except ValueError as e:
        raise ValueError(f"infer.{e}") from None
