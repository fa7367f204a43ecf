"""DELT's part in the recover stage: images start as the real images `select` picked, and EarlyLate staggers
them: rank k joins in round join(k) of iterations / round_iterations, so late joiners get fewer updates
(docs/methods/delt.md#earlylate)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages.data.folder import normalise
from stages.data.prepared import open_images
from stages.methods.delt.earlylate import class_rounds, join_rounds
from stages.pipeline.errors import DataError
from stages.pipeline.params import Params
from stages.pipeline.seeds import derive_seed
from stages.recover_engine.driver import expect_init, recover_images


def delt_init(init_dir: Path, classes: list[str], ipc: int, size: int, mean, std):
    """init(labels, indices, gen) → the selected real image of rank k (file prefix k) per class."""
    init = open_images(init_dir, classes, size, desc="load init")
    by_class = [[i for i, y in enumerate(init.labels.tolist()) if y == c] for c in range(len(classes))]
    for c, members in enumerate(by_class):
        if len(members) < ipc:
            raise DataError(f"{init_dir / classes[c]}: {len(members)} init images, ipc = {ipc}; rerun select")
    table = torch.stack([torch.stack([init.images[i] for i in members[:ipc]]) for members in by_class])
    return lambda labels, indices, gen: normalise(table[labels, indices].float() / 255, mean, std)


def delt_span(p: Params, num_classes: int):
    """span(labels, indices) → EarlyLate (join, stop) iterations of each image.

    A class runs its own R_c rounds (R_c = R unless min_iterations draws fewer) and its IPC is spread over
    those R_c rounds, as the reference does: every rank joins before its class stops."""
    d, total = p.delt, p.delt.recover.iterations
    rng = np.random.default_rng(derive_seed(p.seed, "delt", "min_iterations"))
    rounds = class_rounds(num_classes, total, d.round_iterations, d.min_iterations or total, rng)
    joins = torch.tensor([join_rounds(p.ipc, r) for r in rounds]) * d.round_iterations  # [class, rank]
    stops = torch.tensor(rounds) * d.round_iterations
    return lambda labels, indices: (joins[labels, indices], stops[labels])


class DeltRecipe:
    unit = "IPC indices"
    labels = None

    def teacher_archs(self, section) -> list[str]:
        return [section.teacher]

    def make(self, p, init: str, teachers, classes: list[str], size: int, out: Path, world, finished,
             data: Path) -> dict:
        start = delt_init(expect_init("delt", init, "the select stage's init set"), classes, p.ipc, size,
                          teachers.mean, teachers.std)
        return recover_images(p, "delt", teachers, classes, size, out, world, finished, start,
                              delt_span(p, len(classes)))

    def summary(self, record: dict, section) -> str:
        return (f"; vs {record['sre2l_image_iterations']:,} for SRe2L at the same {section.recover.iterations} "
                f"iterations: {100 * record['saving_vs_sre2l']:.1f} % fewer")


RECIPE = DeltRecipe()
