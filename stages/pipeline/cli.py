"""Run a stage's main: one clear line for a known error, and a fixed CPU thread count for reproducibility."""
from __future__ import annotations

import os
import sys
from typing import Callable

from stages.pipeline.errors import PipelineError


def run(main: Callable[[], None]) -> None:
    import torch

    # Under torchrun the node's cores are shared by its LOCAL_WORLD_SIZE processes.
    cores = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    torch.set_num_threads(int(os.environ.get("DDPIPE_THREADS", cores)))
    try:
        main()
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
