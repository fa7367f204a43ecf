"""SRe2L's part in the recover stage: every image starts as N(0, 1) noise and runs every iteration."""
from __future__ import annotations

from pathlib import Path

from stages.pipeline.errors import PipelineError
from stages.recover_engine.driver import recover_images


class Sre2lRecipe:
    unit = "IPC indices"  # what recover.ipc_start / ipc_end count
    labels = None  # the set ships no labels of its own

    def teacher_archs(self, section) -> list[str]:
        return [section.teacher]

    def make(self, p, init: str, teachers, classes: list[str], size: int, out: Path, world, finished,
             data: Path) -> dict:
        if init != "noise":
            raise PipelineError(f"recover sre2l: --init {init}: SRe2L starts from noise (--init noise)")
        return recover_images(p, "sre2l", teachers, classes, size, out, world, finished)

    def summary(self, record: dict, section) -> str:
        return ""


RECIPE = Sre2lRecipe()
