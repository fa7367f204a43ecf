"""Progress bars for every long loop of the stages: one place decides how they look and how often they print.

A bar always has a known total, so tqdm shows the rate and the ETA. On a terminal it refreshes every
second; when stderr is not a terminal (CI, `dvc repro 2> log`) only every LOG_INTERVAL seconds, so a log
gets a start line, an end line and a few in between instead of one per second. `TQDM_DISABLE=1` silences
every bar, ours and the libraries' (tqdm reads it itself); any other `TQDM_<ARG>` variable (e.g.
`TQDM_MININTERVAL=5`) overrides what is set here.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable

from tqdm import tqdm

TTY_INTERVAL = 1.0
LOG_INTERVAL = 30.0


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it",
             **kwargs) -> tqdm:
    """tqdm over `iterable` (or a manual bar of `total` steps); `total` defaults to len(iterable)."""
    if total is None:
        if not hasattr(iterable, "__len__"):
            raise TypeError(f"progress({desc!r}): pass total= for an iterable without a length (no ETA otherwise)")
        total = len(iterable)
    # tqdm applies TQDM_* variables only to arguments left at their defaults, so set ours only where none is given
    if "TQDM_MININTERVAL" not in os.environ:
        interval = TTY_INTERVAL if sys.stderr.isatty() else LOG_INTERVAL
        kwargs.setdefault("mininterval", interval)
        # tqdm's monitor thread forces a refresh after maxinterval (10 s) without one: keep it from undercutting
        kwargs.setdefault("maxinterval", max(interval, 10.0))
    return tqdm(iterable, desc=desc, total=total, unit=unit, **kwargs)
