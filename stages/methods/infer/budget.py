"""INFER's budget (docs/methods/infer.md#budget): base images per class and compensators per base set."""
from __future__ import annotations


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
