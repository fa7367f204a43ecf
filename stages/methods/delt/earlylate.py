"""DELT's EarlyLate rounds (docs/methods/delt.md#earlylate): when each rank joins, how long each class runs."""
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
