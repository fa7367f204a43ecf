"""Run a stage's main: one clear line for a known error, and a fixed CPU thread count for reproducibility."""
from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Callable

from stages.pipeline.errors import PipelineError, ResourceError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def run(main: Callable[[], None]) -> None:
    import torch

    # Under torchrun the node's cores are shared by its LOCAL_WORLD_SIZE processes.
    cores = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    torch.set_num_threads(int(os.environ.get("DDPIPE_THREADS", cores)))
    # SIGTERM (a scheduler's preemption, `kill`) exits through `finally` blocks: the output's temp folder goes,
    # the resume state stays, and the rerun continues from it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        main()
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        where = e.filename or "the output"
        report(ResourceError(f"{where}: no space left on device ({os.strerror(e.errno)}); nothing was kept - "
                             "free space and rerun, finished work resumes"))
    except PipelineError as e:
        report(e)


def report(e: PipelineError) -> None:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)
