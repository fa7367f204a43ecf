"""DELT's EarlyLate rounds and INFER's budget (docs/methods/delt.md#earlylate, docs/methods/infer.md#budget)."""
from __future__ import annotations

import numpy as np


def round_sizes(ipc: int, rounds: int) -> list[int]:
    """IPC split over rounds as evenly as possible, earlier rounds taking the remainder."""
    base, extra = divmod(ipc, rounds)
    return [base + 1] * extra + [base] * (rounds - extra)


def join_rounds(ipc: int, rounds: int) -> list[int]:
    """For each within-class rank, the round in which that image starts being optimised."""
    return [r for r, size in enumerate(round_sizes(ipc, rounds)) for _ in range(size)]


def iterations_per_rank(ipc: int, iterations: int, round_iterations: int) -> list[int]:
    """Updates each rank receives under EarlyLate: (R − join round) × round_iterations."""
    rounds = iterations // round_iterations
    return [(rounds - j) * round_iterations for j in join_rounds(ipc, rounds)]


def class_rounds(num_classes: int, iterations: int, round_iterations: int, min_iterations: int,
                 rng: np.random.Generator) -> list[int]:
    """Rounds each class runs. With min_iterations == iterations (DELT's scripts) every class runs all
    R rounds; below it each class draws R_c uniformly from [min_iterations/round, R] and its images
    stop after round R_c (docs/methods/delt.md#earlylate)."""
    rounds, fewest = iterations // round_iterations, min_iterations // round_iterations
    return [int(r) for r in rng.integers(fewest, rounds + 1, size=num_classes)] if fewest < rounds \
        else [rounds] * num_classes


def infer_budget(ipc: int, num_classes: int, num_teachers: int, ipc_init: int | None = None) -> tuple[int, int]:
    """INFER's (base images per class, compensators per base set) for a budget of ipc·C stored images.

    The paper sets ipc_init = int(ipc / (M/C + 1)) (computed exactly, as ipc·C // (C + M)) and one
    compensator per teacher per base set, so ipc_init·(C + M) ≤ ipc·C; an explicit `ipc_init` must
    satisfy that too. Where the formula gives no base at all (ipc·C < C + M, e.g. IPC 1) we keep one
    base per class and only the compensators that still fit (none at IPC 1).
    """
    if ipc_init is None:
        ipc_init = ipc * num_classes // (num_classes + num_teachers)
        if ipc_init == 0:
            return 1, min(num_teachers, (ipc - 1) * num_classes)
    if ipc_init * (num_classes + num_teachers) > ipc * num_classes:
        raise ValueError(f"ipc_init = {ipc_init}: {ipc_init}·({num_classes} classes + {num_teachers} teachers) = "
                         f"{ipc_init * (num_classes + num_teachers)} stored images, above the budget "
                         f"ipc·C = {ipc * num_classes}")
    return ipc_init, num_teachers
