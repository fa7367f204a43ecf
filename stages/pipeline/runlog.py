"""Wall-clock measurements of stage runs, kept out of the stages' outputs.

An output is bytes that DVC hashes: the same params and inputs must give the same bytes (so the cache is
shared and two runs from scratch give the same dvc.lock), so no duration or timestamp may be in one. Each
stage run appends one JSON line here instead: what ran, for which output, how long, on what, when.

The log is `artifacts/runs.jsonl` (untracked), or the file `DDPIPE_RUN_LOG` names - set it to an absolute
path for `dvc exp run --queue`, whose experiments run in temporary copies of the project.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

DEFAULT = "artifacts/runs.jsonl"


def path() -> Path:
    return Path(os.environ.get("DDPIPE_RUN_LOG") or DEFAULT)


def record(stage: str, out: str | Path, seconds: float, **measures) -> None:
    """Append one run: `seconds` of wall time for `out`, plus any counts or rates the stage measured."""
    import torch

    entry = {
        "stage": stage, "out": str(out), "seconds": round(seconds, 3), **measures,
        "finished": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        "host": platform.node(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),
        "python": platform.python_version(), "dvc": _version("dvc"),  # not in the cards: they change no byte
    }
    log = path()
    log.parent.mkdir(parents=True, exist_ok=True)
    # One short write in append mode: concurrent stages (dvc repro --jobs, the queue) never interleave a line.
    with open(log, "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def read(log: str | Path | None = None) -> list[dict]:
    """Every run logged so far (a torn last line from a killed writer is skipped)."""
    log = Path(log) if log else path()
    if not log.exists():
        return []
    runs = []
    for line in log.read_text().splitlines():
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return runs
