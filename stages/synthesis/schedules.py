"""DELT's schedules (research/sre2l_family.md §3.1, §3.2): init selection order and EarlyLate rounds."""
from __future__ import annotations

import math

import numpy as np


def medium_order(n: int) -> list[int]:
    """Positions in ascending-score order, from the median outward: m, m+1, m−1, m+2, m−2, … (m = ceil(n/2))."""
    m = math.ceil(n / 2)
    order, step = [m] if m < n else [], 1
    while len(order) < n:
        for candidate in (m + step, m - step):
            if 0 <= candidate < n and len(order) < n:
                order.append(candidate)
        step += 1
    return order


def select(scores: np.ndarray, k: int, criterion: str) -> list[int]:
    """Indices of the k images a criterion picks, in selection order (that order is the EarlyLate rank)."""
    ascending = list(np.argsort(scores, kind="stable"))
    if criterion == "top":
        return ascending[::-1][:k]
    if criterion == "min":
        return ascending[:k]
    if criterion == "medium":
        return [ascending[i] for i in medium_order(len(scores))[:k]]
    raise ValueError(f"selection criterion {criterion!r}: expected top, min or medium")


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
