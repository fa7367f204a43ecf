"""Run a stage's main: one clear line for a known error, and a fixed CPU thread count for reproducibility."""
from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import sys
from typing import Callable

from stages.pipeline.errors import ParamsError, PipelineError, ResourceError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
PROG: str | None = None  # how the user called the command, when not `python -m <module>` (`ddpipe verify`)


class ArgumentParser(argparse.ArgumentParser):
    """A stage's command line (from dvc.yaml): a bad argument (an unknown method, a missing option) is a
    ParamsError line like a bad params.yaml value, not argparse's usage text and exit."""

    def __init__(self, **kwargs):
        spec = getattr(sys.modules["__main__"], "__spec__", None)  # `python -m stages.<stage>`
        if "prog" not in kwargs and (PROG or spec is not None):
            kwargs["prog"] = PROG or f"python -m {spec.name}"
        super().__init__(**kwargs)

    def error(self, message: str):
        raise ParamsError(f"{self.prog}: {message} (--help lists the arguments)")


def run(main: Callable[[], None], threads: bool = True) -> None:
    """`threads`: fix torch's CPU thread count first (False for a command that never imports torch)."""
    if threads:
        import torch

        # Under torchrun the node's cores are shared by its LOCAL_WORLD_SIZE processes.
        cores = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        torch.set_num_threads(int(os.environ.get("DDPIPE_THREADS", cores)))
    # SIGTERM (a scheduler's preemption, `kill`, Ctrl-C of dvc) unwinds like an exception: temp folders are
    # removed, resume state written so far stays. SIGKILL cannot be caught; atomic_dir sweeps what it leaves.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        main()
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        where = e.filename2 or e.filename or output_arg() or "the output"  # a copy's filename2 is its target
        report(ResourceError(f"{where}: no space left on device ({os.strerror(e.errno)}); nothing was kept - "
                             "free space and rerun, finished work resumes"))
    except PipelineError as e:
        report(e)


def output_arg() -> str | None:
    """The stage's --out value (a write error from the kernel carries no file name)."""
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg.startswith("--out="):
            return arg.split("=", 1)[1]
        if arg == "--out" and i + 1 < len(args):
            return args[i + 1]
    return None


# Control characters (a newline in a path or a value, an ANSI escape, NUL), Unicode line breaks, and the lone
# surrogates a file name that is not UTF-8 decodes to (stderr could not even encode those).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """`text` with every control character escaped (\\n, \\x1b, \\u2028): an error line stays one line, and
    a name holding a newline or a terminal escape prints as what it is."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), m.group().encode("unicode_escape").decode("ascii")), text)


def report(e: PipelineError) -> None:
    print(one_line(f"error: {type(e).__name__}: {e}"), file=sys.stderr)
    sys.exit(2)


def _terminated(signum, frame) -> None:
    print(f"stopped by {signal.Signals(signum).name}: nothing half-written was kept; rerun to resume", file=sys.stderr)
    raise SystemExit(128 + signum)
