"""DELT's selection (docs/methods/delt.md#ranking-and-selection): which real images per class start the
recover, in the order that becomes their EarlyLate rank."""
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
