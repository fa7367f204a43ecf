"""The `sre2l` section: its teacher and its overrides of the shared `recover` block."""
from __future__ import annotations

from stages.pipeline.params import Section
from stages.recover_engine.params import Recover
from stages.training.params import teacher_arch

ORDER = 41


class Sre2l(Section):
    teacher: str
    recover: Recover



SECTIONS = {"sre2l": Sre2l}


def check(p) -> None:
    teacher_arch(p, "sre2l.teacher", p.sre2l.teacher)
    end = p.sre2l.recover.ipc_end
    if end is not None and end > p.ipc:
        raise ValueError(f"sre2l.recover.ipc_end = {end}: above ipc = {p.ipc}")
