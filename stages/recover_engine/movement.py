"""The recover stages' check on their own output: every image they were meant to optimise moved.

A recover that silently returns its input (no gradient reaching the pixels, a learning rate of zero, an
image whose EarlyLate window is empty) still writes a complete, plausible-looking set. The stage measures,
per image, the mean absolute difference between the saved uint8 pixels and its initialisation quantised
the same way, and refuses to finish when any image meant to move stayed below MIN_MOVEMENT.

- SRe2L: every image, against its N(0, 1) noise start.
- DELT: every image whose EarlyLate window [join, stop) is not empty, against its real `select` image.
- INFER: what is optimised are the compensators, one per (teacher, base set); the real bases are saved
  unchanged on purpose. A compensator moved when the images it composes (base + compensator, clamped)
  differ from their bases by MIN_MOVEMENT on average over the base set's classes.
"""
from __future__ import annotations

import torch

from stages.pipeline.errors import NotOptimisedError

# uint8 levels, mean over pixels and channels. One level on one pixel in ten already clears it, so a real
# optimisation (thousands of Adam steps of ~lr each) is far above; an unchanged image is exactly 0.
MIN_MOVEMENT = 0.1


def movement(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per-image mean |after − before| in uint8 levels (N x H x W x 3 uint8 each)."""
    return (after.float() - before.float()).abs().flatten(1).mean(1)


def assert_moved(method: str, before: torch.Tensor, after: torch.Tensor, owners: list[str], ranks: list[int],
                 meant: torch.Tensor | None = None, what: str = "rank") -> torch.Tensor:
    """Raise NotOptimisedError naming every (owner, `what`) meant to move that did not; returns the movement.

    Item i is `before[i]` → `after[i]`, owned by `owners[i]` (e.g. "class 3") at `ranks[i]` (DELT's EarlyLate
    rank, the IPC index); `meant`: bool mask of the items optimised at all (default: every item)."""
    moved = movement(before, after)
    meant = torch.ones_like(moved, dtype=torch.bool) if meant is None else meant
    stuck = (meant & (moved < MIN_MOVEMENT)).tolist()
    if any(stuck):
        by_owner: dict[str, list[str]] = {}
        for owner, k, bad, m in zip(owners, ranks, stuck, moved.tolist()):
            if bad:
                by_owner.setdefault(owner, []).append(f"{k} ({m:.3f})")
        listed = "; ".join(f"{owner}: {what} {', '.join(ks)}" for owner, ks in by_owner.items())
        raise NotOptimisedError(
            f"recover {method}: {sum(stuck)} of {int(meant.sum())} images meant to be optimised did not move from "
            f"their initialisation (mean |Δ| below {MIN_MOVEMENT} uint8 levels) - {listed}; nothing was saved: no "
            f"gradient reached their pixels, or {method}.recover.lr is too small")
    return moved
