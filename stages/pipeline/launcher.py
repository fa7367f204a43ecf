"""params.yaml `launcher`: spliced into heavy stages' shell commands by dvc.yaml, so only what ddpipe supports.

`python`, or `torchrun` followed by torchrun's own options (`--name` or `--name=value` / `--name value`, values
of plain characters). Anything else - another program, a shell operator, `--no-python`, a script path - is
refused by name: the launcher is a shell string that runs for every stage that uses it.
"""
from __future__ import annotations

import re

# torchrun's options that only decide where and how many processes run (torch.distributed.run's parser).
TORCHRUN_FLAGS = {"standalone"}
TORCHRUN_VALUES = {"nnodes", "nproc-per-node", "nproc_per_node", "node-rank", "node_rank", "rdzv-backend",
                   "rdzv_backend", "rdzv-endpoint", "rdzv_endpoint", "rdzv-id", "rdzv_id", "rdzv-conf",
                   "rdzv_conf", "master-addr", "master_addr", "master-port", "master_port", "max-restarts",
                   "max_restarts", "monitor-interval", "monitor_interval", "start-method", "start_method",
                   "local-addr", "local_addr", "log-dir", "log_dir", "redirects", "tee", "role"}
VALUE = re.compile(r"^[A-Za-z0-9_.:,=/+-]+$")


def check_launcher(value: str) -> str:
    """The launcher, or a ValueError naming the part refused."""
    words = value.split()
    if not words:
        raise ValueError("must be `python` or `torchrun` with torchrun's options")
    if words[0] == "python":
        if len(words) > 1:
            raise ValueError(f"{words[1]!r}: `python` takes no options here (the stage's arguments come from "
                             "dvc.yaml)")
        return value
    if words[0] != "torchrun":
        raise ValueError(f"{words[0]!r} is not a supported launcher: use `python` or `torchrun [options]`")
    i = 1
    while i < len(words):
        name, eq, given = words[i].removeprefix("--").partition("=")
        if not words[i].startswith("--") or name not in TORCHRUN_FLAGS | TORCHRUN_VALUES:
            options = ", ".join("--" + n for n in sorted(TORCHRUN_FLAGS | TORCHRUN_VALUES) if "_" not in n)
            raise ValueError(f"{words[i]!r} is not one of torchrun's options ddpipe allows ({options})")
        if name in TORCHRUN_VALUES and not eq:
            i += 1
            given = words[i] if i < len(words) else ""
        if name in TORCHRUN_FLAGS and eq:
            raise ValueError(f"{words[i]!r}: --{name} takes no value")
        if name in TORCHRUN_VALUES and not VALUE.match(given):
            raise ValueError(f"--{name} = {given!r}: not a plain value (letters, digits, _ . : , = / + -)")
        i += 1
    return value
