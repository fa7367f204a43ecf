"""The `delt` section: ranker, selection criterion, EarlyLate rounds and its `recover` overrides."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import model_validator

from stages.pipeline.params import Positive, Section
from stages.recover_engine.params import Recover
from stages.training.params import teacher_arch

ORDER = 42


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



SECTIONS = {"delt": Delt}


def check(p) -> None:
    teacher_arch(p, "delt.ranker", p.delt.ranker)
    teacher_arch(p, "delt.teacher", p.delt.teacher)
    end = p.delt.recover.ipc_end
    if end is not None and end > p.ipc:
        raise ValueError(f"delt.recover.ipc_end = {end}: above ipc = {p.ipc}")
